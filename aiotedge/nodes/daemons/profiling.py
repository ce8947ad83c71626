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

What a frame costs a stage besides its segment is measured on the same real activations:
taking stage 0's input in (a camera-size photo, a model-size JPEG or the tensor), encoding
each piece's output as a frame with and without each codec, and decoding it as the next stage
does. Moving a message through MQTT is measured by a `transport` function the caller passes in
(aiotedge.nodes.daemons.transport_cost: a real paho client against a private mosquitto), at a few
message sizes from the smallest to the largest the model sends.
"""

from __future__ import annotations

import io
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
from PIL import Image

from aiotedge.contracts.codec import CODECS
from aiotedge.contracts.errors import BrokerError, ModelError, ProfileError
from aiotedge.contracts.manifest import Preprocessing, sha256_file
from aiotedge.contracts.profile import (
    PREDICTION_BYTES,
    RAW,
    CodecCost,
    InputCost,
    Piece,
    Profile,
    Transport,
)
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.wire import Frame, Hop, decode_activation, decode_photo, encode_frame
from aiotedge.media.image import decode_image, default_preprocessing, preprocess
from aiotedge.tflite.runtime import interpreter_class

log = logging.getLogger(__name__)

DEFAULT_RUNS = 30
DEFAULT_WARMUP = 5
DEFAULT_ROUNDS = 3
SEED = 0
#: a camera's photo when no sample is given (VGA, the size of many USB and Pi cameras)
DEFAULT_PHOTO_SIZE = (640, 480)
JPEG_QUALITY = 90
#: message sizes the transport is measured at, spread from the smallest to the largest
TRANSPORT_SIZES = 8
#: measures the MQTT costs of messages of the given sizes (aiotedge.nodes.daemons.transport_cost)
TransportProbe = Callable[[Sequence[int]], Transport]


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
        output = self.interpreter.get_output_details()[0]
        self.output_index = output["index"]
        self.output_spec = TensorSpec.from_tflite_detail(output)
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


def synthetic_photo(width: int, height: int) -> bytes:
    """A seeded stand-in for a camera's photo: smooth shapes and mild sensor noise, as JPEG.

    Its activations compress roughly as a photo's do, unlike uniform noise; a real sample
    photo (`aiotedge profile --photo`) is better still.
    """
    rng = np.random.default_rng(SEED)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 6.3)
        wave = np.sin(2 * np.pi * (fx * x / width + fy * y / height) + phase)
        channels.append(127.5 + 90 * wave + rng.normal(0, 6, (height, width)))
    pixels = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    return _jpeg(Image.fromarray(pixels))


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _best_ms(call: Callable[[], object], runs: int, warmup: int, rounds: int) -> float:
    """The quietest round's median time of `call`, ms (as the pieces are timed)."""
    medians = []
    for _ in range(rounds):
        for _ in range(warmup):
            call()
        samples = []
        for _ in range(runs):
            start = time.perf_counter_ns()
            call()
            samples.append(time.perf_counter_ns() - start)
        medians.append(float(np.median(samples)) / 1e6)
    return min(medians)


def _frame(tensor: np.ndarray | None = None, spec: TensorSpec | None = None,
           image: bytes | None = None) -> Frame:
    """A frame as it travels, two hops into the pipeline."""
    now = time.time()
    return Frame("cam0-profile-1", "cam0", 1, now, image=image, tensor=tensor,
                 scale=spec.scale if spec else 0.0, zero_point=spec.zero_point if spec else 0,
                 trace=[Hop(0, now, now), Hop(1, now, now)])


class _Sizing:
    """How often to repeat each hop measurement."""

    def __init__(self, runs: int, warmup: int, rounds: int) -> None:
        self.runs, self.warmup, self.rounds = runs, warmup, rounds

    def time(self, call: Callable[[], object]) -> float:
        return _best_ms(call, self.runs, self.warmup, self.rounds)


def _send_costs(activation: np.ndarray, spec: TensorSpec, sizing: _Sizing) -> dict[str, CodecCost]:
    """An activation sent raw and in each codec: message bytes, encode and decode ms."""
    costs = {}
    for codec in (None, *CODECS):
        frame = _frame(activation, spec)
        payload = encode_frame(frame, codec)
        costs[codec or RAW] = CodecCost(
            message_bytes=len(payload),
            encode_ms=sizing.time(lambda f=frame, c=codec: encode_frame(f, c)),
            decode_ms=sizing.time(lambda p=payload: decode_activation(p, spec)),
        )
    return costs


def _input_costs(
    photo: bytes, spec: TensorSpec, sizing: _Sizing
) -> tuple[tuple[InputCost, ...], np.ndarray]:
    """Stage 0 taking in a camera's photo, a model-size JPEG, or the tensor itself; and the
    model's input for the photo (a seeded stand-in for a model that takes no image)."""
    try:
        prep = default_preprocessing(spec, None, None)
    except ModelError:
        prep = None
    if prep is None:
        tensor_input = sample_input(spec.shape, spec.dtype)
    else:
        tensor_input = preprocess(decode_image(photo), prep, spec)
    tensor_payload = encode_frame(_frame(tensor_input, spec))
    costs = [InputCost("tensor", *_width_height(spec), len(tensor_payload),
                       sizing.time(lambda: decode_activation(tensor_payload, spec)))]
    if prep is None:
        return tuple(costs), tensor_input
    camera = decode_image(photo)
    small = _jpeg(camera.convert("RGB").resize((prep.width, prep.height),
                                               Image.Resampling.BILINEAR))
    for kind, image in (("photo", photo), ("jpeg", small)):
        payload = encode_frame(_frame(image=image))
        width, height = decode_image(image).size

        def take(p: bytes = payload, pre: Preprocessing = prep) -> np.ndarray:
            frame = decode_photo(p)
            assert frame.image is not None
            return preprocess(decode_image(frame.image), pre, spec)

        costs.insert(0 if kind == "photo" else 1,
                     InputCost(kind, width, height, len(payload), sizing.time(take)))
    return tuple(costs), tensor_input


