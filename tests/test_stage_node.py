"""StageNode alone: its session and segment are fakes, so every branch can be driven by hand.

The same node against a real mosquitto and real segments is tested in test_pipeline,
test_delivery and test_faults.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import queue
import threading

import msgpack
import numpy as np
import pytest
from PIL import Image

from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import BrokerConfig, PipelineConfig, StageConfig, StatsConfig
from aiotedge.contracts.events import ErrorEvent, NodeInfo, Prediction
from aiotedge.contracts.geometry import View
from aiotedge.contracts.manifest import Manifest, Preprocessing, SourceModel, StageSpec
from aiotedge.contracts.room import Room
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.topics import BROKER_DROPPED, Topics
from aiotedge.contracts.wire import Frame, decode_activation, encode_frame
from aiotedge.nodes.daemons import stage as stage_module
from aiotedge.nodes.daemons.stage import StageNode
from aiotedge.nodes.mqtt.transport import (
    MessageHandler,
    PublishCallback,
    Received,
    RefusalHandler,
)

#: bound for one awaited event; never a synchronisation
TIMEOUT = 10.0
PHOTO = TensorSpec("photo", (1, 4, 4, 3), "uint8", 1.0, 0)
HIDDEN = TensorSpec("hidden", (1, 4), "uint8", 0.5, 3)
SCORES = TensorSpec("scores", (1, 3), "uint8", 1 / 256, 0)
TOPICS = Topics("unit")


def manifest() -> Manifest:
    """Two stages on paper: photo -> hidden (stage 0), hidden -> 3 scores (stage 1)."""
    stages = (StageSpec(0, "s0.tflite", "0" * 64, PHOTO, HIDDEN, 10, 0, 1),
              StageSpec(1, "s1.tflite", "1" * 64, HIDDEN, SCORES, 5, 2, 3))
    return Manifest(SourceModel("m.tflite", "2" * 64, PHOTO, SCORES, 15),
                    Preprocessing(4, 4, 0.0, 1.0), stages, labels=("cat", "dog", "owl"))


class FakeSegment:
    """Gives a fixed output; `hold()` makes it wait inside run() until `release()`."""

    def __init__(self, spec: StageSpec) -> None:
        self.input_spec, self.output_spec = spec.input, spec.output
        self.path = type("P", (), {"name": spec.file})()
        self.output = np.arange(np.prod(spec.output.shape), dtype=np.uint8).reshape(
            spec.output.shape)
        self.inputs: list[np.ndarray] = []
        #: the name of the thread each input was computed on
        self.threads: list[str] = []
        self.running = threading.Semaphore(0)
        self._gate = threading.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def run(self, tensor: np.ndarray) -> np.ndarray:
        self.inputs.append(tensor)
        self.threads.append(threading.current_thread().name)
        self.running.release()
        assert self._gate.wait(TIMEOUT)
        return self.output

    def run_all(self, tensor: np.ndarray) -> tuple[np.ndarray, ...]:
        return (self.run(tensor),)


class FakeSession:
    """Records what the node asks of its MQTT session; hands the node's handler to the test.

    It has the shape of a `Session` (tests/test_transport.py checks it)."""

    client_id, url = "stage-fake", "mqtt://fake:1883"

    def __init__(self) -> None:
        #: the first subscription's handler (the stage's input), and every one by topic
        self.handler: MessageHandler | None = None
        self.handlers: dict[str, MessageHandler] = {}
        self.subscriptions: list[tuple[str, int, str | None]] = []
        self.forwarded: queue.Queue[tuple[str, bytes | str, int]] = queue.Queue()
        self.published: queue.Queue[tuple[str, bytes | str]] = queue.Queue()
        self.acked: list[int] = []
        self.refused = self.unrouted = self.unacknowledged = self.reconnects = 0
        self.connection_problem: str | None = None
        self.last_problem: str | None = None
        self.connected = True
        #: what input_waiting() answers: whether a message waits unread on the connection
        self.waiting = False

    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1,
                  share_group: str | None = None, *, on_refused: RefusalHandler | None = None,
                  retained: bool = True) -> None:
        self.handler = self.handler or handler
        self.handlers[topic] = handler
        self.subscriptions.append((topic, qos, share_group))

    def unsubscribe_on_connect(self, topic_filter: str) -> None:
        pass

    def start(self) -> None:
        pass

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self.connected

    def first_attempt(self, timeout: float | None = None) -> str | None:
        return None

    def forward(self, topic: str, payload: bytes | str, qos: int, source: Received) -> None:
        self.forwarded.put((topic, payload, source.packet_id))

    def publish(self, topic: str, payload: bytes | str, qos: int = 0,
                retain: bool = False) -> None:
        self.published.put((topic, payload))

    def publish_confirmed(self, topic: str, payload: bytes | str, qos: int,
                          on_confirmed: PublishCallback) -> None:
        self.publish(topic, payload, qos)
        on_confirmed(False)

    def ack(self, message: Received) -> None:
        self.acked.append(message.packet_id)

    def input_waiting(self) -> bool:
        return self.waiting

    def announce(self, topic: str, payload: str) -> None:
        self.published.put((topic, payload))

    def withdraw(self, topic: str) -> None:
        pass

    def set_online(self) -> None:
        pass

    def wait_acknowledged(self, timeout: float | None, at_most: int = 0) -> bool:
        return True

    def stop(self, timeout: float = 5.0, end_session: bool = False) -> None:
        pass


def node_for(index: int, qos: int = 1, queue_size: int = 4) -> tuple[StageNode, FakeSession,
                                                                        FakeSegment]:
    config = NodeConfig(pipeline=PipelineConfig(name="unit", qos=qos),
                        stage=StageConfig(index=index, node=f"stage{index}",
                                          queue_size=queue_size),
                        stats=StatsConfig(interval=0))
    split = manifest()
    session, segment = FakeSession(), FakeSegment(split.stages[index])
    node = StageNode(config, split, session, segment)
    node.start()
    node.serve()
    return node, session, segment


_mids = iter(range(1, 1_000_000))


def message(topic: str, payload: bytes, qos: int = 1) -> Received:
    """A message as the session hands it over, with a packet id of its own (at QoS 0 too, so
    that a test can tell them apart)."""
    return Received(topic, payload, qos, packet_id=next(_mids))


def activation(frame_id: str, attempt: int = 1) -> bytes:
    tensor = np.full(HIDDEN.shape, 7, dtype=np.uint8)
    return encode_frame(Frame(frame_id, "cam", 0, 1.0, attempt=attempt, tensor=tensor,
                              scale=HIDDEN.scale, zero_point=HIDDEN.zero_point))


def photo_frame(frame_id: str, attempt: int = 1, colour=(200, 10, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return encode_frame(Frame(frame_id, "cam", 0, 1.0, attempt=attempt, image=out.getvalue()))


def deliver(session: FakeSession, msg: Received) -> None:
    """Hand a message to the node as paho would: on a network thread of its own."""
    network = threading.Thread(target=session.handler, args=(msg,), name="network", daemon=True)
    network.start()
    network.join(TIMEOUT)
    assert not network.is_alive()


def test_a_photo_is_preprocessed_run_and_forwarded_to_the_next_stage_acknowledging_its_input():
    node, session, segment = node_for(0)
    source = message("aiotedge-frames/unit/stage/0", photo_frame("p-1"))
    session.handler(source)
    topic, payload, answered = session.forwarded.get(timeout=TIMEOUT)
    node.stop()
    assert (topic, answered) == ("aiotedge-frames/unit/stage/1", source.packet_id)
    frame = decode_activation(payload, HIDDEN)
    assert frame.frame_id == "p-1" and [hop.stage for hop in frame.trace] == [0]
    np.testing.assert_array_equal(frame.tensor, segment.output)
    assert segment.inputs[0][0, 0, 0].tolist() == [200, 10, 10]  # mean 0, std 1: raw pixels
    assert session.subscriptions[0] == ("aiotedge-frames/unit/stage/0", 1, None)


def test_a_replica_takes_frames_on_its_own_topic_and_says_its_room_when_it_frees_up():
    config = NodeConfig(pipeline=PipelineConfig(name="unit"),
                        stage=StageConfig(index=1, node="r1", queue_size=2, share_group="g"),
                        stats=StatsConfig(interval=0))
    session, segment = FakeSession(), FakeSegment(manifest().stages[1])
    node = StageNode(config, manifest(), session, segment)
    node.start()
    node.serve()
    node.announce_online()
    own = TOPICS.replica_input(1, "r1", "s0.ab")
    assert (TOPICS.replica_inputs(1, "r1"), 1, None) in session.subscriptions
    session.handlers[TOPICS.replica_inputs(1, "r1")](message(own, activation("o-1")))
    session.forwarded.get(timeout=TIMEOUT)
    said = [Room.parse(payload) for topic, payload in drain(session.published)
            if topic == TOPICS.room(1, "r1")]
    node.stop()
    assert said[0] == Room(2, 2) and said[-1] == Room(2, 2, {"s0.ab": 1})


def test_a_duplicate_gives_its_room_back():
    config = NodeConfig(pipeline=PipelineConfig(name="unit"),
                        stage=StageConfig(index=1, node="r1", queue_size=2, share_group="g"),
                        stats=StatsConfig(interval=0))
    node = StageNode(config, manifest(), FakeSession(), FakeSegment(manifest().stages[1]))
    node.start()
    node.serve()
    own = TOPICS.replica_input(1, "r1", "s0.ab")
    for _ in range(2):  # the second one: a redelivery
        node.session.handlers[TOPICS.replica_inputs(1, "r1")](message(own, activation("d-1")))
    room = node._room.room()
    node.stop()
    assert (room.free, node.counters.get("duplicates")) == (2, 1)


def test_a_result_goes_to_the_next_stages_replica_that_offers_room():
    node, session, _segment = node_for(0)
    session.handlers[TOPICS.stage_rooms(1)](message(TOPICS.room(1, "r1"),
                                                    Room(1, 4).to_json().encode()))
    session.handler(message(TOPICS.stage_input(0), photo_frame("n-1")))
    topic, _payload, _answered = session.forwarded.get(timeout=TIMEOUT)
    node.stop()
    assert topic.startswith(TOPICS.stage_input(1) + "/to/r1/stage0.")


def drain(messages: queue.Queue) -> list:
    taken = []
    while not messages.empty():
        taken.append(messages.get_nowait())
    return taken


def unserved_node(index: int) -> tuple[StageNode, FakeSession, FakeSegment]:
    """A node started (subscribed, connecting) but not yet serving: run_stage checks its
    neighbours first."""
    config = NodeConfig(pipeline=PipelineConfig(name="unit"),
                        stage=StageConfig(index=index, node=f"stage{index}"),
                        stats=StatsConfig(interval=0))
    split, session = manifest(), FakeSession()
    segment = FakeSegment(split.stages[index])
    node = StageNode(config, split, session, segment)
    node.start()
    return node, session, segment


def test_frames_before_serve_wait_and_are_computed_once_it_serves():
    node, session, segment = unserved_node(1)
    held = message("aiotedge-frames/unit/stage/1", activation("h-1"))
    deliver(session, held)
    assert segment.inputs == [] and session.acked == [] and session.forwarded.empty()
    node.serve()
    answered = session.forwarded.get(timeout=TIMEOUT)[2]
    node.stop()
    assert answered == held.packet_id


def test_more_frames_than_the_queue_holds_before_serve_never_block_the_network_thread():
    """After a SIGKILL the broker sends a stage its unacknowledged frames again and more: the
    network thread waited for room in the queue, and so never read the probe the start-up
    check waited for (the restarted stage never came online)."""
    config = NodeConfig(pipeline=PipelineConfig(name="unit"),
                        stage=StageConfig(index=1, node="stage1", queue_size=2),
                        stats=StatsConfig(interval=0))
    split, session = manifest(), FakeSession()
    node = StageNode(config, split, session, FakeSegment(split.stages[1]))
    node.start()
    sources = [message("aiotedge-frames/unit/stage/1", activation(f"b-{n}")) for n in range(5)]
    for source in sources:
        deliver(session, source)  # returns: nothing waits on the network thread
    node.serve()
    answered = [session.forwarded.get(timeout=TIMEOUT)[2] for _ in sources]
    node.stop()
    assert answered == [source.packet_id for source in sources]


def test_a_stage_stopped_before_it_serves_leaves_its_frames_with_the_broker():
    """A stage that does not fit its neighbours stops (exit 2) without taking a frame."""
    node, session, segment = unserved_node(1)
    deliver(session, message("aiotedge-frames/unit/stage/1", activation("h-2")))
    node.stop()
    assert segment.inputs == [] and session.acked == [] and session.forwarded.empty()


def test_the_last_stage_forwards_a_prediction():
    node, session, _ = node_for(1)
    session.handler(message("aiotedge-frames/unit/stage/1", activation("a-1")))
    topic, payload, _ = session.forwarded.get(timeout=TIMEOUT)
    node.stop()
    prediction = Prediction.parse(payload)
    assert topic == "aiotedge/unit/predictions"
    assert prediction.frame_id == "a-1"
    assert [s.label for s in prediction.top] == ["owl", "dog", "cat"]  # output 0, 1, 2


def test_a_duplicate_is_acknowledged_and_dropped_but_a_new_attempt_is_computed():
    node, session, _ = node_for(0)
    first, again, retry = (message("aiotedge-frames/unit/stage/0", photo_frame("d-1", attempt))
                           for attempt in (1, 1, 2))
    for msg in (first, again, retry):
        session.handler(msg)
    answered = {session.forwarded.get(timeout=TIMEOUT)[2] for _ in range(2)}
    node.stop()
    assert answered == {first.packet_id, retry.packet_id}
    assert session.acked == [again.packet_id]
    assert node.counters.get("duplicates") == 1
    assert session.forwarded.empty()


def test_the_last_stage_answers_a_frame_once_whatever_its_attempts():
    """A camera sends a late frame again: both attempts reach the last stage, and plain
    subscribers of the predictions got both answers (23 duplicates for 80 frames)."""
    node, session, _ = node_for(1)
    first, retry = (message("aiotedge-frames/unit/stage/1", activation("l-1", attempt))
                    for attempt in (1, 2))
    session.handler(first)
    assert session.forwarded.get(timeout=TIMEOUT)[2] == first.packet_id
    session.handler(retry)
    node.stop()
    assert session.forwarded.empty()
    assert session.acked == [retry.packet_id]
    assert node.counters.get("duplicates") == 1


def test_after_a_reconnection_the_last_stage_answers_a_frame_sent_again():
    """A broker killed before it saved them loses predictions it had acknowledged: the
    camera's resend must be answered, or the frame is lost for good."""
    node, session, _ = node_for(1)
    session.handler(message("aiotedge-frames/unit/stage/1", activation("k-1", 1)))
    session.forwarded.get(timeout=TIMEOUT)
    session.reconnects += 1
    retry = message("aiotedge-frames/unit/stage/1", activation("k-1", 2))
    session.handler(retry)
    answered = session.forwarded.get(timeout=TIMEOUT)[2]
    node.stop()
    assert answered == retry.packet_id


