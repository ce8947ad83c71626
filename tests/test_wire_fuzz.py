"""Fuzzing the wire decoder: whatever arrives on a stage's topic, the stage gets a Frame it
can forward unchanged, or a WireError with a short reason; never another exception."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings

from aiotedge.contracts.errors import WireError
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.wire import MAX_ID_LENGTH, Frame, encode_frame
from tests.wire_strategies import (
    FUZZ_PROFILE,
    REASON_LIMIT,
    decode,
    mutated_messages,
    pack,
    received_payloads,
    stage_inputs,
)

fuzz = settings.get_profile(FUZZ_PROFILE)
# the suite's 300 s guard against a hang, stretched for a long run (AIOTEDGE_FUZZ_EXAMPLES):
# 20,000 examples of a test take 5 to 10 minutes
pytestmark = pytest.mark.timeout(300 + fuzz.max_examples // 10)


def decode_or_refuse(payload: bytes, spec: TensorSpec | None) -> Frame | None:
    """The decoded frame, or None when it was refused with a short reason and a valid id."""
    try:
        frame = decode(payload, spec)
    except WireError as exc:
        assert len(exc.reason) <= REASON_LIMIT, exc.reason
        if exc.frame_id is not None:
            assert isinstance(exc.frame_id, str) and 0 < len(exc.frame_id) <= MAX_ID_LENGTH
        return None
    if frame.tensor is not None and frame.tensor.dtype.kind == "f":
        assert np.isfinite(frame.tensor).all()
    return frame


def same_msgpack(sent: Any, forwarded: Any) -> bool:
    """Equal and of the same msgpack types (1.0 == True == 1 in Python); an int may come back
    as the equal float, a float field accepts one."""
    if isinstance(sent, dict):
        return (
            isinstance(forwarded, dict)
            and sent.keys() == forwarded.keys()
            and all(same_msgpack(sent[key], forwarded[key]) for key in sent)
        )
    if isinstance(sent, list):
        return (
            isinstance(forwarded, list)
            and len(sent) == len(forwarded)
            and all(map(same_msgpack, sent, forwarded))
        )
    if type(sent) is int and type(forwarded) is float:
        return sent == forwarded
    return type(sent) is type(forwarded) and sent == forwarded


def assert_same_frame(actual: Frame, expected: Frame) -> None:
    assert (actual.frame_id, actual.source, actual.seq, actual.captured_at, actual.trace) == (
        expected.frame_id, expected.source, expected.seq, expected.captured_at, expected.trace
    )
    assert (actual.image, actual.scale, actual.zero_point) == (
        expected.image, expected.scale, expected.zero_point
    )
    if expected.tensor is None:
        assert actual.tensor is None
    else:
        assert actual.tensor is not None
        assert (actual.tensor.dtype, actual.tensor.shape) == (
            expected.tensor.dtype, expected.tensor.shape
        )
        assert actual.tensor.tobytes() == expected.tensor.tobytes()


@fuzz
@given(received_payloads())
def test_any_payload_gives_a_frame_or_a_wire_error(case: tuple[TensorSpec | None, bytes]):
    spec, payload = case
    frame = decode_or_refuse(payload, spec)
    if frame is not None:
        assert_same_frame(decode(encode_frame(frame), spec), frame)


@fuzz
@given(mutated_messages())
def test_a_mutated_frame_is_refused_or_forwarded_unchanged(case: tuple[TensorSpec | None, dict]):
    spec, message = case
    frame = decode_or_refuse(pack(message), spec)
    if frame is not None:  # a frame without an attempt is a first attempt, and says so
        assert same_msgpack({"attempt": 1, **message},
                            msgpack.unpackb(encode_frame(frame), raw=False))


@fuzz
@given(stage_inputs())
def test_a_valid_frame_round_trips(case: tuple[TensorSpec | None, Frame]):
    spec, frame = case
    assert_same_frame(decode(encode_frame(frame), spec), frame)
