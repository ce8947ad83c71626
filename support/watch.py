"""Reading a pipeline from the broker as an outsider does: what it retains, its nodes coming
online."""

from __future__ import annotations

import threading
from collections.abc import Callable

from aiotedge.nodes.mqtt.session import MqttSession, read_retained


def retained_now(broker, topics) -> dict[str, bytes]:
    """Topic -> payload of what the broker retains now for a pipeline and Home Assistant."""
    session = MqttSession(broker.address, "reader")
    session.start()
    assert session.wait_connected(10)
    try:
        return read_retained(session, [f"{topics.base}/#", "homeassistant/#"],
                             topics.probe("reader"))
    finally:
        session.stop()


def wait_all_online(broker, nodes: list[str], timeout: float = 60.0) -> None:
    """Block until every node has said `online` (they do so again after reconnecting)."""
    online: set[str] = set()
    changed = threading.Condition()

    def record(message) -> None:
        with changed:
            node = message.topic.rsplit("/", 1)[-1]
            (online.add if message.payload == b"online" else online.discard)(node)
            changed.notify_all()

    watcher = MqttSession(broker.address, "availability-watcher")
    watcher.subscribe("aiotedge/local/availability/+", record)
    watcher.start()
    try:
        with changed:
            assert changed.wait_for(lambda: set(nodes) <= online, timeout), online
    finally:
        watcher.stop()


class Recorder:
    """Every message on some topics, in order, and a wait for the one that ends a test."""

    def __init__(self, broker, topic_filters: list[str]) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._changed = threading.Condition()
        self.session = MqttSession(broker.address, "recorder")
        for topic_filter in topic_filters:
            self.session.subscribe(topic_filter, self._take)
        self.session.start()
        assert self.session.wait_connected(10)

    def _take(self, message) -> None:
        with self._changed:
            self.messages.append((message.topic, message.payload))
            self._changed.notify_all()

    def wait_for(self, found: Callable[[list[tuple[str, bytes]]], bool],
                 timeout: float = 30.0) -> list[tuple[str, bytes]]:
        with self._changed:
            if not self._changed.wait_for(lambda: found(self.messages), timeout):
                raise AssertionError(f"not found in {self.messages}")
            return list(self.messages)


def read_retained_one(broker, topic: str) -> bytes:
    """The message the broker retains on a topic (it sends it on subscribing)."""
    got: list[bytes] = []
    arrived = threading.Event()
    session = MqttSession(broker.address, "snapshot-reader")

    def take(message) -> None:
        got.append(message.payload)
        arrived.set()

    session.subscribe(topic, take)
    session.start()
    try:
        assert arrived.wait(30), f"nothing retained on {topic}"
    finally:
        session.stop()
    return got[0]