@pytest.mark.parametrize("window, answered_again", [(stage_module.RESUBSCRIBED_WITHIN, True),
                                                     (0.0, False)], ids=["soon", "settled"])
def test_an_answer_given_soon_after_a_reconnection_is_given_again_to_a_frame_sent_again(
        monkeypatch, window, answered_again):
    """The broker restarted (killed, it forgot every subscription): the last stage, back
    first, answered before the camera had subscribed again, and the camera's resend was
    dropped as a duplicate of that answer no one got (CI lost a frame so). An answer given
    once the others are surely back still makes a resend a duplicate."""
    monkeypatch.setattr(stage_module, "RESUBSCRIBED_WITHIN", window)
    node, session, _ = node_for(1)
    session.reconnects += 1
    session.handler(message("aiotedge-frames/unit/stage/1", activation("b-1", 1)))
    session.forwarded.get(timeout=TIMEOUT)
    retry = message("aiotedge-frames/unit/stage/1", activation("b-1", 2))
    session.handler(retry)
    node.stop()
    if answered_again:
        assert session.forwarded.get(timeout=TIMEOUT)[2] == retry.packet_id
    else:
        assert session.forwarded.empty() and session.acked == [retry.packet_id]


def test_a_frame_the_last_stage_rejected_is_answered_when_it_comes_again():
    node, session, segment = node_for(1)
    segment.output = np.full(SCORES.shape, 1, dtype=np.uint8)
    node.spec = dataclasses.replace(node.spec, output=dataclasses.replace(
        SCORES, scale=float("nan")))  # a model whose output is not finite
    session.handler(message("aiotedge-frames/unit/stage/1", activation("r-1", 1)))
    node.spec = manifest().stage(1)
    retry = message("aiotedge-frames/unit/stage/1", activation("r-1", 2))
    session.handler(retry)
    answered = session.forwarded.get(timeout=TIMEOUT)[2]
    node.stop()
    assert answered == retry.packet_id
    assert node.counters.get("rejected") == 1


