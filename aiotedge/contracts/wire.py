"""The wire format: one msgpack map per frame, as it travels between nodes.

A frame carries either a photo (camera -> stage 0) or an activation tensor (stage k -> k+1;
also camera -> stage 0 when the camera preprocesses), plus the identity and timing a downstream
node needs. Every field is checked on the way in:
the payload comes from the network, so anything that is not exactly what this stage expects
is refused with a `WireError` whose message says why. docs/wire.md documents the format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import numpy as np

from aiotedge.contracts.codec import check_codec, compress, decompress
from aiotedge.contracts.errors import WireError
from aiotedge.contracts.geometry import View
from aiotedge.contracts.tensors import WIRE_DTYPES, TensorSpec

WIRE_VERSION = 1
MAX_ID_LENGTH = 128
#: a frame's name (the photo's file name, the stream it came from) is at most this long
MAX_NAME_LENGTH = MAX_ID_LENGTH
MAX_TRACE_HOPS = 64
#: timestamps are Unix seconds; beyond this (year 5138) a sender is broken, and latencies
#: computed from it would not even be valid JSON numbers
MAX_TIMESTAMP = 1e11
#: how much of a value from the network a refusal quotes: the sender chooses how large it is,
#: and the reason travels in an error event and a log line
MAX_QUOTE_LENGTH = 80

_LENGTH_UNITS: dict[type, str] = {str: "characters", bytes: "bytes", list: "items", dict: "entries"}

_MESSAGE_FIELDS = frozenset(
    {"version", "frame_id", "source", "seq", "attempt", "captured_at", "name", "view", "trace",
     "image", "tensor"}
)
#: a camera sends a frame again when its result is overdue; more than this is a broken sender
MAX_ATTEMPTS = 100
_TENSOR_FIELDS = frozenset({"dtype", "shape", "scale", "zero_point", "codec", "data"})
#: msgpack applies each limit to every container and string at every depth, so each is what the
#: largest one of a valid frame needs: `trace` is the longest array, the message (9 fields and
#: `image` or `tensor`) the largest map, an id or a name the longest string (128 characters of
#: up to 4 bytes in UTF-8); no field is an extension type. Nothing is allocated for a longer one.
_UNPACK_LIMITS = {
    "max_array_len": MAX_TRACE_HOPS,
    "max_map_len": len(_MESSAGE_FIELDS) - 1,
    "max_str_len": 4 * MAX_ID_LENGTH,
    "max_ext_len": 0,
}
#: the arrays and maps of a valid frame: the message, `view`, `trace` and its entries, `tensor`
#: and its `shape`. The length limits bound each container, not how many a message nests: 8 MB of
#: empty maps in arrays of 64 would still be 8 million dicts.
MAX_CONTAINERS = MAX_TRACE_HOPS + 5
#: a dtype's name as the wire writes it (numpy works `dtype.name` out anew on every call)
_DTYPE_NAMES = {np.dtype(name): name for name in WIRE_DTYPES}


@dataclass(frozen=True)
class Hop:
    """When a stage received a frame and when it was done with it (Unix seconds)."""

    stage: int
    received: float
    done: float


@dataclass
class Frame:
    """One camera frame on its way through the pipeline."""

    frame_id: str
    source: str
    seq: int
    captured_at: float
    #: 1, then 2, 3... when the camera sends the frame again for want of a result: stages
    #: drop a repeat of the same attempt (a redelivery) but work on a new one
    attempt: int = 1
    image: bytes | None = None
    #: which picture: the photo's file name, or the stream it came from (None: not said)
    name: str | None = None
    #: where the sent picture lies in the camera's frame (crop, turn, mirror); None: not said
    view: View | None = None
    tensor: np.ndarray | None = None
    scale: float = 0.0
    zero_point: int = 0
    trace: list[Hop] = field(default_factory=list)

    def with_tensor(self, tensor: np.ndarray, spec: TensorSpec, hop: Hop) -> Frame:
        """The same frame carrying the next activation, one hop longer."""
        return replace(
            self,
            image=None,
            tensor=tensor,
            scale=spec.scale,
            zero_point=spec.zero_point,
            trace=[*self.trace, hop],
        )


def encode_frame(frame: Frame, codec: str | None = None) -> bytes:
    """The frame as msgpack; a tensor's data in `codec` (contracts.codec) when one is given."""
    message: dict[str, Any] = {
        "version": WIRE_VERSION,
        "frame_id": frame.frame_id,
        "source": frame.source,
        "seq": frame.seq,
        "attempt": frame.attempt,
        "captured_at": frame.captured_at,
        "trace": [[hop.stage, hop.received, hop.done] for hop in frame.trace],
    }
    if frame.name is not None:
        message["name"] = frame.name
    if frame.view is not None:
        message["view"] = frame.view.to_wire()
    if frame.image is not None:
        message["image"] = frame.image
    elif frame.tensor is not None:
        tensor = np.ascontiguousarray(frame.tensor)
        data = tensor.reshape(-1).view(np.uint8).data
        message["tensor"] = {
            "dtype": _DTYPE_NAMES.get(tensor.dtype) or tensor.dtype.name,
            "shape": list(tensor.shape),
            "scale": frame.scale,
            "zero_point": frame.zero_point,
        }
        if codec is not None:
            message["tensor"]["codec"] = codec
            data = compress(codec, data)
        message["tensor"]["data"] = data
    else:
        raise ValueError(f"frame {frame.frame_id} has neither an image nor a tensor")
    return msgpack.packb(message, use_bin_type=True)


