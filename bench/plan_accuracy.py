"""Does the planner predict what its plans deliver? A quick check on this machine.

    python bench/plan_accuracy.py [--boards 1 2] [--frames 80] [--rounds 3]

Profiles the shared MobileNetV2 here (`aiotedge profile`'s code, one thread, MQTT costs
through a private mosquitto), with the shared photos re-encoded as a VGA camera's JPEGs. For
each board count it plans (`aiotedge-convert plan`'s code) and runs the chosen plan, the pure
pipeline and pure replicas on this machine (`aiotedge run --plan`'s LocalPipeline, one
thread per stage process), measuring frames/s with two frames in flight per board and a lone
frame's latency, and prints predicted / measured for each. This machine is not a cluster:
every "board" shares its 2 cores with the others, the camera and the broker, which the
prediction does not know; `make bench-cluster` measures plans on emulated boards with their
own CPU quotas. Medians over the rounds; writes "Planner: predicted vs measured frames/s
(one machine)" in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

from aiotedge_converter.cluster import Cluster, ClusterPlan, Links, cluster_from_profiles
from aiotedge_converter.deploy import write_plan_files
from aiotedge_converter.replicate import plan_cluster
from aiotedge_converter.split import SplitOptions

from aiotedge.config.sections import BrokerConfig, PipelineConfig, StageConfig
from aiotedge.contracts.manifest import Manifest
from aiotedge.media.image import decode_image, list_images
from aiotedge.nodes.daemons.local import LocalPipeline, plan_replicas
from aiotedge.nodes.daemons.profiling import DEFAULT_PHOTO_SIZE, measure_profile
from aiotedge.nodes.daemons.transport_cost import measure_mqtt
from aiotedge.tflite.graph import load_graph
from bench.benchdoc import table, write_section
from support.paths import SHARED_IMAGES, SHARED_MODEL


def camera_photos(folder: Path) -> list[tuple[str, bytes]]:
    """The photos as a VGA camera would send them: 640x480 JPEGs."""
    photos = []
    for path in list_images(folder):
        out = io.BytesIO()
        decode_image(path.read_bytes()).convert("RGB").resize(DEFAULT_PHOTO_SIZE).save(
            out, format="JPEG", quality=90)
        photos.append((path.stem + ".jpg", out.getvalue()))
    return photos


def measure(manifest: Manifest, replicas: dict[int, int], photos,
            frames: int) -> tuple[float, float]:
    """(frames/s with two frames in flight per board, median latency of a lone frame, ms).

    A broker of its own each time: one that saw another plan keeps the sessions of its
    stages, and a replica's session still takes its share of the frames.
    """
    boards = sum(replicas.values())
    with LocalPipeline(manifest, replicas=replicas,
                       stage=StageConfig(threads=1, queue_size=max(4, boards)),
                       pipeline=PipelineConfig(name="bench")) as run:
        window = 2 * boards  # one frame computing, one travelling, per board
        list(run.predict(photos, frames=2 * window, in_flight=window))  # warm up
        arrivals = [time.perf_counter()
                    for _ in run.predict(photos, frames=frames, in_flight=window)]
        lone = [p.latency_ms for _, p in run.predict(photos, frames=15, in_flight=1)]
    return (frames - 1) / (arrivals[-1] - arrivals[0]), statistics.median(lone)


def strategies_of(cluster: Cluster) -> list[tuple[str, ClusterPlan, float, float]]:
    """(name, plan, predicted frames/s, predicted latency), identical plans once."""
    found = plan_cluster(cluster)
    rows: list[tuple[str, ClusterPlan, float, float]] = []
    for name, (plan, forecast) in (("chosen", found.chosen), ("pure pipeline", found.pipeline),
                                   ("pure replicas", found.replicas)):
        same = next((row for row in rows if row[1] == plan), None)
        if same is None:
            rows.append((name, plan, forecast.frames_per_s, forecast.latency_ms))
        else:
            rows[rows.index(same)] = (f"{same[0]} = {name}", *same[1:])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    photos = camera_photos(SHARED_IMAGES)
    graph = load_graph(SHARED_MODEL)
    profile = measure_profile(SHARED_MODEL, threads=1, photo=photos[0][1],
                              photo_name=photos[0][0], transport=measure_mqtt)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for boards in args.boards:
            cluster = cluster_from_profiles(graph, [("this machine", profile)], boards, Links())
            for number, (name, plan, fps, latency) in enumerate(strategies_of(cluster)):
                out = Path(scratch) / f"{boards}-{number}"
                write_plan_files(graph, plan, cluster, out,
                                 options=SplitOptions(copy_source=False, num_threads=1),
                                 pipeline="bench", broker=BrokerConfig())
                manifest, replicas = Manifest.load(out), plan_replicas(out)
                runs = [measure(manifest, replicas, photos, args.frames)
                        for _ in range(args.rounds)]
                measured_fps = statistics.median(r[0] for r in runs)
                measured_latency = statistics.median(r[1] for r in runs)
                spread = f"{min(r[0] for r in runs):.1f}-{max(r[0] for r in runs):.1f}"
                shape = "+".join(str(s.boards) for s in plan.stages)
                rows.append((boards, name, shape, f"{fps:.1f}", f"{measured_fps:.1f} ({spread})",
                             f"{fps / measured_fps:.2f}", f"{latency:.1f}",
                             f"{measured_latency:.1f}", f"{latency / measured_latency:.2f}"))
                print(rows[-1], flush=True)
    text = table(("boards", "plan", "boards per stage", "predicted frames/s",
                  "measured frames/s (range)", "predicted / measured", "predicted latency ms",
                  "measured latency ms", "predicted / measured"), rows)
    intro = (
        f"{SHARED_MODEL.name} profiled here with one thread (whole model "
        f"{profile.whole_ms:.1f} ms; stage 0 taking a 640x480 JPEG "
        f"{profile.input_cost('photo').decode_ms:.1f} ms), the shared photos sent as 640x480 "
        f"JPEGs; {args.frames} frames with two in flight per board, then 15 lone frames, "
        f"median of {args.rounds} rounds. The \"boards\" are processes sharing this machine's "
        "2 cores with the camera and the broker (and other work), which the prediction does "
        "not count: from 2 boards on, the measured figure is this machine's limit, not the "
        "plan's. On boards of their own, see the emulated cluster benchmark."
    )
    print(text)
    write_section("Planner: predicted vs measured frames/s (one machine)", intro + "\n\n" + text)


if __name__ == "__main__":
    main()