def test_a_replica_of_the_last_stage_does_not_answer_a_frame_its_sibling_answered():
    config = NodeConfig(pipeline=PipelineConfig(name="unit"),
                        stage=StageConfig(index=1, node="s-b", share_group="stage1"),
                        stats=StatsConfig(interval=0))
    split, session = manifest(), FakeSession()
    node = StageNode(config, split, session, FakeSegment(split.stages[1]))
    node.start()
    node.serve()
    sibling, _, _ = node_for(1)
    sibling.session.handler(message("aiotedge-frames/unit/stage/1", activation("s-1")))
    _, prediction, _ = sibling.session.forwarded.get(timeout=TIMEOUT)
    sibling.stop()
    session.handlers["aiotedge/unit/predictions"](message("aiotedge/unit/predictions",
                                                          prediction, qos=0))
    session.handler(message("aiotedge-frames/unit/stage/1", activation("s-1", attempt=2)))
    node.stop()
    assert session.forwarded.empty()
    assert node.counters.get("duplicates") == 1
    assert ("aiotedge/unit/predictions", 0, None) in session.subscriptions


def test_another_picture_under_a_frame_id_taken_is_refused_at_stage_zero():
    """Bad photos reusing a seen frame id were counted as duplicates, with no error event."""
    node, session, _ = node_for(0)
    session.handler(message("aiotedge-frames/unit/stage/0", photo_frame("c-1")))
    session.forwarded.get(timeout=TIMEOUT)
    other = message("aiotedge-frames/unit/stage/0", photo_frame("c-1", colour=(1, 2, 3)))
    session.handler(other)
    topic, payload = session.published.get(timeout=TIMEOUT)
    node.stop()
    event = ErrorEvent.parse(payload.encode())
    assert topic == "aiotedge/unit/errors" and event.frame_id == "c-1"
    assert "was taken already with other content" in event.reason
    assert session.acked == [other.packet_id]
    assert node.counters.get("duplicates") == 0


