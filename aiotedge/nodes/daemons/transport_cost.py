"""What moving one message through MQTT costs a node's CPU (for `aiotedge profile`).

A stage pays for every frame twice besides its segment: receiving its input (paho's network
thread reads and parses it, the worker takes it from the queue and acknowledges it) and
publishing its output (the worker writes it, the network thread handles the broker's
acknowledgement). Both are measured here with the node's own MQTT session class against a
private mosquitto on loopback: a sender and a receiver session in this process, one message
at a time, each thread's CPU clock read before and after, so the broker's own work (another
process) and the time spent waiting are not counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiotedge.config.sections import BrokerConfig
from aiotedge.contracts.errors import BrokerError
from aiotedge.contracts.profile import Transport, TransportSample
from aiotedge.nodes.mqtt.broker import LocalBroker
from aiotedge.nodes.mqtt.session import CLIENT_LIBRARY, MqttSession
from aiotedge.nodes.mqtt.transport import Received

log = logging.getLogger(__name__)

TOPIC = "aiotedge-profile/hop"
MESSAGES = 40
WARMUP = 5
#: bound for one message's round; never a synchronisation
TIMEOUT = 10.0


def _cpu_clock(thread: threading.Thread) -> Callable[[], float]:
    """That thread's CPU time in seconds, readable from any thread."""
    assert thread.ident is not None
    clock = time.pthread_getcpuclockid(thread.ident)
    return lambda: time.clock_gettime(clock)


@dataclass(frozen=True)
class _End:
    """One end of the hop: its session, and the CPU clock of the session's network thread."""

    session: MqttSession
    network_cpu: Callable[[], float]


@contextmanager
def _connected(broker: BrokerConfig, client_id: str, **options: Any) -> Iterator[_End]:
    """A started session and the CPU clock of its network thread."""
    session = MqttSession(broker, client_id, **options)
    before = set(threading.enumerate())
    session.start()
    try:
        if not session.wait_connected(TIMEOUT):
            raise BrokerError(f"no connection to the private broker at {broker}")
        started = [t for t in set(threading.enumerate()) - before if t.ident is not None]
        if len(started) != 1:
            raise BrokerError(f"expected one network thread, found {len(started)}")
        yield _End(session, _cpu_clock(started[0]))
    finally:
        session.stop()


def measure_mqtt(sizes: Sequence[int], messages: int = MESSAGES) -> Transport:
    """Publish and receive CPU per message of each size, through a private mosquitto."""
    with LocalBroker() as broker:
        inbox: queue.Queue[Received] = queue.Queue()
        with _connected(broker.address, "profile-receiver", manual_ack=True,
                        receive_maximum=4) as receiver, \
                _connected(broker.address, "profile-sender") as sender:
            receiver.session.subscribe(TOPIC, inbox.put, qos=1)
            _wait_routed(sender.session, receiver.session, inbox)
            samples = [_sample(size, messages, inbox, sender, receiver)
                       for size in sorted(set(sizes))]
    return Transport(f"{CLIENT_LIBRARY}, a private mosquitto on loopback, QoS 1",
                     tuple(samples))


def _wait_routed(sender: MqttSession, receiver: MqttSession,
                 inbox: queue.Queue[Received]) -> None:
    """Until the subscription is in place: probes published before it go nowhere."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        sender.publish(TOPIC, b"probe", qos=0)
        try:
            probe = inbox.get(timeout=0.1)
        except queue.Empty:
            continue
        receiver.ack(probe)
        while not inbox.empty():  # probes that were still on their way
            receiver.ack(inbox.get_nowait())
        return
    raise BrokerError("the private broker did not route messages to the receiver")


def _sample(size: int, messages: int, inbox: queue.Queue[Received],
            sender: _End, receiver: _End) -> TransportSample:
    """One message of `size` at a time: each end's CPU per message, and the wall time."""
    payload = bytes(size)
    confirmed = threading.Semaphore(0)
    publish = receive = one_way = 0.0
    for number in range(WARMUP + messages):
        if number == WARMUP:
            nets = sender.network_cpu(), receiver.network_cpu()
            publish = receive = one_way = 0.0
        start_cpu, start_wall = time.thread_time(), time.perf_counter()
        sender.session.publish_confirmed(TOPIC, payload, 1, lambda _refused: confirmed.release())
        sent_cpu = time.thread_time()
        message = inbox.get(timeout=TIMEOUT)  # waiting costs no CPU; waking up does
        got_wall = time.perf_counter()
        receiver.session.ack(message)
        publish += sent_cpu - start_cpu
        receive += time.thread_time() - sent_cpu
        one_way += got_wall - start_wall
        if not confirmed.acquire(timeout=TIMEOUT):
            raise BrokerError("the private broker did not acknowledge a message")
    publish += sender.network_cpu() - nets[0]
    receive += receiver.network_cpu() - nets[1]
    scale = 1000.0 / messages
    return TransportSample(size, publish * scale, receive * scale, one_way * scale)
