"""Hypothesis strategies for the wire format: valid frames, and what a broken or hostile sender
may publish instead. tests/test_wire_fuzz.py uses them; so can a longer reliability run.

`FUZZ_PROFILE` keeps `make test` quick; AIOTEDGE_FUZZ_EXAMPLES=20000 asks for a long run.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aiotedge.contracts.tensors import WIRE_DTYPES, TensorSpec
from aiotedge.contracts.wire import (
    MAX_ID_LENGTH,
    MAX_TIMESTAMP,
    MAX_TRACE_HOPS,
    Frame,
    Hop,
    decode_activation,
    decode_photo,
    encode_frame,
)

FUZZ_PROFILE = "aiotedge-wire-fuzz"
FUZZ_EXAMPLES_VARIABLE = "AIOTEDGE_FUZZ_EXAMPLES"
# deadline: no timing threshold on a shared machine; database: nothing written into the
# checkout, a failure prints the blob that reproduces it instead
settings.register_profile(
    FUZZ_PROFILE,
    max_examples=int(os.environ.get(FUZZ_EXAMPLES_VARIABLE, "100")),
    deadline=None,
    database=None,
    print_blob=True,
)

#: the longest reason the decoder gives: a template with a few quoted values and numbers
REASON_LIMIT = 300

UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)
#: values at the edges of what each field accepts, and of what msgpack can carry
EDGE_VALUES: list[Any] = [
    0, 1, -1, 7, 2**63 - 1, UINT64_MAX, INT64_MIN,
    0.0, -0.0, 1.0, 7.0, 1e300, -1e300, MAX_TIMESTAMP, -MAX_TIMESTAMP,
    float("nan"), float("inf"), float("-inf"),
    True, False, None,
    "", "\x00", "\U0001f4f7" * MAX_ID_LENGTH, "\u00e9" * (MAX_ID_LENGTH + 1),
    "x" * (4 * MAX_ID_LENGTH + 1),
    b"", b"\x00",
    msgpack.ExtType(1, b""), msgpack.Timestamp(0),
]
FIELD_NAMES = [
    "version", "frame_id", "source", "seq", "captured_at", "trace", "image", "tensor",
    "dtype", "shape", "scale", "zero_point", "data",
]


def msgpack_values() -> st.SearchStrategy[Any]:
    """Any value msgpack carries, nested a little."""
    scalars = st.one_of(
        st.sampled_from(EDGE_VALUES),
        st.none(),
        st.booleans(),
        st.integers(INT64_MIN, UINT64_MAX),
        st.floats(),
        st.text(max_size=20),
        st.binary(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), children,
                            max_size=4),
            st.dictionaries(st.integers(-3, 3), children, min_size=1, max_size=2),
        ),
        max_leaves=12,
    )


def replacements() -> st.SearchStrategy[Any]:
    """A value for a mutated field: an edge value as often as any other msgpack value."""
    return st.sampled_from(EDGE_VALUES) | msgpack_values()


def ids() -> st.SearchStrategy[str]:
    """A frame or camera id: any 1 to MAX_ID_LENGTH unicode characters."""
    return st.text(min_size=1, max_size=MAX_ID_LENGTH)


def timestamps() -> st.SearchStrategy[float]:
    return st.floats(-MAX_TIMESTAMP, MAX_TIMESTAMP, exclude_min=True, exclude_max=True)


def hops() -> st.SearchStrategy[Hop]:
    return st.builds(Hop, st.integers(0, UINT64_MAX), timestamps(), timestamps())


@st.composite
def tensor_specs(draw: st.DrawFn) -> TensorSpec:
    """A stage input: any supported dtype, a small shape, quantized or not."""
    dtype = draw(st.sampled_from(sorted(WIRE_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    if np.dtype(dtype).kind == "f" or draw(st.booleans()):
        return TensorSpec("input", shape, dtype)
    limits = np.iinfo(dtype)
    scale = draw(st.floats(1e-6, 1e3))
    return TensorSpec("input", shape, dtype, scale, draw(st.integers(limits.min, limits.max)))


def tensors(spec: TensorSpec) -> st.SearchStrategy[np.ndarray]:
    """Values of a tensor of `spec`; finite ones for a float tensor, as the format requires."""
    finite = {"allow_nan": False, "allow_infinity": False}
    elements = finite if np.dtype(spec.dtype).kind == "f" else None
    return hnp.arrays(np.dtype(spec.dtype), spec.shape, elements=elements)


def frames(spec: TensorSpec | None) -> st.SearchStrategy[Frame]:
    """A valid frame for a stage whose input is `spec` (None: stage 0, a photo)."""
    header = {
        "frame_id": ids(),
        "source": ids(),
        "seq": st.integers(0, UINT64_MAX),
        "captured_at": timestamps(),
        "trace": st.lists(hops(), max_size=MAX_TRACE_HOPS),
    }
    if spec is None:
        return st.builds(Frame, image=st.binary(min_size=1, max_size=64), **header)
    return st.builds(
        Frame,
        tensor=tensors(spec),
        scale=st.just(spec.scale),
        zero_point=st.just(spec.zero_point),
        **header,
    )


def stage_inputs() -> st.SearchStrategy[tuple[TensorSpec | None, Frame]]:
    """A stage's input spec (None: stage 0) and a valid frame for that stage."""
    specs = st.none() | tensor_specs()
    return specs.flatmap(lambda spec: st.tuples(st.just(spec), frames(spec)))


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _containers(value: dict[Any, Any] | list[Any], path: tuple[str, ...] = ()) -> dict[
    tuple[str, ...], list[dict[Any, Any] | list[Any]]
]:
    """Every map and array of a decoded message by its path ("trace/*": every trace entry),
    so that a mutation picks the message, the trace, an entry, the tensor or the shape alike
    however long the trace is."""
    found = {path: [value]}
    children = value.items() if isinstance(value, dict) else (("*", item) for item in value)
    for key, child in children:
        if isinstance(child, (dict, list)):
            for child_path, containers in _containers(child, (*path, repr(key))).items():
                found.setdefault(child_path, []).extend(containers)
    return found


