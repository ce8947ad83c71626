"""Malformed messages of many kinds, each one a stage must refuse with one error event.

A kind builds a payload for one stage from a valid frame of that stage (a photo for stage 0,
an activation of the right spec for the others) by breaking one thing: the encoding, one field
(missing, wrong type, out of range, huge, non-finite), the tensor's dtype, shape,
quantization or bytes, or the photo. Frame ids are kept where the kind leaves them readable,
so an error event can be traced back to its message.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.wire import MAX_ID_LENGTH, MAX_TRACE_HOPS, Frame, encode_frame


@dataclass(frozen=True)
class Target:
    """One stage as the storm sees it."""

    stage: int
    #: the stage's input; None for stage 0, which takes photos
    spec: TensorSpec | None
    photo: bytes
    max_message_bytes: int
    #: size of a "huge" string field (kept under max_message_bytes)
    huge: int
    #: empty maps in a memory bomb: as many as fit under max_message_bytes
    bomb_maps: int

    @property
    def takes_photos(self) -> bool:
        return self.spec is None


@dataclass(frozen=True)
class Message:
    stage: int
    kind: str
    #: the frame id an error event should name, when the kind leaves it readable
    frame_id: str | None
    payload: bytes


Builder = Callable[[Target, str], bytes]


@dataclass(frozen=True)
class Kind:
    name: str
    build: Builder
    #: "any", "photo" (stage 0 only) or "tensor" (stages 1..N-1); "float" needs a float input
    stages: str = "any"
    #: large payloads: sent a few times per stage, not thousands
    heavy: bool = False
    #: the frame id survives, so the error event must name it
    readable_id: bool = True

    def applies(self, target: Target) -> bool:
        if self.stages == "photo":
            return target.takes_photos
        if self.stages == "tensor":
            return not target.takes_photos
        if self.stages == "float":
            return target.spec is not None and np.dtype(target.spec.dtype).kind == "f"
        return True


def good_frame(target: Target, frame_id: str, tensor: np.ndarray | None = None) -> Frame:
    """A frame the stage accepts: its photo, or an activation of its spec (zeros by default)."""
    if target.spec is None:
        return Frame(frame_id, "storm", 0, 1.7e9, image=target.photo)
    values = tensor if tensor is not None else np.zeros(target.spec.shape, target.spec.dtype)
    return Frame(frame_id, "storm", 0, 1.7e9, tensor=values,
                 scale=target.spec.scale, zero_point=target.spec.zero_point)


def _fields(target: Target, frame_id: str) -> dict[str, Any]:
    return msgpack.unpackb(encode_frame(good_frame(target, frame_id)), raw=False)


def _pack(message: Any) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def _set(**changes: Any) -> Builder:
    """A kind that replaces (or, with `...`, removes) header fields of a valid frame."""
    def build(target: Target, frame_id: str) -> bytes:
        message = _fields(target, frame_id)
        for name, value in changes.items():
            if value is ...:
                message.pop(name, None)
            else:
                message[name] = value(target) if callable(value) else value
        return _pack(message)
    return build


def _tensor(**changes: Any) -> Builder:
    """Like `_set`, for the fields inside `tensor`."""
    def build(target: Target, frame_id: str) -> bytes:
        message = _fields(target, frame_id)
        tensor = message["tensor"]
        for name, value in changes.items():
            if value is ...:
                tensor.pop(name, None)
            else:
                tensor[name] = value(target, tensor) if callable(value) else value
        return _pack(message)
    return build


def _raw(payload: bytes | Callable[[Target], bytes]) -> Builder:
    return lambda target, _frame_id: payload(target) if callable(payload) else payload


def _non_finite(value: float) -> Builder:
    """A float activation holding NaN or infinity, otherwise of exactly the right spec."""
    def build(target: Target, frame_id: str) -> bytes:
        assert target.spec is not None
        tensor = np.full(target.spec.shape, value, dtype=target.spec.dtype)
        return encode_frame(good_frame(target, frame_id, tensor))
    return build


def pixel_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header claiming width x height pixels: a few bytes that decode to 30 GB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(
        b"IEND", b"")


def memory_bomb(maps: int) -> bytes:
    """A msgpack array of `maps` empty maps: one byte each on the wire, a dict each decoded."""
    return b"\xdd" + struct.pack(">I", maps) + b"\x80" * maps


def _other_dtype(target: Target) -> str:
    assert target.spec is not None
    return "float32" if target.spec.dtype != "float32" else "uint8"


KINDS: tuple[Kind, ...] = (
    # -- the encoding -------------------------------------------------------------------------
    Kind("empty payload", _raw(b""), readable_id=False),
    Kind("not msgpack", _raw(b"\xc1 not msgpack"), readable_id=False),
    Kind("text", _raw(b"hello, I am not msgpack at all"), readable_id=False),
    Kind("truncated", lambda t, f: _pack(_fields(t, f))[:-7], readable_id=False),
    Kind("trailing bytes", lambda t, f: _pack(_fields(t, f)) + b"\x00", readable_id=False),
    Kind("array instead of map", _raw(_pack([1, 2, 3])), readable_id=False),
    Kind("integer keys", _raw(_pack({1: 2})), readable_id=False),
    Kind("deep nesting", _raw(b"\x91" * 100_000 + b"\xc0"), readable_id=False),
    Kind("memory bomb (empty maps)", lambda t, _f: memory_bomb(t.bomb_maps), heavy=True,
         readable_id=False),
    Kind("over max_message_bytes", lambda t, _f: b"\x00" * (t.max_message_bytes + 1),
         heavy=True, readable_id=False),
    # -- header fields -----------------------------------------------------------------------
    Kind("version wrong", _set(version=99)),
    Kind("version missing", _set(version=...)),
    Kind("version bool", _set(version=True)),
    Kind("version huge int", _set(version=2**64 - 1)),
    # beyond msgpack's limits: refused before any field is read, so no frame id in the event
    Kind("version huge string", _set(version=lambda t: "9" * t.huge), heavy=True,
         readable_id=False),
    Kind("frame_id missing", _set(frame_id=...), readable_id=False),
    Kind("frame_id int", _set(frame_id=17), readable_id=False),
    Kind("frame_id empty", _set(frame_id=""), readable_id=False),
    Kind("frame_id bytes", _set(frame_id=b"cam0-1"), readable_id=False),
    Kind("frame_id too long", _set(frame_id="x" * (MAX_ID_LENGTH + 1)), readable_id=False),
    Kind("frame_id huge", _set(frame_id=lambda t: "x" * t.huge), heavy=True,
         readable_id=False),
    Kind("source missing", _set(source=...)),
    Kind("source int", _set(source=3)),
    Kind("source too long", _set(source="s" * (MAX_ID_LENGTH + 1))),
    Kind("seq string", _set(seq="7")),
    Kind("seq bool", _set(seq=True)),
    Kind("seq negative", _set(seq=-1)),
    Kind("seq float", _set(seq=1.5)),
    Kind("captured_at string", _set(captured_at="now")),
    Kind("captured_at NaN", _set(captured_at=float("nan"))),
    Kind("captured_at infinite", _set(captured_at=float("inf"))),
    Kind("captured_at huge", _set(captured_at=1e300)),
    Kind("trace missing", _set(trace=...)),
    Kind("trace string", _set(trace="0,1,2")),
    Kind("trace entry short", _set(trace=[[0, 1.0]])),
    Kind("trace too long", _set(trace=[[0, 1.0, 2.0]] * (MAX_TRACE_HOPS + 1)),
         readable_id=False),
    Kind("trace NaN", _set(trace=[[0, float("nan"), 2.0]])),
    # -- photos (stage 0) --------------------------------------------------------------------
    Kind("image missing", _set(image=...), stages="photo"),
    Kind("image string", _set(image="jpeg"), stages="photo"),
    Kind("image empty", _set(image=b""), stages="photo"),
    Kind("image is a GIF", _set(image=b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"), stages="photo"),
    Kind("image random bytes", _set(image=bytes(range(256)) * 8), stages="photo"),
    Kind("image truncated", _set(image=lambda t: t.photo[: len(t.photo) // 2]), stages="photo"),
    Kind("pixel bomb", _set(image=pixel_bomb()), stages="photo"),
    Kind("tensor at stage 0", _set(image=..., tensor={"dtype": "uint8", "shape": [1], "scale": 0.0,
                                            "zero_point": 0, "data": b"\x00"}),
         stages="photo"),
    # -- tensors (stages 1..N-1) ---------------------------------------------------------------
    Kind("image at a tensor stage", _set(tensor=..., image=b"\xff\xd8\xff"), stages="tensor"),
    Kind("tensor missing", _set(tensor=...), stages="tensor"),
    Kind("tensor string", _set(tensor="raw"), stages="tensor"),
    Kind("dtype wrong", _tensor(dtype=lambda t, _x: _other_dtype(t)), stages="tensor"),
    Kind("dtype missing", _tensor(dtype=...), stages="tensor"),
    Kind("dtype int", _tensor(dtype=8), stages="tensor"),
    Kind("shape wrong", _tensor(shape=[1, 3]), stages="tensor"),
    Kind("shape string", _tensor(shape="1x3"), stages="tensor"),
    Kind("shape huge", _tensor(shape=[2**31, 2**31, 2**31]), stages="tensor"),
    Kind("scale wrong", _tensor(scale=lambda _t, x: x["scale"] * 2 + 0.5), stages="tensor"),
    Kind("scale NaN", _tensor(scale=float("nan")), stages="tensor"),
    Kind("zero_point wrong", _tensor(zero_point=lambda _t, x: x["zero_point"] + 1),
         stages="tensor"),
    Kind("zero_point float", _tensor(zero_point=0.5), stages="tensor"),
    Kind("data short", _tensor(data=lambda _t, x: x["data"][:-1]), stages="tensor"),
    Kind("data long", _tensor(data=lambda _t, x: x["data"] + b"\x00"), stages="tensor"),
    Kind("data string", _tensor(data="zeros"), stages="tensor"),
    Kind("data missing", _tensor(data=...), stages="tensor"),
    # -- non-finite activations (float stages) --------------------------------------------------
    Kind("NaN activation", _non_finite(float("nan")), stages="float"),
    Kind("infinite activation", _non_finite(float("inf")), stages="float"),
)


def targets(manifest: Manifest, photo: bytes, max_message_bytes: int,
            huge: int) -> list[Target]:
    """Every stage of a pipeline, with the limits the storm's stages run with."""
    return [
        Target(index, None if index == 0 else stage.input, photo, max_message_bytes, huge,
               bomb_maps=max_message_bytes - 16)
        for index, stage in enumerate(manifest.stages)
    ]


