"""How well a measured profile predicts the stages the planner cuts from it.

Measures a profile of a model on this machine (`aiotedge profile`'s code), plans N stages with
it, writes the split, then runs each stage's segment alone many times, as a stage daemon does,
and compares the planner's predicted stage time with the measured one. The target is every
stage within 15%.

    python bench/profile_accuracy.py [--model M.tflite ...] [--keras] [--stages 5]
                                     [--threads 1 2] [--repeat 3]
                                     [--write-docs docs/benchmarks.md]

Without --model it uses the shared ImageNet MobileNetV2 (uint8, ../shared/data) if present;
--keras adds the built-in Keras MobileNetV2 224 imported as float32 (needs TensorFlow, run in
a subprocess); with neither available, the Keras one is used. Exit 1 if any stage misses the
target.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiotedge_converter.costs import cost_basis
from aiotedge_converter.planner import plan_pipeline
from aiotedge_converter.split import SplitOptions, split_model

from aiotedge.nodes.daemons.profiling import measure_profile, sample_input
from aiotedge.tflite.graph import load_graph
from aiotedge.tflite.runtime import Segment
from bench.benchdoc import write_section
from support.paths import REPO, SHARED_MODEL

HEADING = "Planner: predicted vs measured stage times"
#: what the section says first
INTRO = ("Does a profile measured with `aiotedge profile` predict the stages the planner cuts "
         "from it? The bench measures the profile, plans, splits, and times each stage "
         "alone.")
TARGET = 0.15


@dataclass(frozen=True)
class Row:
    stage: int
    ops: str
    predicted_ms: float
    measured_ms: float

    @property
    def error(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms


def keras_model(scratch: Path) -> Path:
    """The built-in Keras MobileNetV2 224 (10 classes, random weights) as float32 .tflite."""
    out = scratch / "keras_mobilenet_v2_224_float32.tflite"
    command = [sys.executable, "-m", "aiotedge_converter", "import", "--arch", "mobilenet_v2"]
    command += ["--input-size", "224", "--classes", "10", "--out", str(out)]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def models(args: argparse.Namespace, scratch: Path) -> list[Path]:
    chosen = list(args.model or ([SHARED_MODEL] if SHARED_MODEL.is_file() else []))
    if args.keras or not chosen:
        chosen.append(keras_model(scratch))
    return chosen


def time_stage(segment: Segment, tensor: np.ndarray, runs: int, warmup: int) -> float:
    """Median wall time of `runs` calls of Segment.run in a row, as a stage daemon makes."""
    for _ in range(warmup):
        segment.run(tensor)
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        segment.run(tensor)
        samples.append(time.perf_counter_ns() - start)
    return float(np.median(samples)) / 1e6


def measure(
    model: Path, threads: int | None, args: argparse.Namespace, scratch: Path
) -> tuple[list[Row], float]:
    """Profile, plan, split, then time each stage alone: (rows, whole-model ms)."""
    graph = load_graph(model)
    profile = measure_profile(
        model, threads=threads, runs=args.runs, warmup=args.warmup, rounds=args.rounds
    )
    basis = cost_basis(graph, args.stages, [("profile", profile)])
    plan = plan_pipeline(basis.boards, [c.op_index for c in graph.cut_points])
    options = SplitOptions(copy_source=False, num_threads=threads)
    manifest = split_model(graph, plan, scratch / f"split-{model.stem}-{threads}", options)
    segments = [Segment(manifest.segment_path(i), threads) for i in range(args.stages)]
    spec = manifest.source.input
    inputs, tensor = [], sample_input(spec.shape, spec.dtype)
    for segment in segments:
        inputs.append(tensor)
        tensor = segment.run(tensor)
    # Each stage alone, in rounds as the profile is measured; the quietest round counts.
    pairs = list(zip(segments, inputs, strict=True))
    rounds = np.array(
        [[time_stage(s, x, args.runs, args.warmup) for s, x in pairs] for _ in range(args.rounds)]
    )
    measured = rounds.min(axis=0)
    rows = [
        Row(i, f"{s.first_op}..{s.last_op}", float(s.compute), float(measured[i]))
        for i, s in enumerate(plan.stages)
    ]
    return rows, profile.whole_ms


def table(
    model: Path, threads: int | None, rows: list[Row], whole_ms: float, worst: list[float]
) -> str:
    """The first repeat's stages; the largest error of every repeat in the heading."""
    repeats = ", ".join(f"{100 * w:.1f}%" for w in worst)
    lines = [
        f"`{model.name}`, {'default' if threads is None else threads} thread(s): "
        f"whole model {whole_ms:.2f} ms; largest error per repeat: {repeats}",
        "",
        "| stage | ops | predicted ms | measured ms | error |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r.stage} | {r.ops} | {r.predicted_ms:.3f} | {r.measured_ms:.3f} | "
        f"{100 * r.error:+.1f}% |"
        for r in rows
    ]
    return "\n".join(lines)


def report(tables: list[str], worst: float, args: argparse.Namespace) -> str:
    verdict = "within" if worst <= TARGET else "NOT within"
    intro = (
        f"{args.stages} stages planned on a profile measured on this machine "
        f"({platform.machine()}, {os.cpu_count()} cores, shared with other work; "
        f"`aiotedge profile` with {args.rounds} rounds of {args.runs} runs per piece); each "
        f"stage's segment then run alone with `Segment.run`, {args.rounds} rounds of "
        f"{args.runs} runs. Both keep the quietest round's median. The whole measurement "
        f"(profile, plan, split, stage timing) ran {args.repeat} time(s) per configuration; "
        "each table shows the first."
    )
    summary = (
        f"Largest error over all stages and repeats: {100 * worst:.1f}%, {verdict} the "
        f"{100 * TARGET:.0f}% target. The machine is shared with other work, which is what "
        "moves the errors between repeats: a burst of load while one piece or one stage is "
        "timed shows as that stage's error. Timed in one round instead (the median of 100 runs "
        "per piece), float32 with 2 threads showed errors up to 40% here."
    )
    return "\n\n".join([intro, *tables, summary])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", help="a .tflite (repeatable)")
    parser.add_argument("--keras", action="store_true", help="add the Keras MobileNetV2 224")
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1, help="whole measurement N times")
    parser.add_argument("--write-docs", action="store_true",
                        help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    tables, worst = [], 0.0
    with tempfile.TemporaryDirectory() as scratch:
        for model in models(args, Path(scratch)):
            for threads in args.threads:
                repeats = [measure(model, threads, args, Path(scratch)) for _ in range(args.repeat)]
                errors = [max(abs(r.error) for r in rows) for rows, _ in repeats]
                tables.append(table(model, threads, *repeats[0], errors))
                print(tables[-1], flush=True)
                worst = max(worst, *errors)
    body = report(tables, worst, args)
    if args.write_docs:
        write_section(HEADING, f"{INTRO}\n\n{body}")
    print(body.splitlines()[-1])
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
