"""Pipeline vs single process, and what one hop costs compared with a raw broker round trip.

    python bench/pipeline.py [--stages 5] [--frames 200] [--model M.tflite --images DIR]

Splits the model, then measures on this machine:
1. single process: preprocess + invoke of the whole model, frame after frame;
2. the pipeline: a private mosquitto, one `aiotedge stage` process per stage, frames kept in
   flight (one per stage), throughput and end-to-end latency from the predictions;
3. the broker alone: a QoS 1 message of each activation's size, published and received back
   by one client (round trip), against the pipeline's measured per-hop transfer time.
Prints the figures and writes them to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from aiotedge_converter.cli import main as convert

from aiotedge.config.sections import PipelineConfig, StageConfig
from aiotedge.contracts.manifest import Manifest
from aiotedge.media.image import decode_image, list_images, preprocess, read_photo
from aiotedge.nodes.daemons.local import LocalPipeline
from aiotedge.nodes.mqtt.broker import LocalBroker
from aiotedge.nodes.mqtt.session import MqttSession
from aiotedge.tflite.runtime import Segment
from bench.benchdoc import table, write_section
from support.paths import SHARED_IMAGES, SHARED_MODEL


def single_process(manifest: Manifest, photos: list[bytes], frames: int) -> dict[str, float]:
    whole = Segment(manifest.directory / manifest.source.file, num_threads=1)
    latencies = []
    started = time.perf_counter()
    for i in range(frames):
        t0 = time.perf_counter()
        tensor = preprocess(decode_image(photos[i % len(photos)]), manifest.preprocessing,
                            whole.input_spec)
        whole.run(tensor)
        latencies.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - started
    return {"fps": frames / elapsed, "latency_ms": statistics.median(latencies)}


def pipeline(manifest: Manifest, photos: list[tuple[str, bytes]], frames: int, broker):
    with LocalPipeline(manifest, broker=broker.address, stage=StageConfig(threads=1),
                       pipeline=PipelineConfig(name="bench")) as run:
        list(run.predict(photos, frames=min(10, frames)))  # warm up every stage
        started = time.perf_counter()
        results = [p for _, p in run.predict(photos, frames=frames)]
        elapsed = time.perf_counter() - started
        alone = [p.latency_ms for _, p in run.predict(photos, frames=frames // 2, in_flight=1)]
    hops = {}
    for stage in range(1, len(manifest.stages)):
        hops[stage] = statistics.median(p.stages[stage].transfer_ms for p in results)
    return {
        "fps": frames / elapsed,
        "latency_ms": statistics.median(p.latency_ms for p in results),
        "latency_alone_ms": statistics.median(alone),
        "hop_ms": hops,
    }


def broker_round_trip(broker, size: int, repeats: int = 200) -> float:
    """Median ms for a QoS 1 message of `size` bytes to come back to its publisher."""
    arrived = threading.Event()
    session = MqttSession(broker.address, f"rtt-{size}")
    session.subscribe("bench/rtt", lambda _m: arrived.set(), qos=1)
    session.start()
    session.wait_connected(10)
    payload = np.random.default_rng(0).bytes(size)
    samples = []
    for _ in range(repeats):
        arrived.clear()
        t0 = time.perf_counter()
        session.publish("bench/rtt", payload, qos=1)
        arrived.wait(10)
        samples.append((time.perf_counter() - t0) * 1000)
    session.stop()
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path,
                        default=SHARED_MODEL)
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="bench-split-"))
    if convert(["split", str(args.model), "--stages", str(args.stages),
                    "--out", str(out)]) != 0:
        raise SystemExit("aiotedge-convert split failed (its message is above)")
    manifest = Manifest.load(out)
    photos = [(p.name, read_photo(p)) for p in list_images(args.images)]

    single = single_process(manifest, [data for _, data in photos], args.frames)
    with LocalBroker() as broker:
        piped = pipeline(manifest, photos, args.frames, broker)
        rtt = {k: broker_round_trip(broker, manifest.stages[k - 1].output.nbytes)
               for k in piped["hop_ms"]}

    rows = [
        ("single process (1 thread)", f"{single['fps']:.1f}", f"{single['latency_ms']:.1f}"),
        (f"pipeline, {args.stages} stage processes (1 thread each), {args.stages} frames "
         "in flight", f"{piped['fps']:.1f}", f"{piped['latency_ms']:.1f}"),
        ("pipeline, one frame in flight", "", f"{piped['latency_alone_ms']:.1f}"),
    ]
    hop_rows = [
        (f"{k - 1} → {k}", manifest.stages[k - 1].output.nbytes, f"{piped['hop_ms'][k]:.2f}",
         f"{rtt[k]:.2f}", f"{piped['hop_ms'][k] / (rtt[k] / 2):.1f}x")
        for k in piped["hop_ms"]
    ]
    body = "\n\n".join([
        f"Model `{args.model.name}`, {args.frames} frames, {len(photos)} photos cycling; "
        f"everything on this one machine over loopback.",
        table(("run", "frames/s", "median latency ms"), rows),
        f"Throughput ratio pipeline / single process: **{piped['fps'] / single['fps']:.2f}x** "
        f"(latency of a lone frame {piped['latency_alone_ms'] / single['latency_ms']:.2f}x "
        f"the single process's). " + (
            f"With {args.stages} stage processes on {os.cpu_count()} cores the stages take "
            "turns on the CPU (stage 0 also decodes the photos), so a full pipeline queues "
            "frames in front of each stage; on one board per stage they run side by side."
            if args.stages > (os.cpu_count() or 1) else
            "Each stage has a core of its own here, as it would on its own board."
        ),
        table(("hop", "activation bytes", "pipeline transfer ms (median)",
               "raw broker QoS 1 round trip ms", "hop / one-way broker"), hop_rows),
        "A hop's transfer time runs from the previous stage's output being ready to this "
        "stage taking the message off the broker: encode, publish, broker, decode-free "
        "delivery and queueing behind the frame in progress. The raw round trip is one "
        "client publishing a message of the same size to itself.",
    ])
    print(body)
    write_section(f"Pipeline vs single process, and hop overhead: {args.stages} stages", body)


if __name__ == "__main__":
    main()