def plan(stages: list[Target], total: int, heavy_repeats: int) -> list[tuple[Kind, Target]]:
    """At least `total` (kind, stage) pairs: every applicable pair at least once, heavy pairs
    `heavy_repeats` times, the light ones round-robin for the rest, interleaved."""
    light = [(k, t) for t in stages for k in KINDS if k.applies(t) and not k.heavy]
    heavy = [(k, t) for t in stages for k in KINDS if k.applies(t) and k.heavy]
    rest = max(total - heavy_repeats * len(heavy), len(light))
    pairs = [light[i % len(light)] for i in range(rest)]
    step = max(1, len(pairs) // max(1, heavy_repeats * len(heavy)))
    for n, pair in enumerate(heavy * heavy_repeats):
        pairs.insert(min(len(pairs), (n + 1) * step), pair)
    return pairs


def messages(pairs: list[tuple[Kind, Target]]) -> Iterator[Message]:
    """The payloads, built one at a time (thousands of photo-sized messages do not fit)."""
    for n, (kind, target) in enumerate(pairs):
        frame_id = f"storm:{target.stage}:{n}"
        yield Message(target.stage, kind.name, frame_id if kind.readable_id else None,
                      kind.build(target, frame_id))


def kind_count(stages: list[Target]) -> int:
    return sum(1 for k in KINDS if any(k.applies(t) for t in stages))


def kind(name: str) -> Kind:
    """The kind of that name (the defect scenarios send single kinds)."""
    return next(k for k in KINDS if k.name == name)
