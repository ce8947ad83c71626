"""The profile format: what each piece of a model costs on one board, for the planner.

`aiotedge profile` writes it on a board (aiotedge.nodes.daemons.profiling measures); the converter's
planner reads it on the workstation. A stage is always a run of consecutive pieces (the
operators between two neighbouring cut points): it costs the sum of its pieces' invoke times
plus one input copy and one output copy at its two ends.

Version 2 adds what a frame costs a stage besides its segment (docs/manifest.md#profile): taking
its input in (stage 0: decoding a photo, a model-size JPEG or a tensor; the others: an
activation), encoding its output, with and without each codec, and moving a message of a given
size through MQTT (publish at one end, receive at the other). Version 1 files still load; their
stages cost their segment only.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiotedge.contracts.errors import ProfileError

PROFILE_VERSION = 2
#: versions this aiotedge reads (1: segment times only)
READABLE_VERSIONS = (1, 2)
#: what stage 0 may receive: a camera's photo, a JPEG at the model's size, or the tensor itself
INPUT_KINDS = ("photo", "jpeg", "tensor")
#: the key of an activation sent without a codec
RAW = "raw"
#: about what the last stage publishes per frame: a prediction's JSON (top 5, five hops)
PREDICTION_BYTES = 1024


@dataclass(frozen=True)
class CodecCost:
    """One activation sent in one codec (None: raw bytes): the message, its encoding by the
    sender and its decoding by the receiver, ms."""

    message_bytes: int
    encode_ms: float
    decode_ms: float


@dataclass(frozen=True)
class InputCost:
    """What stage 0 spends turning one received frame of a kind into its input tensor (wire
    decoding, then for a photo or a JPEG, image decoding and preprocessing)."""

    kind: str
    width: int
    height: int
    message_bytes: int
    decode_ms: float


@dataclass(frozen=True)
class TransportSample:
    """CPU a node spends moving one message of `message_bytes` through the broker: publishing
    it (until the broker's acknowledgement) and receiving it (until it is handed to the
    worker and acknowledged); `one_way_ms` is the wall time from publish to receipt."""

    message_bytes: int
    publish_ms: float
    receive_ms: float
    one_way_ms: float


@dataclass(frozen=True)
class Transport:
    """How the transport costs were measured, and the samples (by message size)."""

    method: str
    samples: tuple[TransportSample, ...]

    def at(self, message_bytes: int) -> TransportSample:
        """Costs of a message of this size, linear between the samples and beyond them."""
        samples = self.samples
        if len(samples) == 1:
            return samples[0]
        index = min(max(bisect_left([s.message_bytes for s in samples], message_bytes), 1),
                    len(samples) - 1)
        low, high = samples[index - 1], samples[index]
        share = (message_bytes - low.message_bytes) / (high.message_bytes - low.message_bytes)

        def between(name: str) -> float:
            a, b = getattr(low, name), getattr(high, name)
            return max(0.0, a + (b - a) * share)

        return TransportSample(message_bytes, between("publish_ms"), between("receive_ms"),
                               between("one_way_ms"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transport:
        samples = sorted((TransportSample(**s) for s in data["samples"]),
                         key=lambda s: s.message_bytes)
        return cls(str(data["method"]), tuple(samples))


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
    #: version 2: its output sent to the next stage, raw (key RAW) and in each codec
    codecs: dict[str, CodecCost] = field(default_factory=dict)

    def send(self, codec: str | None) -> CodecCost | None:
        """Its output as a message in `codec` (None: raw); None when not measured."""
        return self.codecs.get(codec or RAW)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Piece:
        codecs = {name: CodecCost(**cost) for name, cost in data.get("codecs", {}).items()}
        return cls(**{**data, "codecs": codecs})


@dataclass(frozen=True)
class Profile:
    """Piece times of one model on one machine with a given thread count (ms, the quietest
    round's median)."""

    model_file: str
    model_sha256: str
    op_count: int
    machine: str
    platform: str
    interpreter: str
    threads: int | None
    runs: int
    warmup: int
    rounds: int
    #: median time of the whole model (set + invoke + get), for comparison with the pieces
    whole_ms: float
    pieces: tuple[Piece, ...]
    #: version 2: stage 0's input, by kind (INPUT_KINDS); empty in version 1
    inputs: tuple[InputCost, ...] = ()
    #: version 2: MQTT publish/receive costs by message size; None when not measured
    transport: Transport | None = None
    #: what the activations were computed from (a photo's name, or a synthetic one)
    sample: str = ""
    format_version: int = PROFILE_VERSION

    @property
    def hop_costs(self) -> bool:
        """Whether it says what a frame costs besides the segment (version 2)."""
        return bool(self.inputs)

    def input_cost(self, kind: str) -> InputCost | None:
        return next((cost for cost in self.inputs if cost.kind == kind), None)

    @property
    def cut_points(self) -> tuple[int, ...]:
        return tuple(piece.last_op for piece in self.pieces[:-1])

    @property
    def label(self) -> str:
        if self.threads is None:
            threads = "default threads"
        else:
            threads = f"{self.threads} thread" + ("" if self.threads == 1 else "s")
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
        version = data.pop("format_version")
        return {"format_version": version, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ProfileError(
                f"profile format_version {version!r} is not supported (this aiotedge reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))})"
            )
        fields = {k: v for k, v in data.items()
                  if k not in ("pieces", "inputs", "transport")}
        transport = data.get("transport")
        return cls(
            **fields,
            pieces=tuple(Piece.from_dict(piece) for piece in data["pieces"]),
            inputs=tuple(InputCost(**cost) for cost in data.get("inputs", ())),
            transport=Transport.from_dict(transport) if transport else None,
        )

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str) -> Profile:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"{path}: cannot read profile: {exc}") from exc
        except ProfileError as exc:
            raise ProfileError(f"{path}: {exc}") from exc
