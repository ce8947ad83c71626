"""The pipeline's retained availability, and the Home Assistant entities that follow it, with
stage daemons (`run_stage`, as `aiotedge stage` runs it) on a real mosquitto: it changes once
when a stage stops, it stays while a replica of the last stage serves, and a retired pipeline
stays retired. The rule itself (one owner, changes only) is checked on a fake session too."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import pytest

from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import HomeAssistantConfig, PipelineConfig, StageConfig
from aiotedge.contracts.events import NodeInfo
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.daemons.retire import retire
from aiotedge.nodes.daemons.stage import run_stage
from aiotedge.nodes.mqtt.session import MqttSession
from aiotedge.nodes.mqtt.transport import MessageHandler, Received, RefusalHandler
from aiotedge.nodes.observe.health import PipelineAvailability
from support.watch import retained_now
from tests.homeassistant_schema import available

TOPICS = Topics("shelf")
PIPELINE = TOPICS.pipeline_availability
DISCOVERY = "homeassistant/sensor/aiotedge_shelf"
#: seconds any one awaited event may take
TIMEOUT = 60.0


class Recorder:
    """Every message a subscriber gets on `filters`, in order, from its subscription on."""

    def __init__(self, broker, filters: list[str]) -> None:
        self.messages: list[tuple[str, str]] = []
        self._changed = threading.Condition()
        self._session = MqttSession(broker.address, "recorder")
        for topic_filter in [*filters, TOPICS.probe("recorder")]:
            self._session.subscribe(topic_filter, self._record)
        self._session.start()
        assert self._session.wait_connected(10)

    def _record(self, message) -> None:
        with self._changed:
            self.messages.append((message.topic, message.payload.decode()))
            self._changed.notify_all()

    def said(self, topic: str) -> list[str]:
        with self._changed:
            return [payload for said_on, payload in self.messages if said_on == topic]

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        with self._changed:
            assert self._changed.wait_for(condition, TIMEOUT), f"no {what} within {TIMEOUT} s"

    def wait_said(self, topic: str, payload: str, after: int = 0) -> None:
        """Until `payload` comes on `topic` as its message number `after` or later."""
        self.wait_for(lambda: payload in self.said(topic)[after:], f"{payload!r} on {topic}")

    def everything_in(self) -> None:
        """Until the broker delivered all it had: a message of our own comes after them."""
        seen = len(self.said(TOPICS.probe("recorder")))
        self._session.publish(TOPICS.probe("recorder"), b"", qos=1)
        self.wait_for(lambda: len(self.said(TOPICS.probe("recorder"))) > seen, "probe back")

    def close(self) -> None:
        self._session.stop()


class Stages:
    """Stage daemons of one split, each in a thread of this process, stopped as systemd stops
    them (their stop event instead of SIGTERM)."""

    def __init__(self, broker, manifest, recorder: Recorder) -> None:
        self._broker = broker
        self._manifest = manifest
        self._recorder = recorder
        self.configs: dict[str, NodeConfig] = {}
        self._running: dict[str, tuple[threading.Event, threading.Thread]] = {}

    def start(self, node: str, index: int, share_group: str = "",
              discovery: bool = False) -> None:
        """Start it and wait until it says it is online."""
        config = NodeConfig(
            broker=self._broker.address, pipeline=PipelineConfig(name=TOPICS.pipeline),
            stage=StageConfig(manifest=str(self._manifest.directory), index=index, node=node,
                              share_group=share_group),
            homeassistant=HomeAssistantConfig(discovery=discovery), source=f"test ({node})")
        said = len(self._recorder.said(TOPICS.availability(node)))
        stop = threading.Event()
        thread = threading.Thread(target=run_stage, args=(config, stop), name=node)
        thread.start()
        self.configs[node] = config
        self._running[node] = (stop, thread)
        self._recorder.wait_said(TOPICS.availability(node), "online", said)

    def stop(self, node: str) -> None:
        """Stop it; back once it has said offline."""
        stop, thread = self._running.pop(node)
        stop.set()
        thread.join(TIMEOUT)
        assert not thread.is_alive(), f"{node} did not stop"

    def stop_all(self) -> None:
        for node in list(self._running):
            self.stop(node)


@pytest.fixture
def running(broker, split3) -> Iterator[tuple[Stages, Recorder]]:
    recorder = Recorder(broker, [PIPELINE, TOPICS.all_availability, f"{DISCOVERY}/+/config"])
    stages = Stages(broker, split3, recorder)
    try:
        yield stages, recorder
    finally:
        stages.stop_all()
        recorder.close()


def test_a_stage_that_stops_changes_the_pipelines_availability_once(running):
    stages, recorder = running
    for node, index in (("s0", 0), ("s1", 1), ("s2", 2)):
        stages.start(node, index)
    recorder.wait_said(PIPELINE, "online")
    recorder.everything_in()
    assert recorder.said(PIPELINE) == ["online"]  # once, when the last one came
    stages.stop("s1")
    recorder.wait_said(PIPELINE, "offline")
    stages.stop_all()  # the pipeline is offline already: nothing more to say
    recorder.everything_in()
    assert recorder.said(PIPELINE)[1:] == ["offline"]


def entities(retained: dict[str, bytes]) -> dict[str, dict]:
    return {topic: json.loads(payload) for topic, payload in retained.items()
            if topic.startswith(f"{DISCOVERY}/")}


def test_the_entities_stay_available_while_a_replica_of_the_last_stage_serves(broker, running):
    stages, recorder = running
    stages.start("s0", 0)
    stages.start("s1", 1)
    stages.start("s2a", 2, share_group="stage2", discovery=True)
    stages.start("s2b", 2, share_group="stage2", discovery=True)
    recorder.wait_said(PIPELINE, "online")
    recorder.wait_for(lambda: len([t for t, _ in recorder.messages  # two from each replica
                                   if t.startswith(DISCOVERY)]) == 4, "the health sensors")
    retained = retained_now(broker, TOPICS)
    announced = entities(retained)
    assert announced and all(available(config, retained) for config in announced.values())
    # the replica whose discovery messages the broker kept (each names its own stats)
    last = announced[f"{DISCOVERY}/fps/config"]["state_topic"].rsplit("/", 1)[-1]
    other = "s2b" if last == "s2a" else "s2a"
    stages.stop(last)
    retained = retained_now(broker, TOPICS)
    assert all(available(config, retained) for config in entities(retained).values())
    stages.stop(other)
    recorder.wait_said(PIPELINE, "offline")
    retained = retained_now(broker, TOPICS)
    assert not any(available(config, retained) for config in entities(retained).values())
    stages.stop_all()
    recorder.everything_in()
    assert recorder.said(PIPELINE) == ["online", "offline"]


def test_a_retired_pipeline_is_not_brought_back_by_the_stages_still_running(broker, running):
    stages, recorder = running
    stages.start("s0", 0)
    stages.start("s1", 1)
    stages.start("s2", 2, discovery=True)
    recorder.wait_said(PIPELINE, "online")
    stages.stop("s2")
    recorder.wait_said(PIPELINE, "offline")
    recorder.everything_in()
    before = len(recorder.said(PIPELINE))
    done = retire(stages.configs["s2"], "s2")
    assert done.pipeline and PIPELINE in done.cleared
    # a new last stage: the pipeline is back, and nothing came in between
    stages.start("s2new", 2)
    recorder.wait_said(PIPELINE, "online", before)
    recorder.everything_in()
    assert recorder.said(PIPELINE)[before:] == ["", "online"]
    assert not entities(retained_now(broker, TOPICS))


# -- the rule, on a fake session ------------------------------------------------------------------


class FakeSession:
    """It has the shape of the `Messaging` part of a session (tests/test_transport.py checks
    it)."""

    def __init__(self) -> None:
        self.handlers: dict[str, MessageHandler] = {}
        self.said: list[str] = []
        #: what it would say again after a reconnect
        self.announced: dict[str, str] = {}

    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1,
                  share_group: str | None = None, *, on_refused: RefusalHandler | None = None,
                  retained: bool = True) -> None:
        assert qos == 0  # a stage acknowledges its QoS 1 messages by hand
        self.handlers[topic] = handler

    def publish(self, topic: str, payload: bytes | str, qos: int = 0,
                retain: bool = False) -> None:
        raise AssertionError("the pipeline's availability is announced, never just published")

    def announce(self, topic: str, payload: str) -> None:
        assert topic == PIPELINE
        self.said.append(payload)
        self.announced[topic] = payload

    def withdraw(self, topic: str) -> None:
        self.announced.pop(topic, None)

    def deliver(self, topic: str, payload: bytes) -> None:
        handler = self.handlers[topic if topic == PIPELINE else topic.rsplit("/", 1)[0] + "/+"]
        handler(Received(topic, payload))


SPEC = TensorSpec("t", (1, 4), "uint8", 0.5, 0)


def info(name: str, stage: int) -> bytes:
    return NodeInfo(name, stage, 3, "a" * 64, "net.tflite", SPEC, SPEC).to_json().encode()


def test_only_the_first_online_stage_by_name_says_it_and_only_when_it_changes():
    sessions = {node: FakeSession() for node in ("s0", "s1", "s2")}
    keepers = {node: PipelineAvailability(session, TOPICS, node)
               for node, session in sessions.items()}
    said: list[tuple[str, str]] = []

    def broadcast(topic: str, payload: bytes) -> None:
        """Deliver to every node, then what each said because of it (as the broker would)."""
        for session in sessions.values():
            session.deliver(topic, payload)
        drain()

    def drain() -> None:
        for node, session in sessions.items():
            while session.said:
                state = session.said.pop(0)
                said.append((node, state))
                broadcast(PIPELINE, state.encode())

    broadcast(PIPELINE, b"offline")  # from before
    for node, stage in (("s0", 0), ("s1", 1), ("s2", 2)):
        broadcast(TOPICS.info(node), info(node, stage))
        broadcast(TOPICS.availability(node), b"online")
    assert said == [("s0", "online")]
    keepers["s1"].leaving()  # not the owner: says nothing; the owner sees it go
    broadcast(TOPICS.availability("s1"), b"offline")
    broadcast(TOPICS.availability("s1"), b"online")
    assert said == [("s0", "online"), ("s0", "offline"), ("s0", "online")]
    assert PIPELINE not in sessions["s2"].announced  # not the owner: not said after reconnects
    keepers["s0"].leaving()  # the owner: says the pipeline without it, then goes
    drain()
    broadcast(TOPICS.availability("s0"), b"offline")  # s1, now the owner, agrees: silent
    assert said[3:] == [("s0", "offline")]
    broadcast(PIPELINE, b"")  # `aiotedge retire`
    broadcast(TOPICS.availability("s2"), b"offline")
    assert said[4:] == [] and PIPELINE not in sessions["s1"].announced  # stays retired
