"""Reading a pipeline from the broker as an outsider does: what it retains, its nodes coming
online."""

from __future__ import annotations

import threading

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
