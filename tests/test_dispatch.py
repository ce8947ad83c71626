"""The dispatch's bookkeeping alone, on fakes: what a replica offers, and which replica a sender
gives a frame to. The same on a real mosquitto with stage daemons: test_dispatch_broker.py."""

from __future__ import annotations

from aiotedge.contracts.room import Room
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.mqtt.transport import MessageHandler, Received
from aiotedge.nodes.observe.dispatch import ROOM_TTL, SENDERS_KEPT, Dispatcher, RoomBook, RoomKeeper

TOPICS = Topics("unit")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_room_message_reads_back_and_junk_is_none():
    room = Room(2, 4, {"cam.ab12": 7})
    assert Room.parse(room.to_json()) == room
    for junk in (b"", b"[]", b'{"free": -1, "capacity": 4}', b'{"free": 1}',
                 b'{"free": 1, "capacity": 2, "received": {"x": "3"}}', b'{"free": true, '
                 b'"capacity": 2}', b"\xff"):
        assert Room.parse(junk) is None, junk


def test_a_replica_offers_its_capacity_less_what_it_holds_and_counts_each_senders_frames():
    said: list[Room] = []
    keeper = RoomKeeper(3, said.append)
    keeper.took("cam.1")
    keeper.took(None)  # from the stage's own topic: held all the same, counted for nobody
    keeper.took("cam.1")
    assert keeper.room() == Room(0, 3, {"cam.1": 2})
    keeper.finished()  # room frees up: said at once
    assert said == [Room(1, 3, {"cam.1": 2})]
    keeper.close()
    assert said[-1] == Room(0, 0, {"cam.1": 2})  # a replica that stops takes nothing more


def test_a_replica_forgets_the_oldest_sender_first():
    keeper = RoomKeeper(1, lambda _room: None)
    for sender in range(SENDERS_KEPT + 1):
        keeper.took(f"s{sender}")
    received = keeper.room().received
    assert len(received) == SENDERS_KEPT and "s0" not in received


def test_frames_go_to_the_replica_with_the_most_room_ties_in_turn():
    book = RoomBook("cam.1", clock=Clock())
    assert book.choose() is None  # nobody serves: the stage's topic
    book.offered("a", Room(1, 4))
    book.offered("b", Room(3, 4))
    assert [book.choose() for _ in range(4)] == ["b", "b", "a", "b"]
    # every room taken: still a replica that serves (the frame waits for it at the broker),
    # never the stage's topic, where the broker may deal it to a replica that stopped
    assert [book.choose() for _ in range(3)] == ["a", "b", "a"]


def test_room_that_crossed_frames_on_the_way_is_not_counted_twice():
    book = RoomBook("cam.1", clock=Clock())
    book.offered("a", Room(2, 2))
    assert [book.choose(), book.choose()] == ["a", "a"]
    # said after the first frame arrived, before the second: one frame on the way
    book.offered("a", Room(1, 2, {"cam.1": 1}))
    assert book.free("a") == 0
    book.offered("a", Room(1, 2, {"cam.1": 2, "other.9": 5}))  # the first one done
    assert book.choose() == "a"


def test_a_replica_that_stops_speaking_or_goes_offline_gets_no_more_frames():
    clock = Clock()
    book = RoomBook("cam.1", clock=clock)
    book.offered("a", Room(2, 2))
    book.offered("b", Room(2, 2))
    clock.now += ROOM_TTL / 2
    book.offered("b", Room(2, 2))
    book.offered("c", Room(2, 2))
    book.offered("c", Room(0, 0))  # stopping: takes nothing more
    clock.now += ROOM_TTL / 2 + 0.1  # a last spoke more than the TTL ago: dead, or cut off
    assert book.serving() == {"b"}
    book.gone("b")
    assert book.choose() is None


class FakeSession:
    client_id = "fake"

    def __init__(self) -> None:
        self.handlers: dict[str, list[MessageHandler]] = {}

    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1, *_args,
                  **_kwargs) -> None:
        self.handlers.setdefault(topic, []).append(handler)

    def deliver(self, topic_filter: str, topic: str, payload: bytes) -> None:
        for handler in self.handlers[topic_filter]:
            handler(Received(topic, payload, 0, False, 0))


def test_the_dispatcher_follows_room_and_availability_and_falls_back_to_the_stage_topic():
    session = FakeSession()
    dispatch = Dispatcher(session, TOPICS, 1, "stage0-a")  # type: ignore[arg-type]
    assert dispatch.topic() == TOPICS.stage_input(1)  # nobody offers room
    session.deliver(TOPICS.stage_rooms(1), TOPICS.room(1, "r1"), Room(1, 4).to_json().encode())
    session.deliver(TOPICS.stage_rooms(1), TOPICS.room(1, "r2"), b"not json")
    topic = dispatch.topic()
    assert topic == TOPICS.replica_input(1, "r1", dispatch.sender)
    assert dispatch.sender.startswith("stage0-a.")
    session.deliver(TOPICS.stage_rooms(1), TOPICS.room(1, "r1"), Room(4, 4).to_json().encode())
    session.deliver(TOPICS.all_availability, TOPICS.availability("r1"), b"offline")
    assert dispatch.topic() == TOPICS.stage_input(1)
