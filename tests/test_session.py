"""MqttSession against a real mosquitto: what the session can tell about its connection."""

from __future__ import annotations

import logging
import queue
import threading
import time

import pytest
from paho.mqtt.client import DisconnectFlags
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from aiotedge.config.sections import BrokerConfig
from aiotedge.nodes.mqtt.session import RECONNECT_MAX_DELAY, MqttSession
from aiotedge.nodes.mqtt.transport import Received

#: bound for one awaited event; never a synchronisation
TIMEOUT = 10.0


def test_input_waiting_says_whether_a_message_waits_unread(broker):
    ready, first, release = threading.Event(), threading.Event(), threading.Event()

    def hold(_message) -> None:  # keeps the network thread, as a frame computed on it does
        first.set()
        assert release.wait(TIMEOUT)

    receiver = MqttSession(broker.address, "receiver")
    receiver.subscribe("test/probe", lambda _message: ready.set(), qos=1)
    receiver.subscribe("test/in", hold, qos=1)
    sender = MqttSession(broker.address, "sender")
    for session in (receiver, sender):
        session.start()
        assert session.wait_connected(TIMEOUT)
    try:
        receiver.publish("test/probe", b"", qos=1)  # after our subscriptions, in order
        assert ready.wait(TIMEOUT)
        sender.publish("test/in", b"first", qos=1).wait_for_publish(TIMEOUT)
        assert first.wait(TIMEOUT)
        assert not receiver.input_waiting()
        sender.publish("test/in", b"second", qos=1).wait_for_publish(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while not receiver.input_waiting():
            assert time.monotonic() < deadline, "the second message never showed as waiting"
            time.sleep(0.01)
    finally:
        release.set()
        sender.stop()
        receiver.stop()


class Said(logging.Handler):
    """The session's log lines, awaitable."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.lines.append(record.getMessage())
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float = TIMEOUT) -> list[str]:
        with self.changed:
            assert self.changed.wait_for(lambda: predicate(self.lines), timeout), self.lines
            return list(self.lines)


@pytest.fixture
def said():
    handler = Said()
    logger = logging.getLogger("aiotedge.nodes.mqtt.session")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def twin_problem(client_id: str, node: str) -> str:
    return (f"another client connected with this node's client id {client_id}: two nodes "
            f"share the name {node}? Give each its own ([stage] node, [camera] name); meanwhile "
            f"retrying every {RECONNECT_MAX_DELAY:.0f} s")


@pytest.mark.parametrize("follows_the_pipeline", [False, True])
def test_two_nodes_with_one_name_are_told_so_once_and_fight_for_it_slowly(
        broker, said, follows_the_pipeline):
    """mosquitto 2.0 closes the older connection without a reason code: each of the two
    notices that it displaced the other (its retained `online`) and, when its own connection
    goes, says why once and retries at the slowest pace, not every second. A stage hears its
    own availability through `availability/+`, a camera through a subscription of its own."""
    twins = [MqttSession(broker.address, "stage1-pi", "test/availability/stage1-pi",
                         session_expiry=3600) for _ in range(2)]
    if follows_the_pipeline:
        twins[0].subscribe("test/availability/+", lambda _message: None, qos=0)
    try:
        for twin in twins:
            twin.start()
            assert twin.wait_connected(TIMEOUT)
            twin.set_online()
        problem = twin_problem("stage1-pi", "stage1-pi")
        # the first is displaced by the second, comes back and displaces it in turn
        lines = said.wait_for(lambda lines: problem in lines)
        assert not any(line.startswith("lost the broker connection") for line in
                       lines[lines.index(problem):])
        assert sum(twin.connection_problem == problem for twin in twins) == 1
    finally:
        for twin in twins:
            twin.stop()


def test_a_session_taken_over_is_named_from_its_reason_code(said):
    """Brokers that send MQTT v5's DISCONNECT 0x8E "Session taken over" (paho hands it to
    on_disconnect): the cause is said at once, once, whatever happened before."""
    session = MqttSession(BrokerConfig(), "camera-cam0", "aiotedge/shelf/availability/cam0")
    taken_over = ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E)
    for _ in range(2):
        session._on_connect(session.client, None, None, ReasonCode(PacketTypes.CONNACK), None)
        session._on_disconnect(session.client, None, DisconnectFlags(True), taken_over, None)
    assert said.lines.count(twin_problem("camera-cam0", "cam0")) == 1
    assert session.connection_problem == twin_problem("camera-cam0", "cam0")


def test_a_node_following_every_availability_hears_its_own_once(broker):
    """Its own availability is not subscribed twice (the broker would send every message once
    per matching subscription, to every handler)."""
    heard: list[tuple[str, bytes]] = []
    marker = threading.Event()

    def hear(message) -> None:
        heard.append((message.topic, message.payload))
        if message.topic == "test/availability/marker":
            marker.set()

    session = MqttSession(broker.address, "s0", "test/availability/s0")
    session.subscribe("test/availability/+", hear, qos=0)
    session.start()
    try:
        assert session.wait_connected(TIMEOUT)
        session.set_online()
        session.publish("test/availability/marker", b"x", qos=1)  # after it, in order
        assert marker.wait(TIMEOUT)
        assert heard.count(("test/availability/s0", b"online")) == 1, heard
    finally:
        session.stop()


def test_a_handler_gets_our_own_message_and_acknowledging_it_frees_the_broker_to_send_more(
        broker):
    """What the client library hands over arrives as a `Received`: the topic, the payload,
    QoS, the retain flag and the packet id. With Receive Maximum 1 the broker sends the next
    QoS 1 message only once the one before is acknowledged, which takes that packet id."""
    got: queue.Queue[Received] = queue.Queue()
    sender = MqttSession(broker.address, "sender")
    receiver = MqttSession(broker.address, "receiver", manual_ack=True, receive_maximum=1)
    receiver.subscribe("test/received", got.put, qos=1)
    sender.start()
    try:
        assert sender.wait_connected(TIMEOUT)
        sender.publish("test/received", b"kept", qos=1, retain=True).wait_for_publish(TIMEOUT)
        receiver.start()
        first = got.get(timeout=TIMEOUT)  # the retained one, as the subscription is made
        for payload in (b"one", b"two"):
            sender.publish("test/received", payload, qos=1).wait_for_publish(TIMEOUT)
        receiver.ack(first)
        second = got.get(timeout=TIMEOUT)
        receiver.ack(second)
        third = got.get(timeout=TIMEOUT)
        receiver.ack(third)
    finally:
        receiver.stop()
        sender.stop()
    assert type(first) is Received
    assert (first.topic, first.payload, first.qos, first.retain) == (
        "test/received", b"kept", 1, True)
    assert [(m.payload, m.retain) for m in (second, third)] == [(b"one", False), (b"two", False)]
    assert all(m.packet_id > 0 for m in (first, second, third))