def decode_photo(payload: bytes, tensor: TensorSpec | None = None) -> Frame:
    """A camera's frame, for stage 0: an image (checked by the stage itself) or, when the stage
    gives its input spec as `tensor`, the input tensor a camera preprocessed, matching it."""
    return _decode(payload, tensor, photo=True)


def decode_activation(payload: bytes, spec: TensorSpec) -> Frame:
    """A frame for a later stage: its tensor's dtype, shape, quantization and byte count must
    match the stage's input `spec` exactly."""
    return _decode(payload, spec, photo=False)


def _decode(payload: bytes, expected: TensorSpec | None, photo: bool) -> Frame:
    """Parse and validate a message; `expected` is the tensor it may carry (none: a photo)."""
    message = _unpack(payload)
    frame_id = message.get("frame_id")
    try:
        return _parse(message, expected, photo)
    except WireError as exc:
        raise WireError(exc.reason, frame_id if _is_id(frame_id) else None) from None


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


def _quote(value: Any) -> str:
    """repr(value), cut to MAX_QUOTE_LENGTH characters and then followed by the value's length."""
    text = _repr_head(value, MAX_QUOTE_LENGTH + 1)
    if len(text) <= MAX_QUOTE_LENGTH:
        return text
    unit = _LENGTH_UNITS.get(type(value))
    length = f" ({len(value)} {unit})" if unit else ""
    return f"{text[:MAX_QUOTE_LENGTH - 3]}...{length}"


def _repr_head(value: Any, length: int) -> str:
    """repr(value) if it is shorter than `length`, else a text at least `length` long that
    starts like it: a large value is never rendered whole."""
    if isinstance(value, (str, bytes)):
        return repr(value[:length])
    if not isinstance(value, (list, dict)):
        return repr(value)
    is_dict = isinstance(value, dict)
    text = "{" if is_dict else "["
    for item in value.items() if is_dict else value:
        if len(text) >= length:
            return text
        if len(text) > 1:
            text += ", "
        if is_dict:
            text += _repr_head(item[0], length - len(text))
            text += ": " + _repr_head(item[1], length - len(text))
        else:
            text += _repr_head(item, length - len(text))
    return text + ("}" if is_dict else "]")


class _TooManyContainersError(Exception):
    pass


class _ContainerBudget:
    """Stops msgpack once it has built MAX_CONTAINERS arrays and maps (it calls `take` with
    each one it completes), before a message of many small ones can take much memory."""

    def __init__(self) -> None:
        self.left = MAX_CONTAINERS

    def take(self, container: Any) -> Any:
        self.left -= 1
        if self.left < 0:
            raise _TooManyContainersError
        return container