def test_a_rejected_message_gets_an_error_event_and_is_acknowledged_at_once():
    node, session, _ = node_for(1)
    bad = message("aiotedge-frames/unit/stage/1", b"\xc1 not msgpack")
    session.handler(bad)
    topic, payload = session.published.get(timeout=TIMEOUT)
    node.stop()
    event = ErrorEvent.parse(payload.encode())
    assert topic == "aiotedge/unit/errors"
    assert (event.node, event.stage, event.topic) == ("stage1", 1, "aiotedge-frames/unit/stage/1")
    assert "not msgpack" in event.reason
    assert session.acked == [bad.packet_id]
    assert node.counters.get("rejected") == 1
    assert session.forwarded.empty()


def test_a_qos1_frame_at_an_idle_stage_is_computed_on_the_network_thread():
    node, session, segment = node_for(1)
    source = message("aiotedge-frames/unit/stage/1", activation("i-1"))
    deliver(session, source)
    forwarded = session.forwarded.get_nowait()  # before the network thread was given it back
    node.stop()
    assert forwarded[2] == source.packet_id
    assert segment.threads == ["network"]


def test_once_a_message_waits_behind_a_frame_the_next_ones_go_to_the_worker():
    node, session, segment = node_for(1)
    session.waiting = True  # something arrived while the network thread computed
    sources = [message("aiotedge-frames/unit/stage/1", activation(f"w-{n}")) for n in range(3)]
    deliver(session, sources[0])
    segment.hold()
    deliver(session, sources[1])
    assert segment.running.acquire(timeout=TIMEOUT) and segment.running.acquire(timeout=TIMEOUT)
    deliver(session, sources[2])  # while w-1 is being computed by the worker
    segment.release()
    answered = [session.forwarded.get(timeout=TIMEOUT)[2] for _ in sources]
    node.stop()
    assert answered == [source.packet_id for source in sources]
    assert segment.threads == ["network", "inference", "inference"]


