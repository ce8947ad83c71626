"""The wire format: round trips, and every malformed message refused with a clear reason."""

from __future__ import annotations

import json
import tracemalloc

import msgpack
import numpy as np
import pytest

from aiotedge.contracts.errors import WireError
from aiotedge.contracts.events import Prediction, Score, build_prediction
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.wire import (
    MAX_CONTAINERS,
    MAX_ID_LENGTH,
    MAX_TRACE_HOPS,
    WIRE_VERSION,
    Frame,
    Hop,
    decode_activation,
    decode_photo,
    encode_frame,
)
from tests.wire_strategies import REASON_LIMIT

SPEC = TensorSpec("act", (1, 7, 7, 16), "uint8", scale=0.0235, zero_point=3)


def tensor_frame() -> Frame:
    rng = np.random.default_rng(0)
    tensor = rng.integers(0, 256, SPEC.shape, dtype=np.uint8)
    return Frame(
        frame_id="cam0-ab12-7",
        source="cam0",
        seq=7,
        captured_at=1700000000.25,
        tensor=tensor,
        scale=SPEC.scale,
        zero_point=SPEC.zero_point,
        trace=[Hop(0, 1700000000.5, 1700000000.75)],
    )


def message(**changes) -> bytes:
    """A valid tensor message with some fields replaced (None removes a field)."""
    data = msgpack.unpackb(encode_frame(tensor_frame()), raw=False)
    for key, value in changes.items():
        target = data["tensor"] if key.startswith("tensor_") else data
        name = key.removeprefix("tensor_")
        if value is None:
            del target[name]
        else:
            target[name] = value
    return msgpack.packb(data, use_bin_type=True)


def test_tensor_round_trip_keeps_everything():
    frame = tensor_frame()
    decoded = decode_activation(encode_frame(frame), SPEC)
    assert decoded.frame_id == frame.frame_id
    assert (decoded.source, decoded.seq, decoded.captured_at) == ("cam0", 7, 1700000000.25)
    assert decoded.trace == frame.trace
    assert decoded.tensor.dtype == np.uint8
    np.testing.assert_array_equal(decoded.tensor, frame.tensor)
    assert (decoded.scale, decoded.zero_point) == (SPEC.scale, SPEC.zero_point)


def test_float_tensor_round_trip_is_exact():
    spec = TensorSpec("f", (1, 3, 5), "float32")
    values = np.random.default_rng(1).standard_normal(spec.shape).astype(np.float32)
    frame = Frame("f-1", "cam", 1, 1.0, tensor=values)
    np.testing.assert_array_equal(decode_activation(encode_frame(frame), spec).tensor, values)


def test_image_round_trip():
    frame = Frame("cam1-x-0", "cam1", 0, 5.0, image=b"\xff\xd8\xff\xe0jpeg bytes")
    decoded = decode_photo(encode_frame(frame))
    assert decoded.image == frame.image
    assert decoded.tensor is None


def test_with_tensor_appends_a_hop():
    frame = tensor_frame()
    nxt = frame.with_tensor(np.zeros((1, 4), np.int8), TensorSpec("o", (1, 4), "int8", 0.5, -1),
                            Hop(1, 2.0, 3.0))
    assert [hop.stage for hop in nxt.trace] == [0, 1]
    assert (nxt.scale, nxt.zero_point) == (0.5, -1)
    assert frame.trace == [Hop(0, 1700000000.5, 1700000000.75)]


