"""`aiotedge profile`: what each piece of a model costs on this board, for the converter's planner.

The planner only cuts at valid cut points, so a stage is always a run of consecutive *pieces*
(the operators between two neighbouring cut points). Timing every piece once on a board is
enough to predict every stage the planner may choose: a stage costs the sum of its pieces'
`invoke` times plus one input copy (`set_tensor`) and one output copy (`get_tensor`) at its two
ends. Those copies are timed apart because inside a stage the pieces hand tensors over in
place, so summing whole piece runs would count one copy per inner boundary too many.

Each piece is cut out with the converter's segment writer (flatbuffers only: no TensorFlow on
a board), fed the real activation the previous piece produces, and invoked many times in a row
in its own interpreter, as a stage daemon runs its segment: warm caches, its own thread pool.
The median is kept, robust to the odd scheduling hiccup.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from aiotedge.manifest import sha256_file
from aiotedge.runtime import interpreter_class

log = logging.getLogger(__name__)

PROFILE_VERSION = 1
DEFAULT_RUNS = 50
DEFAULT_WARMUP = 5
SEED = 0


class ProfileError(ValueError):
    """A profile file is unreadable or does not belong to the model it is used with."""


@dataclass(frozen=True)
class Piece:
    """Operators first_op..last_op (between two neighbouring cut points) and their times."""

    first_op: int
    last_op: int
    invoke_ms: float
    set_input_ms: float
    get_output_ms: float
    input_bytes: int
    output_bytes: int


@dataclass(frozen=True)
class Profile:
    """Median piece times of one model on one machine with a given thread count."""

    model_file: str
    model_sha256: str
    op_count: int
    machine: str
    platform: str
    interpreter: str
    threads: int | None
    runs: int
    warmup: int
    #: median time of the whole model (set + invoke + get), for comparison with the pieces
    whole_ms: float
    pieces: tuple[Piece, ...]

    @property
    def cut_points(self) -> tuple[int, ...]:
        return tuple(piece.last_op for piece in self.pieces[:-1])

    @property
    def label(self) -> str:
        threads = "default threads" if self.threads is None else f"{self.threads} threads"
        return f"{self.machine}, {threads}"

    def stage_ms(self, first_op: int, last_op: int) -> float:
        """Predicted time of a stage running ops first_op..last_op (piece boundaries)."""
        inside = [p for p in self.pieces if first_op <= p.first_op and p.last_op <= last_op]
        if (
            not inside
            or inside[0].first_op != first_op
            or inside[-1].last_op != last_op
        ):
            raise ProfileError(f"ops {first_op}..{last_op} do not start and end at cut points")
        return (
            sum(p.invoke_ms for p in inside) + inside[0].set_input_ms + inside[-1].get_output_ms
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pieces"] = [asdict(piece) for piece in self.pieces]
        return {"format_version": PROFILE_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        if data.get("format_version") != PROFILE_VERSION:
            raise ProfileError(
                f"profile format_version {data.get('format_version')!r} is not supported "
                f"(this aiotedge reads version {PROFILE_VERSION})"
            )
        fields = {k: v for k, v in data.items() if k not in ("format_version", "pieces")}
        return cls(**fields, pieces=tuple(Piece(**piece) for piece in data["pieces"]))

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str) -> Profile:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ProfileError(f"{path}: cannot read profile: {exc}") from exc
        except ProfileError as exc:
            raise ProfileError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class _Timing:
    set_ms: float
    invoke_ms: float
    get_ms: float
    output: np.ndarray


def _time_model(
    model_path: Path, tensor: np.ndarray, threads: int | None, runs: int, warmup: int
) -> _Timing:
    """Median set_tensor / invoke / get_tensor times of one model fed `tensor`."""
    interpreter = interpreter_class()(model_path=str(model_path), num_threads=threads)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    samples = np.zeros((runs, 3), dtype=np.int64)
    output = tensor
    for run in range(warmup + runs):
        t0 = time.perf_counter_ns()
        interpreter.set_tensor(input_index, tensor)
        t1 = time.perf_counter_ns()
        interpreter.invoke()
        t2 = time.perf_counter_ns()
        output = interpreter.get_tensor(output_index)
        t3 = time.perf_counter_ns()
        if run >= warmup:
            samples[run - warmup] = (t1 - t0, t2 - t1, t3 - t2)
    set_ns, invoke_ns, get_ns = np.median(samples, axis=0)
    return _Timing(set_ns / 1e6, invoke_ns / 1e6, get_ns / 1e6, output)


def sample_input(shape: Sequence[int], dtype: str) -> np.ndarray:
    """A seeded stand-in photo: raw pixel values for integer inputs, [-1, 1] for float."""
    rng = np.random.default_rng(SEED)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, 0), min(info.max, 255) + 1, shape).astype(dtype)
    return rng.uniform(-1.0, 1.0, shape).astype(dtype)


def _interpreter_name() -> str:
    module = interpreter_class().__module__.split(".")[0]
    distribution = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}
    try:
        return f"{module} {metadata.version(distribution.get(module, module))}"
    except metadata.PackageNotFoundError:
        return module


def measure_profile(
    model_path: Path | str,
    threads: int | None = None,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    on_piece: Callable[[int, int], None] | None = None,
) -> Profile:
    """Time every piece of the model between neighbouring cut points on this machine."""
    # The converter's graph reader and segment writer need only the flatbuffer schema that
    # ships with the interpreter; imported here so other commands start without them.
    from converter.flatbuffer import pack_model
    from converter.graph import load_graph
    from converter.split import extract_segment

    if runs < 1 or warmup < 0:
        raise ProfileError("--runs must be at least 1 and --warmup at least 0")
    model_path = Path(model_path)
    graph = load_graph(model_path)
    bounds = [-1, *(c.op_index for c in graph.cut_points), len(graph.ops) - 1]
    whole_input = graph.tensor(graph.input_index)
    tensor = sample_input(whole_input.shape, whole_input.dtype)
    whole = _time_model(model_path, tensor, threads, runs, warmup)
    pieces = []
    with tempfile.TemporaryDirectory(prefix="aiotedge-profile-") as scratch:
        spans = list(pairwise(bounds))
        for index, (before, last) in enumerate(spans):
            path = Path(scratch) / f"piece{index}.tflite"
            path.write_bytes(pack_model(extract_segment(graph, before + 1, last)))
            timing = _time_model(path, tensor, threads, runs, warmup)
            pieces.append(
                Piece(
                    first_op=before + 1,
                    last_op=last,
                    invoke_ms=timing.invoke_ms,
                    set_input_ms=timing.set_ms,
                    get_output_ms=timing.get_ms,
                    input_bytes=int(tensor.nbytes),
                    output_bytes=int(timing.output.nbytes),
                )
            )
            log.debug("piece %d ops %d..%d: %.3f ms", index, before + 1, last, timing.invoke_ms)
            tensor = timing.output
            path.unlink()
            if on_piece is not None:
                on_piece(index + 1, len(spans))
    return Profile(
        model_file=model_path.name,
        model_sha256=sha256_file(model_path),
        op_count=len(graph.ops),
        machine=socket.gethostname(),
        platform=f"{platform.system()} {platform.machine()} {platform.processor()}".strip(),
        interpreter=_interpreter_name(),
        threads=threads,
        runs=runs,
        warmup=warmup,
        whole_ms=whole.set_ms + whole.invoke_ms + whole.get_ms,
        pieces=tuple(pieces),
    )


def profile_report(profile: Profile) -> str:
    """The table `aiotedge profile` prints: one row per piece, then the totals."""
    lines = [
        f"{profile.model_file} on {profile.label} ({profile.interpreter}), "
        f"median of {profile.runs} runs",
        f"{'piece':>5}  {'ops':>9}  {'invoke ms':>9}  {'set ms':>7}  {'get ms':>7}  "
        f"{'out bytes':>9}",
    ]
    for index, piece in enumerate(profile.pieces):
        lines.append(
            f"{index:>5}  {f'{piece.first_op}..{piece.last_op}':>9}  {piece.invoke_ms:>9.3f}  "
            f"{piece.set_input_ms:>7.3f}  {piece.get_output_ms:>7.3f}  {piece.output_bytes:>9}"
        )
    predicted = profile.stage_ms(0, profile.op_count - 1)
    lines.append(
        f"whole model measured {profile.whole_ms:.3f} ms; as one stage from the pieces "
        f"{predicted:.3f} ms"
    )
    return "\n".join(lines)


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL.tflite", help="the whole model")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="PROFILE.json", help="where to write it"
    )
    parser.add_argument("--threads", type=int, help="interpreter threads (as the stage will use)")
    parser.add_argument(
        "--runs", type=int, default=DEFAULT_RUNS, help=f"timed runs per piece ({DEFAULT_RUNS})"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        help=f"untimed runs first ({DEFAULT_WARMUP})",
    )


def run_profile(args: argparse.Namespace) -> int:
    """Measure, write PROFILE.json and print the table; 2 on an unusable model."""
    from converter.errors import ConverterError

    def progress(done: int, total: int) -> None:
        log.info("profiled %d of %d pieces", done, total)

    try:
        profile = measure_profile(args.model, args.threads, args.runs, args.warmup, progress)
    except (ConverterError, ProfileError) as exc:
        log.error("%s", exc)
        return 2
    profile.save(args.out)
    print(profile_report(profile))
    print(f"wrote {args.out}")
    return 0