def test_at_qos0_a_full_queue_drops_the_oldest_waiting_frame():
    node, session, segment = node_for(1, qos=0, queue_size=2)
    segment.hold()
    frames = [message("aiotedge-frames/unit/stage/1", activation(f"q-{n}"), qos=0)
              for n in range(4)]
    session.handler(frames[0])
    assert segment.running.acquire(timeout=TIMEOUT)  # q-0 is being computed, the queue empty
    for msg in frames[1:]:  # q-1 and q-2 fill the queue; q-3 pushes q-1 out
        session.handler(msg)
    segment.release()
    answered = [session.forwarded.get(timeout=TIMEOUT)[2] for _ in range(3)]
    node.stop()
    assert answered == [frames[0].packet_id, frames[2].packet_id, frames[3].packet_id]
    assert node.counters.get("dropped") == 1
    assert session.acked == [frames[1].packet_id]


@pytest.mark.parametrize("share_group", ["", "replicas"])
def test_the_input_is_a_plain_subscription_unless_the_stage_has_a_share_group(share_group):
    config = NodeConfig(pipeline=PipelineConfig(name="unit"),
                        stage=StageConfig(index=1, node="s", share_group=share_group),
                        stats=StatsConfig(interval=0))
    split, session = manifest(), FakeSession()
    node = StageNode(config, split, session, FakeSegment(split.stages[1]))
    node.start()
    node.serve()
    node.stop()
    assert session.subscriptions[0] == ("aiotedge-frames/unit/stage/1", 1, share_group or None)