def test_activation_travels_as_one_byte_per_value():
    assert len(encode_frame(tensor_frame())) < SPEC.nbytes + 200


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty message"),
        (b"\xc1", "not msgpack"),
        (b"hello, I am not msgpack at all", "trailing bytes"),
        (message()[:-10], "truncated"),
        (message() + b"\x00", "trailing bytes"),
        (msgpack.packb([1, 2, 3]), "expected a msgpack map, got list"),
        (msgpack.packb({1: 2}), "not msgpack"),
        (message(version=None), "unsupported wire version None"),
        (message(version=WIRE_VERSION + 1), f"unsupported wire version {WIRE_VERSION + 1}"),
        (message(frame_id=None), "missing field 'frame_id'"),
        (message(frame_id=17), "field 'frame_id' must be str, got int"),
        (message(frame_id=""), "'frame_id' must be 1 to 128 characters"),
        (message(source="x" * 129), "'source' must be 1 to 128 characters"),
        (message(seq="7"), "field 'seq' must be int, got str"),
        (message(seq=True), "field 'seq' must be int, got bool"),
        (message(seq=-1), "'seq' must not be negative"),
        (message(captured_at="now"), "field 'captured_at' must be int/float, got str"),
        (message(captured_at=float("nan")), "timestamp in Unix seconds"),
        (message(captured_at=-1.7e308), "timestamp in Unix seconds"),
        (message(trace=[[0, 1.0, 1e300]]), "is not [stage, received, done]"),
        (message(version=True), "unsupported wire version True"),
        (message(trace=None), "missing field 'trace'"),
        (message(trace=[[0, 1.0]]), "is not [stage, received, done]"),
        (message(trace=[[0, 1.0, 2.0]] * 65), "65 exceeds max_array_len(64)"),
        (message(tensor_shape=[1] * 65), "65 exceeds max_array_len(64)"),
        (message(frame_id="f" * 513), "513 exceeds max_str_len(512)"),
        (message(unknown=1, name="n", view=[8, 8, 0, 0, 8, 8, 0, 0]), "11 exceeds max_map_len(10)"),
        (message(name=""), "field 'name' must be 1 to 128 characters"),
        (message(name="n" * 129), "field 'name' must be 1 to 128 characters"),
        (message(name=7), "field 'name' must be str, got int"),
        (message(attempt=0), "field 'attempt' must be 1 to 100"),
        (message(attempt=2.0), "field 'attempt' must be int, got float"),
        (message(tensor_unknown=1), "unknown field 'unknown' in the tensor"),
        (message(tensor=None, colour=1), "unknown field 'colour' in the message"),
        (message(seq=msgpack.ExtType(1, b"\x07")), "exceeds max_ext_len(0)"),
        (b"\x91" * 2000 + b"\xc0", "arrays and maps nested too deeply"),
        (message(tensor=None), "missing field 'tensor'"),
        (message(tensor="raw"), "field 'tensor' must be dict, got str"),
        (message(tensor=None, image=b"\xff\xd8"), "carries an image"),
        (message(tensor_dtype="float32"), "dtype 'float32' does not match the stage input 'uint8'"),
        (message(tensor_dtype=None), "missing field 'dtype'"),
        (message(tensor_shape=[1, 7, 7, 8]), "shape [1, 7, 7, 8] does not match"),
        (message(tensor_shape="1x7x7x16"), "field 'shape' must be list, got str"),
        (message(tensor_scale=0.5), "quantization (scale 0.5, zero point 3) does not match"),
        (message(tensor_zero_point=0), "were the stages split from different models?"),
        (message(tensor_data=b"\x00" * 100), "has 100 bytes, the stage input needs 784"),
        (message(tensor_data="text"), "field 'data' must be bytes, got str"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(payload: bytes, reason: str):
    with pytest.raises(WireError) as caught:
        decode_activation(payload, SPEC)
    assert reason in caught.value.reason


def test_refusal_names_the_frame_when_the_header_was_readable():
    with pytest.raises(WireError) as caught:
        decode_activation(message(tensor_shape=[2]), SPEC)
    assert caught.value.frame_id == "cam0-ab12-7"


def test_a_name_travels_to_the_prediction_and_is_optional():
    named = Frame("cam1-x-0", "cam1", 0, 5.0, image=b"\xff\xd8", name="door.jpg")
    decoded = decode_photo(encode_frame(named))
    assert decoded.name == "door.jpg"
    assert "name" not in msgpack.unpackb(encode_frame(tensor_frame()))  # not said: not sent
    after_stage0 = decoded.with_tensor(tensor_frame().tensor, SPEC, Hop(0, 5.5, 6.0))
    assert decode_activation(encode_frame(after_stage0), SPEC).name == "door.jpg"
    prediction = build_prediction(after_stage0, [Score(1, "door", 0.9)], Hop(1, 6.5, 7.0))
    assert Prediction.from_json(prediction.to_json()).name == "door.jpg"
    unnamed = build_prediction(tensor_frame(), [], Hop(1, 6.5, 7.0))
    assert json.loads(unnamed.to_json())["name"] is None


def test_stage_zero_takes_a_preprocessed_tensor_when_given_its_input_spec():
    decoded = decode_photo(message(), SPEC)
    np.testing.assert_array_equal(decoded.tensor, tensor_frame().tensor)
    assert decoded.image is None
    with pytest.raises(WireError, match="does not match the stage input"):
        decode_photo(message(tensor_shape=[1, 7, 7, 8]), SPEC)
    with pytest.raises(WireError, match="both an image and a tensor"):
        decode_photo(message(image=b"\xff\xd8"), SPEC)
    assert decode_photo(encode_frame(Frame("a", "b", 0, 0.0, image=b"\xff")), SPEC).image


def test_stage_zero_refuses_tensors_and_empty_images():
    with pytest.raises(WireError, match="takes photos"):
        decode_photo(message())
    empty = Frame("a", "b", 0, 0.0, image=b"")
    with pytest.raises(WireError, match="'image' is empty"):
        decode_photo(encode_frame(empty))


HUGE = 7 * 1024 * 1024


@pytest.mark.parametrize(
    ("make_payload", "original_length"),
    [
        pytest.param(lambda: message(version=b"v" * HUGE), f"{HUGE} bytes", id="bin version"),
        pytest.param(lambda: message(trace=[[0, 1.0, b"t" * HUGE]]), "3 items", id="bin in trace"),
        pytest.param(lambda: message(trace=[["s" * 200, 1.0, 2.0]]), "3 items", id="str in trace"),
        pytest.param(lambda: message(tensor_dtype="f" * 400), "400 characters", id="dtype"),
    ],
)
def test_a_huge_value_is_quoted_short_with_its_length(make_payload, original_length: str):
    with pytest.raises(WireError) as caught:
        decode_activation(make_payload(), SPEC)
    assert len(caught.value.reason) <= REASON_LIMIT
    assert f"({original_length})" in caught.value.reason
    assert caught.value.frame_id == "cam0-ab12-7"


def test_a_huge_string_is_refused_with_a_short_reason():
    with pytest.raises(WireError) as caught:
        decode_activation(message(version="v" * HUGE), SPEC)
    assert len(caught.value.reason) <= REASON_LIMIT


@pytest.mark.parametrize(
    "frame_id", ["f" * 1024 * 1024, "f" * (MAX_ID_LENGTH + 1), "", b"cam0-ab12-7", 17]
)
def test_a_refusal_names_the_frame_only_by_a_valid_id(frame_id):
    with pytest.raises(WireError) as caught:
        decode_activation(message(frame_id=frame_id), SPEC)
    assert len(caught.value.reason) <= REASON_LIMIT
    assert caught.value.frame_id is None


def array_header(length: int) -> bytes:
    return b"\xdd" + length.to_bytes(4, "big")


def flat_bomb() -> bytes:
    """7.9 MB: one array of 7.9 million empty maps (measured: 624 MB in a stage)."""
    return array_header(7_900_000) + b"\x80" * 7_900_000


def nested_bomb() -> bytes:
    """8.2 MB of empty maps in arrays of 64: no container is long, there are just many."""
    arrays_of_maps = array_header(64) + (array_header(64) + b"\x80" * 64) * 64
    return array_header(29) + (array_header(64) + arrays_of_maps * 64) * 29


@pytest.mark.parametrize(
    ("make_payload", "reason"),
    [
        pytest.param(flat_bomb, "7900000 exceeds max_array_len(64)", id="flat"),
        pytest.param(nested_bomb, f"more than {MAX_CONTAINERS} arrays and maps", id="nested"),
    ],
)
def test_a_message_of_many_small_objects_is_refused_in_little_memory(make_payload, reason: str):
    payload = make_payload()
    tracemalloc.start()
    try:
        with pytest.raises(WireError) as caught:
            decode_activation(payload, SPEC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reason in caught.value.reason
    assert peak < len(payload) // 8


def test_the_largest_frame_the_format_allows_is_accepted():
    """Longest ids and trace: the unpacker's limits are not below what the format allows."""
    longest_id = "\U0001f4f7" * MAX_ID_LENGTH  # 4 bytes a character in UTF-8
    hops = [Hop(stage, 1.0, 2.0) for stage in range(MAX_TRACE_HOPS)]
    frame = Frame(longest_id, longest_id, 2**64 - 1, 1.0, tensor=tensor_frame().tensor,
                  scale=SPEC.scale, zero_point=SPEC.zero_point, trace=hops, name=longest_id)
    decoded = decode_activation(encode_frame(frame), SPEC)
    assert (decoded.frame_id, decoded.source, decoded.trace) == (longest_id, longest_id, hops)
    assert decoded.name == longest_id


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_float_activation_must_be_finite(dtype: str, value: float):
    spec = TensorSpec("f", (1, 3, 5), dtype)
    values = np.ones(spec.shape, dtype)
    values[0, 1, 2] = value
    with pytest.raises(WireError, match="NaN or infinite"):
        decode_activation(encode_frame(Frame("f-1", "cam", 1, 1.0, tensor=values)), spec)


@pytest.mark.parametrize("score", [float("nan"), float("inf")])
def test_a_prediction_is_never_invalid_json(score: float):
    prediction = Prediction("f-1", "cam", 1, 1.0, [Score(0, "cat", score)], 2.0, [])
    with pytest.raises(ValueError, match="not JSON compliant"):
        prediction.to_json()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (message(tensor_shape=[1.0, 7, 7, 16]), "shape [1.0, 7, 7, 16] must be a list of int"),
        (message(tensor_shape=[True, 7, 7, 16]), "shape [True, 7, 7, 16] must be a list of int"),
        (message(tensor_shape=[1, 7, 7, 16.0]), "shape [1, 7, 7, 16.0] must be a list of int"),
        (message(trace=[[0.0, 1.0, 2.0]]), "is not [stage, received, done]"),
        (message(trace=[[False, 1.0, 2.0]]), "is not [stage, received, done]"),
        (message(trace=[[-1, 1.0, 2.0]]), "is not [stage, received, done]"),
        (message(seq=7.0), "field 'seq' must be int, got float"),
        (message(tensor_zero_point=3.0), "field 'zero_point' must be int, got float"),
        (message(tensor_zero_point=False), "field 'zero_point' must be int, got bool"),
        (message(version=1.0), "unsupported wire version 1.0"),
    ],
)
def test_an_integer_field_takes_only_an_int(payload: bytes, reason: str):
    """A float or bool compares equal to an int (1.0 == True == 1), it is still the wrong type."""
    with pytest.raises(WireError) as caught:
        decode_activation(payload, SPEC)
    assert reason in caught.value.reason


def test_a_frame_without_attempt_is_a_first_attempt():
    assert decode_activation(message(attempt=None), SPEC).attempt == 1
    assert decode_activation(message(attempt=3), SPEC).attempt == 3
