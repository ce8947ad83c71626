"""A camera node's cost, and what preprocessing at the camera saves stage 0.

    python bench/camera.py [--seconds 10] [--rounds 3] [--stages 5] [--outage 30]

Measures on this machine, with a private mosquitto and a stand-in pipeline that answers every
frame at once (so the camera, not the pipeline, sets the pace):
1. `aiotedge camera` at 30 fps, 640x480: CPU (% of one core) and memory, reading an H.264 video
   file at its own rate, an HTTP MJPEG stream (ffmpeg's server), and the video again sending
   frames at the model's input size; against the same camera sending one still JPEG 30 times a
   second (no decoding: the baseline of the ratios). Median over rounds, with the spread.
2. Stage 0's work per frame with the shared MobileNetV2 split into `--stages`: a whole photo
   (wire decode, image decode, resize, normalise, segment) against a camera's 224x224 JPEG and
   a camera's input tensor; median over rounds of all the shared photos, one thread.
3. What a JPEG at the model's input size costs in accuracy: top-1 agreement with the whole
   model on the shared photos, at several qualities, and the bytes a frame takes.
4. The broker stopped for `--outage` seconds under a 30 fps camera: its RSS before, at most
   during, and the frames it dropped (0 skips it).
Writes the section "Camera node" of docs/benchmarks.md. Needs ffmpeg and the `video` extra.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from aiotedge_converter.cli import main as convert
from PIL import Image

from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import Topics
from aiotedge.contracts.wire import Frame, decode_photo, encode_frame
from aiotedge.media.image import (
    decode_image,
    list_images,
    model_size,
    preprocess,
    read_photo,
)
from aiotedge.media.prepare import (
    SUBSAMPLING_420,
    SUBSAMPLING_444,
    ModelInput,
    encode_jpeg,
)
from aiotedge.nodes.daemons.status import collect_status
from aiotedge.nodes.mqtt.broker import LocalBroker, free_port
from aiotedge.tflite.runtime import Segment
from bench.benchdoc import table, write_section
from support.media import MjpegCamera, moving_pattern
from support.paths import SHARED_IMAGES, SHARED_LABELS, SHARED_MODEL
from support.stages import AnsweringStage

HEADING = "Camera node"
CLOCK_TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux


# -- 1. the camera process ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def memory_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for {pid}")


def camera_round(broker, flags: list[str], seconds: float, pipeline: str) -> dict[str, float]:
    """One camera process: CPU %, RSS and published fps over `seconds` once it is running."""
    answering = AnsweringStage(broker, pipeline)
    camera = subprocess.Popen(
        [sys.executable, "-m", "aiotedge", "camera", *flags, "--broker", str(broker.address),
         "--pipeline", pipeline, "--stats-interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        before = len(answering.wait_frames(30))  # warmed up
        cpu, started = cpu_seconds(camera.pid), time.monotonic()
        time.sleep(seconds)  # the measuring window
        cpu, wall = cpu_seconds(camera.pid) - cpu, time.monotonic() - started
        sent = len(answering.frames) - before
        rss, peak = memory_mb(camera.pid, "VmRSS"), memory_mb(camera.pid, "VmHWM")
    finally:
        camera.terminate()
        camera.wait(30)
        answering.stop()
    return {"cpu": 100 * cpu / wall, "rss": rss, "peak": peak, "fps": sent / wall}


def median_spread(values: list[float], digits: int = 1) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def camera_costs(broker, workdir: Path, manifest: Manifest, photo: bytes, *, seconds: float,
                 rounds: int) -> str:
    video = moving_pattern(workdir / "camera.mp4", seconds=4, size="640x480", fps=30)
    still = workdir / "still.jpg"
    decode_image(photo).convert("RGB").resize((640, 480)).save(still, quality=90)
    mjpeg = MjpegCamera(video, free_port())
    cases = [
        ("one still JPEG, 30 times a second (baseline)", ["--source", str(still), "--loop",
                                                          "--fps", "30"], False),
        ("H.264 video file, 640x480 30 fps, at its own rate",
         ["--source", str(video), "--loop", "--realtime"], False),
        ("HTTP MJPEG stream, 640x480 30 fps", ["--source", mjpeg.url], True),
        ("the video, sent at the model's input size (preprocess = jpeg)",
         ["--source", str(video), "--loop", "--realtime", "--preprocess", "jpeg",
          "--manifest", str(manifest.directory)], False),
    ]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in cases}
    for round_number in range(rounds):
        for name, flags, needs_server in cases:
            if needs_server:
                mjpeg.start()
            try:
                results[name].append(camera_round(broker, flags, seconds,
                                                  f"bench-camera-{round_number}"))
            finally:
                if needs_server:
                    mjpeg.kill()
    baseline = statistics.median(r["cpu"] for r in results[cases[0][0]])
    rows = []
    for name, runs in results.items():
        cpu = [r["cpu"] for r in runs]
        rows.append((name, median_spread(cpu), f"{statistics.median(cpu) / baseline:.1f}",
                     median_spread([r["fps"] for r in runs]),
                     median_spread([r["rss"] for r in runs], 0),
                     f"{max(r['peak'] for r in runs):.0f}"))
    return table(("source", "CPU % of one core", "x baseline", "frames sent /s", "RSS MB",
                  "peak RSS MB"), rows)


# -- 2. stage 0 per frame --------------------------------------------------------------------


def stage0_costs(manifest: Manifest, photos: list[bytes], rounds: int) -> tuple[str, float]:
    spec = manifest.stages[0].input
    prep = manifest.preprocessing
    segment = Segment(manifest.segment_path(0), num_threads=1)
    model = ModelInput(prep, spec)

    def payload(photo: bytes, kind: str) -> bytes:
        frame = Frame("bench-0", "bench", 0, time.time())
        picture = decode_image(photo)
        if kind == "photo":
            frame.image = photo
        elif kind == "jpeg":
            frame.image = encode_jpeg(model_size(picture, prep), 90, SUBSAMPLING_444)
        else:
            frame.tensor, frame.scale, frame.zero_point = (
                preprocess(picture, prep, spec), spec.scale, spec.zero_point)
        return encode_frame(frame)

    def run_stage0(message: bytes) -> None:  # what StageNode does with a frame for stage 0
        frame = decode_photo(message, model.spec)
        tensor = frame.tensor if frame.tensor is not None else preprocess(
            decode_image(frame.image), prep, spec)
        segment.run(tensor)

    kinds = {"photo": "the photo as the camera took it",
             "jpeg": "a 224x224 JPEG (q90, 4:4:4) from the camera",
             "tensor": "the input tensor from the camera"}
    messages = {kind: [payload(photo, kind) for photo in photos] for kind in kinds}
    tensor = preprocess(decode_image(photos[0]), prep, spec)
    timings: dict[str, list[float]] = {kind: [] for kind in [*kinds, "segment"]}
    for _ in range(rounds):
        for kind in kinds:
            started = time.perf_counter()
            for message in messages[kind]:
                run_stage0(message)
            timings[kind].append((time.perf_counter() - started) * 1000 / len(photos))
        started = time.perf_counter()
        for _ in photos:
            segment.run(tensor)
        timings["segment"].append((time.perf_counter() - started) * 1000 / len(photos))
    segment_ms = statistics.median(timings["segment"])
    photo_ms = statistics.median(timings["photo"])
    rows = [(text, median_spread(timings[kind], 2),
             f"{statistics.median(timings[kind]) / photo_ms:.2f}",
             f"{statistics.median(len(m) for m in messages[kind]) / 1000:.0f}")
            for kind, text in kinds.items()]
    rows.append(("(the segment alone)", median_spread(timings["segment"], 2),
                 f"{segment_ms / photo_ms:.2f}", ""))
    return table(("stage 0 receives", "ms per frame", "x photo", "message KB (median)"),
                 rows), photo_ms / statistics.median(timings["tensor"])


# -- 3. JPEG at the model's input size -----------------------------------------------------------


def jpeg_agreement(manifest: Manifest, photos: list[bytes]) -> str:
    whole = Segment(manifest.directory / manifest.source.file, num_threads=1)
    prep, spec = manifest.preprocessing, whole.input_spec

    def scores(picture: Image.Image) -> np.ndarray:
        output = whole.run(preprocess(picture, prep, spec))
        return whole.output_spec.dequantize(output).reshape(-1)

    reference = [scores(decode_image(photo)) for photo in photos]
    rows = []
    for quality, subsampling, chroma in ((75, SUBSAMPLING_420, "4:2:0"),
                                         (90, SUBSAMPLING_420, "4:2:0"),
                                         (90, SUBSAMPLING_444, "4:4:4 (preprocess = jpeg)"),
                                         (95, SUBSAMPLING_444, "4:4:4")):
        agree, drift, sizes = 0, [], []
        for photo, wanted in zip(photos, reference, strict=True):
            jpeg = encode_jpeg(model_size(decode_image(photo), prep), quality, subsampling)
            sizes.append(len(jpeg))
            got = scores(decode_image(jpeg))
            best = int(np.argmax(wanted))
            agree += int(np.argmax(got)) == best
            drift.append(abs(float(got[best] - wanted[best])))
        rows.append((f"JPEG q{quality}, {chroma}", f"{agree} of {len(photos)}",
                     f"{statistics.mean(drift):.3f} ({max(drift):.3f})",
                     f"{statistics.mean(sizes) / 1000:.1f}"))
    rows.append(("input tensor (preprocess = tensor)", f"{len(photos)} of {len(photos)}",
                 "0.000 (0.000)", f"{spec.nbytes / 1000:.1f}"))
    return table(("224x224 sent as", "top-1 as the whole model's",
                  "its score's change, mean (max)", "KB a frame"), rows)


# -- 4. the broker away --------------------------------------------------------------------


def outage(broker, workdir: Path, seconds: int) -> str:
    video = moving_pattern(workdir / "outage.mp4", seconds=2, size="640x480", fps=30)
    answering = AnsweringStage(broker, "bench-outage")
    camera = subprocess.Popen(
        [sys.executable, "-m", "aiotedge", "camera", "--source", str(video), "--loop",
         "--realtime", "--name", "outage", "--broker", str(broker.address), "--pipeline",
         "bench-outage", "--stats-interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        before = len(answering.wait_frames(60))
        start = memory_mb(camera.pid, "VmRSS")
        broker.stop()
        samples = []
        for _ in range(seconds):
            time.sleep(1)
            samples.append(memory_mb(camera.pid, "VmRSS"))
        broker.start()
        back = time.monotonic()
        answering.wait_frames(before + 1, timeout=120)
        flowing_after = time.monotonic() - back
        answering.wait_frames(before + 30, timeout=120)
        stats = collect_status(broker.address, Topics("bench-outage"))["outage"]["stats"]
    finally:
        camera.terminate()
        camera.wait(30)
        answering.stop()
    return (f"Broker stopped for {seconds} s under the 30 fps video camera: RSS {start:.0f} MB "
            f"before, at most {max(samples):.0f} MB during (sampled each second), "
            f"{stats['dropped']} frames dropped and counted of {stats['captured']} captured; "
            f"frames flowed again {flowing_after:.0f} s after the broker was back (MQTT "
            "reconnection backoff).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="measuring window per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--outage", type=int, default=30, help="seconds; 0: skip")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-camera-"))
    split = workdir / "split"
    if convert(["split", str(SHARED_MODEL), "--stages", str(args.stages), "--out",
                    str(split), "--labels", str(SHARED_LABELS)]) != 0:
        raise SystemExit("aiotedge-convert split failed (its message is above)")
    manifest = Manifest.load(split)
    photos = [read_photo(path) for path in list_images(SHARED_IMAGES)]
    parts = []
    with LocalBroker() as broker:
        parts.append(f"**Camera process**, {args.rounds} rounds of {args.seconds:.0f} s each "
                     "(median, min-max); the pipeline answers every frame at once:\n\n"
                     + camera_costs(broker, workdir, manifest, photos[0],
                                    seconds=args.seconds, rounds=args.rounds))
        stage0, saved = stage0_costs(manifest, photos, max(args.rounds, 5))
        parts.append(f"**Stage 0 per frame**, MobileNetV2 int8 split into {args.stages}, the "
                     f"{len(photos)} shared photos, 1 thread, median over "
                     f"{max(args.rounds, 5)} rounds (min-max); the input tensor from the camera "
                     f"makes stage 0 {saved:.1f}x faster:\n\n{stage0}")
        parts.append("**A JPEG at the model's input size** against the whole model on the "
                     f"{len(photos)} shared photos (Pillow):\n\n"
                     + jpeg_agreement(manifest, photos))
        if args.outage:
            parts.append(outage(broker, workdir, args.outage))
    body = "\n\n".join(parts)
    print(body)
    write_section(HEADING, body)


if __name__ == "__main__":
    main()