@pytest.mark.parametrize(("share_group", "checks_subscriptions", "warned"), [
    ("replicas", False, True), ("replicas", True, False), ("", False, False)])
def test_a_replica_warns_at_start_unless_the_broker_is_said_to_check_subscriptions(
    caplog, share_group, checks_subscriptions, warned
):
    """Under secure.conf (or an open broker) any user can join the group and take frames."""
    config = NodeConfig(broker=BrokerConfig(checks_subscriptions=checks_subscriptions),
                        pipeline=PipelineConfig(name="unit"),
                        stage=StageConfig(index=1, node="s", share_group=share_group),
                        stats=StatsConfig(interval=0))
    split = manifest()
    node = StageNode(config, split, FakeSession(), FakeSegment(split.stages[1]))
    with caplog.at_level(logging.WARNING, logger="aiotedge.nodes.daemons.stage"):
        node.start()
        node.serve()
        node.stop()
    lines = [record.getMessage() for record in caplog.records
             if "checks_subscriptions" in record.getMessage()]
    assert len(lines) == (1 if warned else 0)
    if warned:
        assert lines[0].startswith("share group 'replicas': any user of a broker")
        assert "secure-dynsec.conf" in lines[0] and "\n" not in lines[0]


def test_node_info_says_what_the_stage_runs():
    node, session, _ = node_for(1)
    node.announce_online()
    node.stop()
    topic, payload = session.published.get(timeout=TIMEOUT)
    info = json.loads(payload)
    assert topic == "aiotedge/unit/info/stage1"
    assert (info["stage"], info["stages"], info["model"]) == (1, 2, "m.tflite")
    assert info["input"] == HIDDEN.to_dict() and info["output"] == SCORES.to_dict()


