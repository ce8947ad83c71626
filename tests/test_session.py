"""MqttSession against a real mosquitto: what the session can tell about its connection."""

from __future__ import annotations

import threading
import time

from aiotedge.nodes.session import MqttSession

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
