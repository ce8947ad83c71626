"""Seconds per frame of a whole model on this board: what a board's quota is calibrated by.

    python -m bench.cluster.probe MODEL.tflite [--frames 20] [--threads 1]

Invokes the model on one fixed input (after a few untimed runs) and prints the mean seconds
per invoke as its last word, as `timing.calibrate` expects: under a CPU quota single invokes
take more or less than the mean depending on where in the quota's period they fall.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from aiotedge.tflite.runtime import Segment

WARMUP = 3


def seconds_per_frame(model: Path, frames: int, threads: int) -> float:
    segment = Segment(model, num_threads=threads)
    spec = segment.input_spec
    tensor = np.random.default_rng(0).integers(0, 255, size=spec.shape).astype(spec.dtype)
    for _ in range(WARMUP):
        segment.run(tensor)
    started = time.perf_counter()
    for _ in range(frames):
        segment.run(tensor)
    return (time.perf_counter() - started) / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"seconds per frame: {seconds_per_frame(args.model, args.frames, args.threads):.6f}")


if __name__ == "__main__":
    main()
