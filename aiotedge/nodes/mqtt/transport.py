"""What the nodes know of their MQTT connection: a received message and the session's interface.

The nodes speak to the broker through these types only; `MqttSession` (aiotedge.nodes.mqtt.session)
is the one implementation, and the one module that knows the MQTT client library. A unit test
gives a node a fake that has the same shape. Home Assistant's MQTT integration keeps its own
received-message type the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Received:
    """One message from the broker. The payload is the client's own bytes, never a copy (a
    photo is 0.5 MB); `packet_id` is what acknowledging it takes (0 at QoS 0)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    packet_id: int = 0


MessageHandler = Callable[[Received], None]
#: called with the broker's answer (e.g. "Not authorized") when it refuses a subscription
RefusalHandler = Callable[[str], None]
#: called with `refused` once the broker answered a QoS 1 publish
PublishCallback = Callable[[bool], None]


class Messaging(Protocol):
    """What a part of a node that shares the node's session uses of it (the pipeline's
    availability, the Home Assistant bridge, the chain watch)."""

    def subscribe(
        self, topic: str, handler: MessageHandler, qos: int = 1, share_group: str | None = None,
        *, on_refused: RefusalHandler | None = None, retained: bool = True,
    ) -> None: ...

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> object:
        """What it returns is the implementation's own (a handle one may wait on)."""

    def announce(self, topic: str, payload: str) -> None: ...

    def withdraw(self, topic: str) -> None: ...


class Session(Messaging, Protocol):
    """What a node's daemon (a stage, a camera) and its lifecycle use of its session."""

    @property
    def client_id(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def connected(self) -> bool: ...

    @property
    def reconnects(self) -> int: ...

    @property
    def refused(self) -> int: ...

    @property
    def unrouted(self) -> int: ...

    @property
    def unacknowledged(self) -> int: ...

    @property
    def connection_problem(self) -> str | None: ...

    @property
    def last_problem(self) -> str | None: ...

    def unsubscribe_on_connect(self, topic_filter: str) -> None: ...

    def publish_confirmed(
        self, topic: str, payload: bytes | str, qos: int, on_confirmed: PublishCallback
    ) -> None: ...

    def forward(self, topic: str, payload: bytes | str, qos: int, source: Received) -> None: ...

    def ack(self, message: Received) -> None: ...

    def input_waiting(self) -> bool: ...

    def wait_acknowledged(self, timeout: float | None, at_most: int = 0) -> bool: ...

    def start(self) -> None: ...

    def wait_connected(self, timeout: float | None = None) -> bool: ...

    def first_attempt(self, timeout: float | None = None) -> str | None: ...

    def set_online(self) -> None: ...

    def stop(self, timeout: float = 5.0, end_session: bool = False) -> None: ...