def _width_height(spec: TensorSpec) -> tuple[int, int]:
    shape = spec.shape
    return (shape[2], shape[1]) if len(shape) == 4 else (0, 0)


def _transport_sizes(profile_sizes: Sequence[int]) -> list[int]:
    """TRANSPORT_SIZES message sizes, geometrically from the smallest to the largest."""
    low, high = max(min(profile_sizes), 64), max(profile_sizes)
    grid = np.geomspace(low, high, TRANSPORT_SIZES) if high > low else [low]
    return sorted({int(size) for size in np.rint(grid)})


def _measure_transport(probe: TransportProbe | None, sizes: Sequence[int]) -> Transport | None:
    """MQTT costs at sizes spanning the model's messages; None without a probe or a broker."""
    if probe is None:
        return None
    try:
        return probe(_transport_sizes(sizes))
    except BrokerError as exc:
        log.warning("MQTT publish/receive costs not measured (codec costs only): %s", exc)
        return None


def interpreter_name() -> str:
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
    photo: bytes | None = None,
    photo_name: str = "",
    photo_size: tuple[int, int] = DEFAULT_PHOTO_SIZE,
    transport: TransportProbe | None = None,
) -> Profile:
    """Time every piece of the model between neighbouring cut points on this machine, and
    what a frame costs a stage besides its segment.

    `photo` is a sample camera photo (else a synthetic one of `photo_size`); the activations
    whose encoding and compression are measured are computed from it. `transport` measures
    MQTT publish/receive costs; without it the profile has none (codec costs only).
    """
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
    if photo is None:
        photo = synthetic_photo(*photo_size)
        photo_name = f"synthetic {photo_size[0]}x{photo_size[1]} photo"
    sizing = _Sizing(runs, warmup, rounds)
    inputs, tensor = _input_costs(photo, graph.tensor(graph.input_index), sizing)
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
    for index, ((first, last), timer) in enumerate(zip(spans, timers, strict=True)):
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
                codecs=(_send_costs(timer.output(), timer.output_spec, sizing)
                        if index < len(timers) - 1 else {}),
            )
        )
    sizes = [PREDICTION_BYTES, *(cost.message_bytes for cost in inputs)]
    sizes += [cost.message_bytes for piece in pieces for cost in piece.codecs.values()]
    best = whole.best
    return Profile(
        model_file=model_path.name,
        model_sha256=sha256_file(model_path),
        op_count=len(graph.ops),
        machine=socket.gethostname(),
        platform=f"{platform.system()} {platform.machine()} {platform.processor()}".strip(),
        interpreter=interpreter_name(),
        threads=threads,
        runs=runs,
        warmup=warmup,
        rounds=rounds,
        whole_ms=best.set_ms + best.invoke_ms + best.get_ms,
        pieces=tuple(pieces),
        inputs=inputs,
        transport=_measure_transport(transport, sizes),
        sample=photo_name,
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
    if profile.hop_costs:
        lines += ["", *hop_report(profile)]
    return "\n".join(lines)


def hop_report(profile: Profile) -> list[str]:
    """What a frame costs besides the segments: stage 0's input, sending each cut's tensor."""
    lines = [f"besides the segments (activations of the {profile.sample}):"]
    for cost in profile.inputs:
        lines.append(f"  stage 0 takes a {cost.kind} ({cost.width}x{cost.height}, "
                     f"{cost.message_bytes} bytes): {cost.decode_ms:.3f} ms")
    header = f"  {'after op':>8}  {'message':>9}  {'encode ms':>9}  {'decode ms':>9}"
    header += "".join(f"  {codec + ' bytes':>11}  {codec + ' enc/dec ms':>17}" for codec in CODECS)
    lines.append(header)
    for piece in profile.pieces[:-1]:
        raw = piece.codecs[RAW]
        row = f"  {piece.last_op:>8}  {raw.message_bytes:>9}  {raw.encode_ms:>9.3f}  " \
              f"{raw.decode_ms:>9.3f}"
        for codec in CODECS:
            cost = piece.codecs[codec]
            ratio = cost.message_bytes / raw.message_bytes
            row += f"  {cost.message_bytes:>5} {100 * ratio:>4.0f}%  " \
                   f"{f'{cost.encode_ms:.3f}/{cost.decode_ms:.3f}':>17}"
        lines.append(row)
    if profile.transport is None:
        lines.append("MQTT publish/receive costs not measured (no broker); codec costs only")
    else:
        lines.append(f"MQTT per message ({profile.transport.method}), CPU ms:")
        lines += [f"  {s.message_bytes:>9} bytes: publish {s.publish_ms:.3f}, receive "
                  f"{s.receive_ms:.3f} (one way {s.one_way_ms:.3f} ms wall)"
                  for s in profile.transport.samples]
    return lines
