"""Frames to the replica that has room for them, not to each replica in turn.

Mosquitto deals a shared subscription's messages to its members in turn, whatever each one's
load: a member whose Receive Maximum is full gets its turn's messages queued all the same
(checked with 2.0.11), so a slow or busy board holds frames a free one could compute now.
Here each replica says how many more frames it takes (`RoomKeeper`, on `room/<k>/<node>`) and
a sender (a camera, the stage before) gives each frame to the replica with the most room, on
that replica's own topic (`Dispatcher`); when all are full, to the least overcommitted, where
it waits at the broker. With no replica speaking the frame goes to the stage's topic as
before, where the broker deals it: publishers that know nothing of this keep working. A
replica that dies stops speaking: its offer expires (`ROOM_TTL`), or goes at once with its
Last Will.
docs/architecture.md, section Dispatch.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiotedge.contracts.room import Room
from aiotedge.contracts.topics import OFFLINE, Topics
from aiotedge.nodes.mqtt.transport import Received, Session

log = logging.getLogger(__name__)

#: seconds between a replica's room messages when nothing changes
ROOM_EVERY = 1.0
#: seconds after which a sender no longer counts an offer it has not heard again
ROOM_TTL = 5 * ROOM_EVERY
#: senders a replica keeps counting frames for (the oldest is forgotten first)
SENDERS_KEPT = 32


class RoomKeeper:
    """A replica's room: frames it took and has not finished, against its capacity.

    `say` publishes a room message; it is called when room frees up and every `every` seconds
    (a sender forgets a replica that stops speaking), from the caller's thread.
    """

    def __init__(self, capacity: int, say: Callable[[Room], None],
                 every: float = ROOM_EVERY) -> None:
        self.capacity = capacity
        self._say = say
        self._every = every
        self._lock = threading.Lock()
        self._busy = 0
        self._received: OrderedDict[str, int] = OrderedDict()
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._repeat, name="room", daemon=True)

    @property
    def busy(self) -> int:
        with self._lock:
            return self._busy

    def took(self, sender: str | None) -> None:
        """A frame arrived: from `sender` on this replica's own topic, or (None) the stage's."""
        with self._lock:
            self._busy += 1
            if sender is not None:
                self._received[sender] = self._received.pop(sender, 0) + 1
                if len(self._received) > SENDERS_KEPT:
                    self._received.popitem(last=False)

    def finished(self) -> None:
        """A frame is done with (passed on, refused or dropped): room for one more."""
        with self._lock:
            self._busy = max(0, self._busy - 1)
        self.say()

    def room(self) -> Room:
        with self._lock:
            if self._closed:
                return Room(0, 0, dict(self._received))
            return Room(max(0, self.capacity - self._busy), self.capacity, dict(self._received))

    def say(self) -> None:
        self._say(self.room())

    def start(self) -> None:
        """Offer room from now on (once the replica serves)."""
        self.say()
        self._thread.start()

    def close(self) -> None:
        """Take no more frames (stopping): said as capacity 0, senders turn to the other
        replicas at once."""
        with self._lock:
            self._closed = True
        self._stop.set()
        self.say()

    def _repeat(self) -> None:
        while not self._stop.wait(self._every):
            self.say()


@dataclass
class _Offer:
    room: Room
    heard_at: float
    #: frames this sender sent to the replica so far
    sent: int = 0
    #: this sender's choice that last chose it (ties go to the one chosen longest ago)
    chosen_at: int = 0


class RoomBook:
    """A sender's view of a stage's replicas: who serves, how much room each has, who gets a
    frame.

    A replica's room for this sender is what it offered minus the frames sent to it that it
    had not received when it spoke; below zero when frames wait for it. A replica serves while
    it speaks (an offer older than `ttl` counts as none) and has not said it stops (capacity 0)
    or gone offline.
    """

    def __init__(self, sender: str, ttl: float = ROOM_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sender = sender
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Condition()
        self._offers: dict[str, _Offer] = {}
        self._choices = 0

    def offered(self, node: str, room: Room) -> None:
        with self._lock:
            offer = self._offers.get(node)
            if offer is None:
                self._offers[node] = _Offer(room, self._clock())
            else:
                offer.room, offer.heard_at = room, self._clock()
            self._lock.notify_all()

    def gone(self, node: str) -> None:
        """The replica went offline: no frame for it until it offers room again."""
        with self._lock:
            self._offers.pop(node, None)
            self._lock.notify_all()

    def free(self, node: str) -> int:
        with self._lock:
            offer = self._offers.get(node)
            return 0 if offer is None else self._free(offer)

    def serving(self) -> set[str]:
        """The replicas that take frames now."""
        with self._lock:
            return set(self._serving())

    def wait_serving(self, nodes: set[str], timeout: float) -> bool:
        """Wait until exactly `nodes` take frames (a bench or a test starting on a known
        dispatch); False if they did not within `timeout`."""
        with self._lock:
            return self._lock.wait_for(lambda: set(self._serving()) == nodes, timeout)

    def choose(self) -> str | None:
        """The serving replica with the most room (counted as taken), ties to the one chosen
        longest ago; None if none serves.

        When every one is full the frame still goes to one that serves, where it waits at
        the broker (QoS 1): on the stage's topic it could be dealt to a replica that stopped
        and kept its session.
        """
        with self._lock:
            serving = self._serving()
            if not serving:
                return None
            best = max(serving, key=lambda node: (self._free(serving[node]),
                                                  -serving[node].chosen_at))
            self._choices += 1
            serving[best].sent += 1
            serving[best].chosen_at = self._choices
            return best

    def _serving(self) -> dict[str, _Offer]:
        now = self._clock()
        return {node: offer for node, offer in self._offers.items()
                if now - offer.heard_at <= self._ttl and offer.room.capacity > 0}

    def _free(self, offer: _Offer) -> int:
        in_transit = max(0, offer.sent - offer.room.received.get(self.sender, 0))
        return offer.room.free - in_transit


class Dispatcher:
    """Where a sender publishes its next frame for stage `index`: a replica's own topic, or
    the stage's. Follows the replicas' room messages and availability on `session`."""

    def __init__(self, session: Session, topics: Topics, index: int, sender: str,
                 ttl: float = ROOM_TTL) -> None:
        self.topics = topics
        self.index = index
        # a run of its own: counts a replica kept for an earlier run of this sender must not
        # be taken for frames of this one
        self.sender = f"{sender}.{secrets.token_hex(3)}"
        self.book = RoomBook(self.sender, ttl)
        self._rooms = topics.stage_rooms(index)
        session.subscribe(self._rooms, self._on_room, qos=0)
        session.subscribe(topics.all_availability, self._on_availability, qos=0)

    def topic(self) -> str:
        node = self.book.choose()
        if node is None:
            return self.topics.stage_input(self.index)
        return self.topics.replica_input(self.index, node, self.sender)

    def _on_room(self, message: Received) -> None:
        room = Room.parse(message.payload)
        if room is None:
            log.debug("not a room message on %s", message.topic)
            return
        self.book.offered(message.topic.rsplit("/", 1)[-1], room)

    def _on_availability(self, message: Received) -> None:
        if message.payload == OFFLINE.encode():
            self.book.gone(message.topic.rsplit("/", 1)[-1])
