"""End to end: stage daemons as real processes, a real mosquitto, real segments and photos."""

from __future__ import annotations

import json
import queue

import msgpack
import numpy as np
import pytest

from aiotedge.config.sections import StageConfig
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.wire import Frame, encode_frame
from aiotedge.media.image import list_images, read_photo
from aiotedge.nodes.daemons.local import LocalPipeline
from aiotedge.nodes.mqtt.session import MqttSession
from support.paths import SHARED_LABELS, SHARED_MODEL
from support.reference import whole_model_top

#: above the largest photo (a 512x600 BMP, 900 KB) and activation; refused before decoding
MAX_MESSAGE_BYTES = 1_000_000


@pytest.fixture(scope="module")
def three_stages(shared_data, split_into) -> Manifest:
    return split_into(SHARED_MODEL, 3, SHARED_LABELS)


@pytest.fixture(scope="module")
def photos(shared_data) -> list[tuple[str, bytes]]:
    return [(path.name, read_photo(path)) for path in list_images(shared_data / "images")]


def test_three_stage_pipeline_equals_the_whole_model(broker, three_stages, photos):
    expected = {name: whole_model_top(three_stages, data) for name, data in photos}
    with LocalPipeline(three_stages, broker=broker.address) as pipeline:
        results = dict(pipeline.predict(photos))
    assert set(results) == set(expected)
    for name, prediction in results.items():
        assert prediction.top == expected[name], name
        assert [t.stage for t in prediction.stages] == [0, 1, 2]
        assert prediction.latency_ms > 0
    labels = {name: p.top[0].label.split(",")[0] for name, p in results.items()}
    assert labels["parrot.jpg"] == "macaw"
    assert labels["cat.bmp"] == "Egyptian cat"
    assert labels["hot_dog.jpg"] == "hotdog"


def bad_messages(manifest: Manifest) -> list[tuple[int, bytes, str]]:
    """(stage, payload, part of the reason) for messages a stage must refuse."""
    activation = manifest.stages[0].output
    wrong_shape = np.zeros((1, 3), dtype=activation.dtype)
    good_tensor = np.zeros(activation.shape, dtype=activation.dtype)
    return [
        (0, b"\xc1 not msgpack", "not msgpack"),
        (0, encode_frame(Frame("bad-img", "inject", 0, 1.0, image=b"GIF89a....")), "not a JPEG"),
        (1, msgpack.packb({"version": 99}), "unsupported wire version 99"),
        (1, encode_frame(Frame("bad-shape", "inject", 1, 1.0, tensor=wrong_shape,
                               scale=activation.scale, zero_point=activation.zero_point)),
         "does not match the stage input"),
        (1, encode_frame(Frame("bad-quant", "inject", 2, 1.0, tensor=good_tensor,
                               scale=activation.scale * 2, zero_point=activation.zero_point)),
         "split from different models"),
        (2, msgpack.packb([1, 2, 3]), "expected a msgpack map"),
        (1, b"\x00" * (MAX_MESSAGE_BYTES + 1), f"exceeds the limit of {MAX_MESSAGE_BYTES}"),
        (2, b"\x93\x01\x02", "truncated"),
    ]


def test_malformed_messages_are_rejected_and_good_frames_still_come_out(
    broker, three_stages, photos
):
    errors: queue.Queue[dict] = queue.Queue()
    injector = MqttSession(broker.address, "injector")
    injector.subscribe("aiotedge/local/errors", lambda m: errors.put(json.loads(m.payload)))
    injector.start()
    assert injector.wait_connected(10)
    injected = bad_messages(three_stages)
    expected = {name: whole_model_top(three_stages, data) for name, data in photos}
    results = {}
    with LocalPipeline(three_stages, broker=broker.address,
                       stage=StageConfig(max_message_bytes=MAX_MESSAGE_BYTES)) as pipeline:
        for count, (name, prediction) in enumerate(pipeline.predict(photos), start=1):
            results[name] = prediction
            if count == 2:  # good frames are in flight on every side of the bad ones
                for stage, payload, _ in injected:
                    injector.publish(f"aiotedge-frames/local/stage/{stage}", payload, qos=1)
        events = [errors.get(timeout=30) for _ in injected]
    injector.stop()
    assert {name: p.top for name, p in results.items()} == expected
    for stage, _, reason in injected:
        matching = [e for e in events if e["stage"] == stage and reason in e["reason"]]
        assert matching, f"no error event on stage {stage} saying {reason!r}: {events}"
    by_reason = {e["reason"]: e for e in events}
    assert any(e["frame_id"] == "bad-shape" for e in by_reason.values())
    assert errors.empty()