def _retyped(value: Any) -> Any:
    """The same value as another msgpack type: 7 -> 7.0, 7.0 -> 7 (if msgpack can carry it),
    "a" -> b"a", x -> [x]."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float) and value.is_integer() and INT64_MIN <= value < 2**64:
        return int(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return [value]


@st.composite
def mutated_messages(draw: st.DrawFn) -> tuple[TensorSpec | None, dict[str, Any]]:
    """A valid frame's msgpack map, for its own stage, after one to three structural changes:
    a value replaced, retyped, wrapped, removed or its bytes scrambled, or a key added."""
    spec, frame = draw(stage_inputs())
    message = msgpack.unpackb(encode_frame(frame), raw=False)
    for _ in range(draw(st.integers(1, 3))):
        containers = _containers(message)
        container = draw(st.sampled_from(containers[draw(st.sampled_from(sorted(containers)))]))
        action = draw(st.sampled_from(["replace", "retype", "wrap", "remove", "scramble", "add"]))
        if action == "add" or not container:
            if isinstance(container, dict):
                container[draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=8))] = draw(
                    replacements()
                )
            else:
                container.append(draw(replacements()))
            continue
        keys = list(container) if isinstance(container, dict) else list(range(len(container)))
        key = draw(st.sampled_from(keys))
        value = container[key]
        if action == "remove":
            del container[key]
        elif action == "replace":
            container[key] = draw(replacements())
        elif action == "retype":
            container[key] = _retyped(value)
        elif action == "wrap":
            container[key] = draw(st.sampled_from([[value], {"value": value}]))
        elif isinstance(value, bytes):  # scramble: same length, other bytes
            container[key] = draw(st.binary(min_size=len(value), max_size=len(value)))
    return spec, message


@st.composite
def corrupted_payloads(draw: st.DrawFn) -> tuple[TensorSpec | None, bytes]:
    """A valid frame's bytes, for its own stage, with a few bytes flipped, inserted or deleted,
    or cut short."""
    spec, frame = draw(stage_inputs())
    payload = bytearray(encode_frame(frame))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(payload) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if action == "flip":
            payload[position] ^= draw(st.integers(1, 255))
        elif action == "insert":
            payload[position:position] = draw(st.binary(min_size=1, max_size=9))
        elif action == "delete":
            del payload[position:position + draw(st.integers(1, 9))]
        else:
            del payload[position:]
        if not payload:
            break
    return spec, bytes(payload)


def received_payloads() -> st.SearchStrategy[tuple[TensorSpec | None, bytes]]:
    """What may arrive on a stage's topic, with that stage's input spec: noise, any msgpack
    value, a mutated frame, a corrupted frame."""
    any_spec = st.none() | tensor_specs()
    mutated = mutated_messages().map(lambda case: (case[0], pack(case[1])))
    return st.one_of(
        st.tuples(any_spec, st.binary(max_size=256)),
        st.tuples(any_spec, msgpack_values().map(pack)),
        mutated,
        corrupted_payloads(),
    )


def decode(payload: bytes, spec: TensorSpec | None) -> Frame:
    """What a stage's decoder makes of a payload: stage 0's (spec None) takes photos, a later
    stage's an activation of `spec`."""
    return decode_photo(payload) if spec is None else decode_activation(payload, spec)