def test_a_stage_sends_its_output_in_the_codec_its_manifest_names():
    split = manifest()
    coded = dataclasses.replace(split.stages[0], output_codec="zstd")
    split = dataclasses.replace(split, stages=(coded, split.stages[1]))
    config = NodeConfig(pipeline=PipelineConfig(name="unit"),
                        stage=StageConfig(index=0, node="stage0"), stats=StatsConfig(interval=0))
    session, segment = FakeSession(), FakeSegment(split.stages[0])
    node = StageNode(config, split, session, segment)
    node.start()
    node.serve()
    session.handler(message("aiotedge-frames/unit/stage/0", photo_frame("z-1")))
    _, payload, _ = session.forwarded.get(timeout=TIMEOUT)
    node.stop()
    assert msgpack.unpackb(payload)["tensor"]["codec"] == "zstd"
    np.testing.assert_array_equal(decode_activation(payload, HIDDEN).tensor, segment.output)


def test_stage_zero_says_how_it_preprocesses_and_the_others_do_not():
    infos = {}
    for index in (0, 1):
        node, session, _ = node_for(index)
        node.announce_online()
        node.stop()
        infos[index] = NodeInfo.parse(session.published.get(timeout=TIMEOUT)[1].encode())
    assert infos[0].preprocessing == manifest().preprocessing
    assert infos[0].input == PHOTO
    assert infos[1].preprocessing is None


@pytest.mark.parametrize("preprocessing", [
    {"width": 0, "height": 4, "mean": 0.0, "std": 1.0},
    {"width": 100_000, "height": 4, "mean": 0.0, "std": 1.0},
    {"width": 4, "height": 4, "mean": 0.0, "std": 0.0},
    {"width": 4, "height": 4, "mean": "NaN", "std": 1.0},
])
def test_info_with_preprocessing_no_model_has_is_not_taken(preprocessing):
    info = json.loads(NodeInfo.for_stage(manifest(), 0, "stage0", "").to_json())
    info["preprocessing"] = preprocessing
    assert NodeInfo.parse(json.dumps(info).encode()) is None


def test_a_tensor_a_camera_preprocessed_goes_into_stage_zero_as_it_is():
    node, session, segment = node_for(0)
    tensor = np.arange(48, dtype=np.uint8).reshape(PHOTO.shape)
    frame = Frame("t-1", "cam", 0, 1.0, tensor=tensor, scale=PHOTO.scale,
                  zero_point=PHOTO.zero_point, name="door.jpg")
    session.handler(message("aiotedge-frames/unit/stage/0", encode_frame(frame)))
    _, payload, _ = session.forwarded.get(timeout=TIMEOUT)
    node.stop()
    np.testing.assert_array_equal(segment.inputs[0], tensor)
    assert decode_activation(payload, HIDDEN).name == "door.jpg"  # carried on


def test_stage_zero_exports_the_brokers_count_of_dropped_messages_where_it_follows_it():
    node, session, _ = node_for(0)
    assert "aiotedge_broker_dropped_messages" not in {m.name for m in node.metrics()}
    node.follow_broker_drops()
    session.handlers[BROKER_DROPPED](message(BROKER_DROPPED, b"1899", qos=0))
    node.stop()
    exported = {m.name: m.value for m in node.metrics()}
    assert exported["aiotedge_broker_dropped_messages"] == 1899


def test_stage_0_gives_a_photo_without_a_view_the_photo_s_own_so_boxes_map_to_its_pixels():
    node, session, _ = node_for(0)
    out = io.BytesIO()
    Image.new("RGB", (12, 6), (9, 9, 9)).save(out, format="PNG")
    photo = encode_frame(Frame("v-1", "cam", 0, 1.0, image=out.getvalue()))
    session.handler(message("aiotedge-frames/unit/stage/0", photo))
    payload = session.forwarded.get(timeout=TIMEOUT)[1]
    node.stop()
    assert decode_activation(payload, HIDDEN).view == View(12, 6)