def _unpack(payload: bytes) -> dict[str, Any]:
    if not payload:
        raise WireError("empty message")
    budget = _ContainerBudget()
    try:
        message = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_bin_len=len(payload),
            list_hook=budget.take,
            object_hook=budget.take,
            **_UNPACK_LIMITS,
        )
    except _TooManyContainersError:
        raise WireError(f"more than {MAX_CONTAINERS} arrays and maps in the message") from None
    except msgpack.ExtraData:
        raise WireError("trailing bytes after the msgpack map") from None
    except msgpack.StackError:
        raise WireError("arrays and maps nested too deeply") from None
    except (ValueError, msgpack.UnpackException) as exc:
        # msgpack reports a cut-off message as "incomplete input", a limit as "N exceeds max_..."
        if "incomplete" in str(exc):
            raise WireError("truncated message") from None
        if "exceeds max_" in str(exc):
            raise WireError(f"larger than the wire format allows: {exc}") from None
        raise WireError(f"not msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict):
        raise WireError(f"expected a msgpack map, got {type(message).__name__}")
    return message


def _field(message: dict[str, Any], name: str, types: type | tuple[type, ...]) -> Any:
    if name not in message:
        raise WireError(f"missing field {name!r}")
    value = message[name]
    # bool is an int in Python; no field of the format is a bool
    if isinstance(value, bool) or not isinstance(value, types):
        allowed = types if isinstance(types, tuple) else (types,)
        expected = "/".join(t.__name__ for t in allowed)
        raise WireError(f"field {name!r} must be {expected}, got {type(value).__name__}")
    return value


def _refuse_unknown_fields(fields: dict[Any, Any], known: frozenset[str], where: str) -> None:
    """A field this node does not know would be dropped on the way to the next stage."""
    for name in fields:
        if name not in known:
            raise WireError(f"unknown field {_quote(name)} in {where}")


def _parse(message: dict[str, Any], expected: TensorSpec | None, photo: bool) -> Frame:
    version = message.get("version")
    if type(version) is not int or version != WIRE_VERSION:
        raise WireError(
            f"unsupported wire version {_quote(version)} (this node speaks {WIRE_VERSION})"
        )
    _refuse_unknown_fields(message, _MESSAGE_FIELDS, "the message")
    frame_id = _field(message, "frame_id", str)
    source = _field(message, "source", str)
    for name, value in (("frame_id", frame_id), ("source", source)):
        if not _is_id(value):
            raise WireError(f"field {name!r} must be 1 to {MAX_ID_LENGTH} characters")
    seq = _field(message, "seq", int)
    if seq < 0:
        raise WireError("field 'seq' must not be negative")
    attempt = _field(message, "attempt", int) if "attempt" in message else 1
    if not 1 <= attempt <= MAX_ATTEMPTS:
        raise WireError(f"field 'attempt' must be 1 to {MAX_ATTEMPTS}")
    captured_at = float(_field(message, "captured_at", (int, float)))
    if not _is_timestamp(captured_at):
        raise WireError("field 'captured_at' must be a timestamp in Unix seconds")
    name = _field(message, "name", str) if "name" in message else None
    if name is not None and not 0 < len(name) <= MAX_NAME_LENGTH:
        raise WireError(f"field 'name' must be 1 to {MAX_NAME_LENGTH} characters")
    view = _parse_view(_field(message, "view", list)) if "view" in message else None
    frame = Frame(
        frame_id=frame_id,
        source=source,
        seq=seq,
        captured_at=captured_at,
        attempt=attempt,
        name=name,
        view=view,
        trace=_parse_trace(_field(message, "trace", list)),
    )
    if photo and expected is not None and "tensor" in message and "image" in message:
        raise WireError("the message carries both an image and a tensor")
    if photo and (expected is None or "tensor" not in message):
        frame.image = _parse_image(message)
    else:
        assert expected is not None
        frame.tensor = _parse_tensor(message, expected)
        frame.scale, frame.zero_point = expected.scale, expected.zero_point
    return frame


def _is_timestamp(value: float) -> bool:
    return math.isfinite(value) and abs(value) < MAX_TIMESTAMP


def _parse_view(values: list[Any]) -> View:
    try:
        return View.from_wire(values)
    except ValueError as exc:
        raise WireError(f"field 'view' {_quote(values)}: {exc}") from None


def _parse_trace(trace: list[Any]) -> list[Hop]:
    hops = []
    for entry in trace:
        if not (isinstance(entry, list) and len(entry) == 3 and type(entry[0]) is int
                and entry[0] >= 0 and _is_time_value(entry[1]) and _is_time_value(entry[2])):
            raise WireError(f"trace entry {_quote(entry)} is not [stage, received, done]")
        hops.append(Hop(entry[0], float(entry[1]), float(entry[2])))
    return hops


def _is_time_value(value: Any) -> bool:
    return type(value) in (int, float) and _is_timestamp(value)


def _parse_image(message: dict[str, Any]) -> bytes:
    if "tensor" in message:
        raise WireError("this stage takes photos ('image'), the message carries a tensor")
    image = _field(message, "image", bytes)
    if not image:
        raise WireError("field 'image' is empty")
    return image


def _parse_tensor(message: dict[str, Any], expected: TensorSpec) -> np.ndarray:
    if "image" in message:
        raise WireError("this stage takes a tensor, the message carries an image")
    tensor = _field(message, "tensor", dict)
    _refuse_unknown_fields(tensor, _TENSOR_FIELDS, "the tensor")
    dtype = _field(tensor, "dtype", str)
    if dtype != expected.dtype:
        raise WireError(
            f"tensor dtype {_quote(dtype)} does not match the stage input {expected.dtype!r}"
        )
    shape = _field(tensor, "shape", list)
    # 1.0 and True compare equal to 1: the type is checked on its own
    if not all(type(dimension) is int for dimension in shape):
        raise WireError(f"tensor shape {_quote(shape)} must be a list of int")
    if tuple(shape) != expected.shape:
        raise WireError(
            f"tensor shape {_quote(shape)} does not match the stage input {list(expected.shape)}"
        )
    scale = float(_field(tensor, "scale", (int, float)))
    zero_point = _field(tensor, "zero_point", int)
    if (scale, zero_point) != (expected.scale, expected.zero_point):
        raise WireError(
            f"tensor quantization (scale {scale}, zero point {zero_point}) does not match the "
            f"stage input (scale {expected.scale}, zero point {expected.zero_point}): "
            "were the stages split from different models?"
        )
    data = _field(tensor, "data", bytes)
    if "codec" in tensor:  # never guessed: only a header naming a codec makes data compressed
        data = decompress(check_codec(_field(tensor, "codec", str)), data, expected.nbytes)
    if len(data) != expected.nbytes:
        raise WireError(
            f"tensor data has {len(data)} bytes, the stage input needs {expected.nbytes}"
        )
    values = np.frombuffer(data, dtype=dtype).reshape(expected.shape)
    # a non-finite activation only spreads: the prediction's scores would be NaN, not JSON
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise WireError("tensor data holds NaN or infinite values")
    return values
