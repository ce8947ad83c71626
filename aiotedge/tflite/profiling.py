"""Measuring what each piece of a model costs on this board (`aiotedge profile`).

The planner only cuts at valid cut points, so a stage is always a run of consecutive *pieces*
(the operators between two neighbouring cut points). Timing every piece once on a board is
enough to predict every stage the planner may choose: a stage costs the sum of its pieces'
`invoke` times plus one input copy (`set_tensor`) and one output copy (`get_tensor`) at its two
ends. Those copies are timed apart because inside a stage the pieces hand tensors over in
place, so summing whole piece runs would count one copy per inner boundary too many.

Each piece is cut out with the segment writer the converter uses (flatbuffers only: no
TensorFlow on a board), fed the real activation the previous piece produces, and invoked many
times in a row in its own interpreter, as a stage daemon runs its segment: warm caches, its
own thread pool.
Each piece runs in several rounds (all pieces in turn) of many runs; a round's median is
robust to the odd scheduling hiccup, and the quietest round is kept, as background load only
ever slows a run down.
"""

from __future__ import annotations

import logging
import platform
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from itertools import pairwise
from pathlib import Path

import numpy as np

from aiotedge.contracts.errors import ProfileError
from aiotedge.contracts.manifest import sha256_file
from aiotedge.contracts.profile import Piece, Profile
from aiotedge.tflite.runtime import interpreter_class

log = logging.getLogger(__name__)

DEFAULT_RUNS = 30
DEFAULT_WARMUP = 5
DEFAULT_ROUNDS = 3
SEED = 0


@dataclass(frozen=True)
class _Timing:
    set_ms: float
    invoke_ms: float
    get_ms: float


class _Timer:
    """One model in its own interpreter, fed one tensor, timed in rounds of many runs."""

    def __init__(self, model_path: Path, tensor: np.ndarray, threads: int | None) -> None:
        self.interpreter = interpreter_class()(model_path=str(model_path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.tensor = tensor
        self.rounds: list[_Timing] = []

    def output(self) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, self.tensor)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index)

    def run_round(self, runs: int, warmup: int) -> None:
        """Median set_tensor / invoke / get_tensor times of `runs` runs in a row."""
        samples = np.zeros((runs, 3), dtype=np.int64)
        for run in range(warmup + runs):
            t0 = time.perf_counter_ns()
            self.interpreter.set_tensor(self.input_index, self.tensor)
            t1 = time.perf_counter_ns()
            self.interpreter.invoke()
            t2 = time.perf_counter_ns()
            self.interpreter.get_tensor(self.output_index)
            t3 = time.perf_counter_ns()
            if run >= warmup:
                samples[run - warmup] = (t1 - t0, t2 - t1, t3 - t2)
        set_ns, invoke_ns, get_ns = np.median(samples, axis=0)
        self.rounds.append(_Timing(set_ns / 1e6, invoke_ns / 1e6, get_ns / 1e6))

    @property
    def best(self) -> _Timing:
        """The quietest round: other load only ever slows a run down."""
        return min(self.rounds, key=lambda t: t.set_ms + t.invoke_ms + t.get_ms)


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
    *,
    threads: int | None = None,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    rounds: int = DEFAULT_ROUNDS,
    on_round: Callable[[int, int], None] | None = None,
) -> Profile:
    """Time every piece of the model between neighbouring cut points on this machine."""
    # Here, not at the top: the `aiotedge` command imports this module, and a stage daemon
    # must not carry the TFLite schema these load (about 6 MB) for nothing.
    from aiotedge.tflite.flatbuffer import pack_model
    from aiotedge.tflite.graph import load_graph
    from aiotedge.tflite.segments import extract_segment

    if runs < 1 or warmup < 0 or rounds < 1:
        raise ProfileError("--runs and --rounds must be at least 1, --warmup at least 0")
    model_path = Path(model_path)
    graph = load_graph(model_path)
    bounds = [-1, *(c.op_index for c in graph.cut_points), len(graph.ops) - 1]
    spans = [(before + 1, last) for before, last in pairwise(bounds)]
    whole_input = graph.tensor(graph.input_index)
    tensor = sample_input(whole_input.shape, whole_input.dtype)
    whole = _Timer(model_path, tensor, threads)
    timers = []
    with tempfile.TemporaryDirectory(prefix="aiotedge-profile-") as scratch:
        for index, (first, last) in enumerate(spans):
            path = Path(scratch) / f"piece{index}.tflite"
            path.write_bytes(pack_model(extract_segment(graph, first, last)))
            timers.append(_Timer(path, tensor, threads))
            tensor = timers[-1].output()  # the real activation feeds the next piece
        # Rounds over all pieces, so a burst of background load spoils one round of a piece,
        # not its every run; within a round a piece runs many times in a row, as in a stage.
        for done in range(rounds):
            for timer in [whole, *timers]:
                timer.run_round(runs, warmup)
            if on_round is not None:
                on_round(done + 1, rounds)
    pieces = []
    for (first, last), timer in zip(spans, timers, strict=True):
        best = timer.best
        log.debug("ops %d..%d: %.3f ms", first, last, best.invoke_ms)
        pieces.append(
            Piece(
                first_op=first,
                last_op=last,
                invoke_ms=best.invoke_ms,
                set_input_ms=best.set_ms,
                get_output_ms=best.get_ms,
                input_bytes=int(timer.tensor.nbytes),
                output_bytes=int(timer.output().nbytes),
            )
        )
    best = whole.best
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
        rounds=rounds,
        whole_ms=best.set_ms + best.invoke_ms + best.get_ms,
        pieces=tuple(pieces),
    )


def profile_report(profile: Profile) -> str:
    """The table `aiotedge profile` prints: one row per piece, then the totals."""
    lines = [
        f"{profile.model_file} on {profile.label} ({profile.interpreter}), "
        f"best of {profile.rounds} rounds of {profile.runs} runs (median)",
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
