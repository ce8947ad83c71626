"""ChainWatch: a running stage reporting neighbours that do not fit it, following the view its
PipelineAvailability keeps, on a fake session whose messages the test delivers by hand.

The check at start, against a real mosquitto and real stage daemons, is in test_faults; the
watching in a running pipeline in test_reliability (chain-check).
"""

from __future__ import annotations

import logging

import pytest

from aiotedge.contracts.events import ErrorEvent, NodeInfo
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.topics import OFFLINE, ONLINE, Topics
from aiotedge.nodes.mqtt.transport import MessageHandler, Received, RefusalHandler
from aiotedge.nodes.observe.chain import ChainWatch
from aiotedge.nodes.observe.health import PipelineAvailability
from aiotedge.nodes.observe.metrics import Counters

TOPICS = Topics("unit")
PHOTO = TensorSpec("photo", (1, 4, 4, 3), "uint8", 1.0, 0)
HIDDEN = TensorSpec("hidden", (1, 4), "uint8", 0.5, 3)
OTHER_HIDDEN = TensorSpec("hidden", (1, 8), "uint8", 0.5, 3)
SCORES = TensorSpec("scores", (1, 3), "uint8", 1 / 256, 0)
SPLIT = "a" * 64
OTHER_SPLIT = "b" * 64
#: this test's stage: stage 1 of SPLIT, taking HIDDEN
ME = NodeInfo("stage1", 1, 2, SPLIT, "s1.tflite", HIDDEN, SCORES)


def stage0(output: TensorSpec, manifest: str) -> bytes:
    return NodeInfo("stage0", 0, 2, manifest, "s0.tflite", PHOTO, output).to_json().encode()


class FakeSession:
    """Keeps the handlers and what the watch publishes; `deliver` plays the broker. It has the
    shape of the `Messaging` part of a session (tests/test_transport.py checks it)."""

    def __init__(self) -> None:
        self.handlers: dict[str, MessageHandler] = {}
        self.published: list[tuple[str, bytes | str, int]] = []
        self.announced: list[tuple[str, str]] = []

    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1,
                  share_group: str | None = None, *, on_refused: RefusalHandler | None = None,
                  retained: bool = True) -> None:
        assert qos == 0  # a stage acknowledges its QoS 1 messages by hand
        self.handlers[topic] = handler

    def publish(self, topic: str, payload: bytes | str, qos: int = 0,
                retain: bool = False) -> None:
        assert not retain
        self.published.append((topic, payload, qos))

    def announce(self, topic: str, payload: str) -> None:
        self.announced.append((topic, payload))  # the pipeline's availability

    def withdraw(self, topic: str) -> None:  # the pipeline's availability: another node says it
        pass

    def deliver(self, topic: str, payload: bytes) -> None:
        self.handlers[topic.rsplit("/", 1)[0] + "/+"](Received(topic, payload))


@pytest.fixture
def watched() -> tuple[FakeSession, Counters]:
    session, counters = FakeSession(), Counters()
    watch = ChainWatch(session, TOPICS, ME, counters, qos=1)
    PipelineAvailability(session, TOPICS, ME.node, followers=[watch.check])
    return session, counters


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


def test_a_neighbour_of_another_split_is_reported_once_and_cleared_when_it_goes(watched, caplog):
    session, counters = watched
    caplog.set_level(logging.INFO, logger="aiotedge.nodes.observe.chain")
    session.deliver(TOPICS.info("stage0"), stage0(OTHER_HIDDEN, OTHER_SPLIT))
    assert session.published == []  # not online (yet): nothing to say
    session.deliver(TOPICS.availability("stage0"), ONLINE.encode())

    [(topic, payload, qos)] = session.published
    assert (topic, qos) == (TOPICS.errors, 1)
    event = ErrorEvent.parse(payload.encode())
    assert event is not None
    assert (event.node, event.stage, event.topic, event.frame_id) == (
        "stage1", 1, TOPICS.info("stage0"), None)
    assert event.reason.startswith("node stage0 (stage 0, manifest bbbbbbbbbbbb) sends")
    assert "different splits" in event.reason
    assert errors_logged(caplog) == [f"chain broken, serving on: {event.reason}"]
    assert counters.get("chain_errors") == 1

    # the same retained messages again (as after a reconnect): nothing new
    session.deliver(TOPICS.info("stage0"), stage0(OTHER_HIDDEN, OTHER_SPLIT))
    session.deliver(TOPICS.availability("stage0"), ONLINE.encode())
    assert len(session.published) == 1
    assert len(errors_logged(caplog)) == 1
    assert counters.get("chain_errors") == 1

    caplog.clear()
    session.deliver(TOPICS.availability("stage0"), OFFLINE.encode())
    assert [r.getMessage() for r in caplog.records] == [f"chain problem gone: {event.reason}"]
    assert caplog.records[0].levelno == logging.INFO

    # back online with the same segment: a new occurrence, reported again
    session.deliver(TOPICS.availability("stage0"), ONLINE.encode())
    assert len(session.published) == 2
    assert counters.get("chain_errors") == 2


def test_a_neighbour_back_with_a_fitting_segment_clears_the_problem(watched, caplog):
    session, counters = watched
    caplog.set_level(logging.INFO, logger="aiotedge.nodes.observe.chain")
    session.deliver(TOPICS.availability("stage0"), ONLINE.encode())
    session.deliver(TOPICS.info("stage0"), stage0(OTHER_HIDDEN, OTHER_SPLIT))
    assert len(session.published) == 1

    session.deliver(TOPICS.info("stage0"), stage0(HIDDEN, SPLIT))  # redeployed, right split
    assert len(session.published) == 1
    assert caplog.records[-1].getMessage().startswith("chain problem gone: node stage0")
    assert counters.get("chain_errors") == 1


def test_neighbours_that_fit_and_this_stage_itself_are_no_problem(watched):
    session, counters = watched
    for name, payload in (("stage0", stage0(HIDDEN, SPLIT)), ("stage1", ME.to_json().encode())):
        session.deliver(TOPICS.info(name), payload)
        session.deliver(TOPICS.availability(name), ONLINE.encode())
    assert session.published == []
    assert counters.get("chain_errors") == 0


def test_a_second_copy_of_the_stage_without_a_share_group_is_reported(watched):
    session, _ = watched
    copy = NodeInfo("stage1-b", 1, 2, SPLIT, "s1.tflite", HIDDEN, SCORES)
    session.deliver(TOPICS.info("stage1-b"), copy.to_json().encode())
    session.deliver(TOPICS.availability("stage1-b"), ONLINE.encode())
    [(_, payload, _)] = session.published
    event = ErrorEvent.parse(payload.encode())
    assert event is not None
    assert "node stage1-b (stage 1" in event.reason and "share_group" in event.reason
