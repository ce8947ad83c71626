"""What the broker security tests share: the example cluster, each node's rights, and the checks
run against both shipped broker setups (configs/mosquitto/secure.conf with its ACL, and
secure-dynsec.conf with the dynamic-security plugin). The throwaway certificates, the shipped
configs pointed at them and the bare MQTT probe are in support/security.py; fixtures built on
them are in conftest.py.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import BrokerConfig
from aiotedge.contracts.events import NodeInfo, Prediction, Score
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.daemons.stage import stage_session
from aiotedge.nodes.daemons.status import collect_status
from aiotedge.nodes.mqtt.broker import LocalBroker
from aiotedge.nodes.mqtt.session import MqttSession, wait_settled
from aiotedge.nodes.mqtt.transport import Received
from aiotedge.nodes.observe.chain import check_chain
from aiotedge.nodes.observe.health import PipelineAvailability
from aiotedge.nodes.observe.homeassistant import (
    HomeAssistantBridge,
    event_entities,
    health_sensors,
    label_sensor,
)
from support.paths import REPO
from support.security import ACL, TIMEOUT, Probe, refused

CLUSTER = REPO / "configs" / "cluster"
STAGES = 5
#: a second board serving stage 2, added as docs/deploy-pi-cluster.md says
REPLICA = "stage2b"
#: times the thief connects with a stage's client id
TAKEOVERS = 3
NOT_AUTHORIZED = 0x87
T = TypeVar("T")


def load_cluster() -> dict[str, NodeConfig]:
    """The nodes' configs: stage0 .. stage4 and camera (not watcher.toml, for tools)."""
    return {path.stem: NodeConfig.load(path) for path in sorted(CLUSTER.glob("*.toml"))
            if path.stem != "watcher"}


def is_camera(config: NodeConfig) -> bool:
    return bool(config.camera.source)


def node_name(config: NodeConfig) -> str:
    """The name a node's availability and stats topics carry."""
    return config.camera.name if is_camera(config) else config.stage.node


def write_acl_with_replica(out: Path) -> Path:
    """The shipped ACL and the replica's user with stage 2's `topic` lines, as it says."""
    text = ACL.read_text()
    stage2 = re.search(r"^user stage2\n((?:topic .*\n)+)", text, flags=re.MULTILINE)
    assert stage2, "aiotedge.acl has no `user stage2` block: update this test"
    out.write_text(f"{text}\nuser {REPLICA}\n{stage2.group(1)}")
    return out


def next_item(inbox: queue.Queue[T], name: str) -> T:
    """The next message `name` receives; the test fails if none comes within TIMEOUT."""
    try:
        return inbox.get(timeout=TIMEOUT)
    except queue.Empty:
        pytest.fail(f"{name} received nothing more within {TIMEOUT} s")


# -- who may write and read what ----------------------------------------------------------------


#: what the Home Assistant checks take for the model (only its file name is announced)
MODEL = SimpleNamespace(source=SimpleNamespace(file="model.tflite"))
#: the camera whose Home Assistant sensor the checks look for
CAMERA = "cam0"
#: a label a camera tracks ([events] labels): its rights do not depend on which
LABEL = "person"


def camera_event_topics(topics: Topics, camera: str, prefix: str = "homeassistant") -> set[str]:
    """What a camera that tracks a label writes about it: the events, its count, its events'
    snapshot, its own Home Assistant device."""
    return {topics.events, topics.count(camera, LABEL), topics.event_snapshot(camera, LABEL),
            *(topic for topic, _ in event_entities(topics, camera, LABEL, prefix))}


def home_assistant_topics(config: NodeConfig) -> set[str]:
    """What the last stage publishes for Home Assistant: the entities of the pipeline's health
    and of one camera, and that camera's label."""
    topics = Topics(config.pipeline.name, config.pipeline.prefix)
    name, prefix = node_name(config), config.homeassistant.prefix
    announced = [*health_sensors(topics, MODEL, name, prefix),
                 label_sensor(topics, MODEL, name, CAMERA, prefix)]
    return {topic for topic, _ in announced} | {topics.label(CAMERA)}


def allowed_writes(config: NodeConfig) -> set[str]:
    """What the brief of each node says it publishes: nothing more."""
    topics = Topics(config.pipeline.name, config.pipeline.prefix)
    name = node_name(config)
    own = {topics.errors, topics.availability(name), topics.info(name), topics.stats(name)}
    if is_camera(config):
        return own | {topics.stage_input(0), topics.snapshot(name)} | camera_event_topics(
            topics, name, config.homeassistant.prefix)
    own.add(topics.pipeline_availability)
    index = config.stage.index
    if index < STAGES - 1:
        return own | {topics.stage_input(index + 1)}
    own.add(topics.predictions)
    if config.homeassistant.discovery:
        own |= home_assistant_topics(config)
    return own


def allowed_reads(config: NodeConfig, published: list[str]) -> set[str]:
    """Its own inputs, and who is online and what they run (every node, for its checks); a
    stage, the pipeline's availability; the last stage, the predictions (for the labels)."""
    topics = Topics(config.pipeline.name, config.pipeline.prefix)
    shared = {t for t in published if t.startswith((topics.availability(""), topics.info("")))}
    if is_camera(config):
        return shared | {topics.predictions, topics.errors}
    shared |= {t for t in published if t == topics.pipeline_availability}
    if config.stage.index == STAGES - 1:
        shared |= {t for t in published if t == topics.predictions}
    return shared | {topics.stage_input(config.stage.index)}


def candidate_topics(configs: dict[str, NodeConfig]) -> list[str]:
    """Every topic some node writes, and some nobody should."""
    topics = Topics("greenhouse")
    names = [node_name(c) for c in configs.values()] + ["watcher"]
    candidates = {topics.stage_input(k) for k in range(STAGES)}
    candidates |= {topics.predictions, topics.errors, topics.probe("someone-else"),
                   topics.pipeline_availability,
                   "aiotedge-frames/orchard/stage/1", "aiotedge/orchard/predictions",
                   "aiotedge/orchard/availability", "homeassistant/status",
                   "homeassistant/sensor/other/config", "$SYS/broker/uptime"}
    for name in names:
        candidates |= {topics.availability(name), topics.info(name), topics.stats(name),
                       topics.snapshot(name), *camera_event_topics(topics, name)}
    for config in configs.values():
        candidates |= allowed_writes(config)
    return sorted(candidates)


# -- checks run against both broker setups ------------------------------------------------------


def check_logins(broker: LocalBroker, pki: Path) -> None:
    """No anonymous client on either listener, no wrong password."""
    for port in (broker.tls_port, broker.port):  # the TLS listener, and the plain loopback one
        anonymous = Probe(port, pki if port == broker.tls_port else None)
        code = anonymous.connect()
        anonymous.close()
        assert refused(code), code
    wrong = Probe(broker.tls_port, pki, "stage1", "not-the-password")
    code = wrong.connect()
    wrong.close()
    assert refused(code), code
    if isinstance(code, ReasonCode):
        assert code.value in (0x86, NOT_AUTHORIZED)  # bad user name or password / not authorized


def check_cluster_logins(broker: LocalBroker, pki: Path, passwords: dict[str, Path]) -> None:
    """Every example node config logs in with its password file and says it is online."""
    watcher = Probe(broker.tls_port, pki, "watcher", passwords["watcher"].read_text().strip())
    assert not refused(watcher.connect())
    watcher.subscribe("aiotedge/greenhouse/availability/+")
    sessions = []
    try:
        for name, config in load_cluster().items():
            topics = Topics(config.pipeline.name, config.pipeline.prefix)
            user = config.broker.username
            settings = dataclasses.replace(
                config.broker, host="127.0.0.1", port=broker.tls_port,
                ca_file=str(pki / "ca.crt"), password_file=str(passwords[user]),
            )
            session = MqttSession(settings, f"{name}-test", topics.availability(node_name(config)))
            sessions.append(session)
            session.start()
            assert session.wait_connected(TIMEOUT), f"{name} did not connect"
            session.set_online()
            assert watcher.messages.get(timeout=TIMEOUT) == (
                topics.availability(node_name(config)), "online"
            ), name
    finally:
        for session in sessions:
            session.stop()
        watcher.close()


def check_status_tool(broker: LocalBroker, pki: Path, passwords: dict[str, Path]) -> None:
    """`aiotedge status` with watcher.toml (retained messages read up to its probe message)."""
    stage2 = Probe(broker.tls_port, pki, "stage2", passwords["stage2"].read_text().strip())
    assert not refused(stage2.connect())
    topics = Topics("greenhouse")
    assert not stage2.publish(topics.availability("stage2"), "online", retain=True).is_failure
    stage2.close()
    tools = NodeConfig.load(CLUSTER / "watcher.toml")  # as `aiotedge status --config` reads it
    watcher = dataclasses.replace(
        tools.broker, host="127.0.0.1", port=broker.tls_port, ca_file=str(pki / "ca.crt"),
        password_file=str(passwords[tools.broker.username]),
    )
    nodes = collect_status(watcher, Topics(tools.pipeline.name), timeout=TIMEOUT)
    assert nodes == {"stage2": {"availability": "online"}}


def collect(probe: Probe, wanted: set[str], name: str) -> dict[str, str]:
    """Topic -> payload of the messages `probe` receives until every topic in `wanted` came."""
    seen: dict[str, str] = {}
    while not wanted <= seen.keys():
        topic, payload = next_item(probe.messages, name)
        seen[topic] = payload
    return seen


def check_home_assistant(broker: LocalBroker, pki: Path, passwords: dict[str, Path]) -> None:
    """Home Assistant's user gets the last stage's discovery messages and what they point at
    (a camera's label, the stats, availability), and its birth message brings discovery again;
    every discovery message follows Home Assistant's documented schema."""
    from tests.homeassistant_schema import problems

    config = load_cluster()["stage4"]
    topics = Topics(config.pipeline.name, config.pipeline.prefix)
    home_assistant = Probe(broker.tls_port, pki, "homeassistant",
                           passwords["homeassistant"].read_text().strip())
    assert not refused(home_assistant.connect())
    home_assistant.subscribe(f"{config.homeassistant.prefix}/#")
    home_assistant.subscribe(f"{topics.base}/#")
    settings = dataclasses.replace(config.broker, host="127.0.0.1", port=broker.tls_port,
                                   ca_file=str(pki / "ca.crt"),
                                   password_file=str(passwords["stage4"]))
    stage4 = MqttSession(settings, "stage4-home-assistant", topics.availability("stage4"))
    bridge = HomeAssistantBridge(stage4, topics, MODEL, "stage4", config.homeassistant.prefix)
    stage4.start()
    try:
        assert stage4.wait_connected(TIMEOUT)
        stage4.set_online()
        bridge.start()
        answer = Prediction(f"{CAMERA}-1-0", CAMERA, 0, 0.0, [Score(7, "hotdog, hot dog", 0.9)],
                            40.0, [])
        stage4.publish(topics.predictions, answer.to_json(), qos=1)
        announced = home_assistant_topics(config) - {topics.label(CAMERA)}
        seen = collect(home_assistant, announced | {topics.label(CAMERA),
                                                    topics.availability("stage4")},
                       "Home Assistant")
        assert json.loads(seen[topics.label(CAMERA)])["label"] == "hotdog"
        for topic in announced:
            assert problems(topic, json.loads(seen[topic])) == [], topic
        assert not home_assistant.publish(f"{config.homeassistant.prefix}/status",
                                          "online").is_failure
        assert collect(home_assistant, announced, "Home Assistant, after its birth").keys() \
            >= announced
        check_device_deleted(home_assistant, stage4, config, announced)
    finally:
        stage4.stop()
        home_assistant.close()


def stage0_config(broker: LocalBroker, pki: Path, passwords: dict[str, Path]) -> NodeConfig:
    """stage0.toml, logging in to `broker` with the test CA and password."""
    config = load_cluster()["stage0"]
    return dataclasses.replace(config, broker=dataclasses.replace(
        config.broker, host="127.0.0.1", port=broker.tls_port, ca_file=str(pki / "ca.crt"),
        password_file=str(passwords[config.broker.username])))


def serving_stage(config: NodeConfig, inbox: queue.Queue[bytes]) -> MqttSession:
    """A stage's own session (`stage_session`), connected and subscribed to its input, putting
    each frame in `inbox` and acknowledging it."""
    stage = stage_session(config)

    def take(message: Received) -> None:
        inbox.put(message.payload)
        stage.ack(message)

    stage.subscribe(config.topics.stage_input(config.stage.index), take)
    stage.start()
    assert stage.wait_connected(TIMEOUT)
    # it subscribes as it connects, and the broker handles its packets in order
    stage.publish(config.topics.availability(stage.client_id), "online", qos=1,
                  retain=True).wait_for_publish(TIMEOUT)
    return stage


def check_client_id_takeover(broker: LocalBroker, pki: Path, passwords: dict[str, Path]) -> None:
    """The watcher, connecting again and again with stage 0's client id (its node name, which
    every user reads on availability/+) and a clean start, neither disconnects stage 0 nor
    ends its session: each frame the camera sends meanwhile reaches it on its first connection.
    """
    config = stage0_config(broker, pki, passwords)
    inbox: queue.Queue[bytes] = queue.Queue()
    stage = serving_stage(config, inbox)
    camera = Probe(broker.tls_port, pki, "cam0", passwords["cam0"].read_text().strip())
    try:
        assert not refused(camera.connect())
        for attempt in range(TAKEOVERS):
            thief = Probe(broker.tls_port, pki, "watcher",
                          passwords["watcher"].read_text().strip(), client_id=stage.client_id)
            assert not refused(code := thief.connect()), code
            frame = f"frame {attempt}"
            assert not camera.publish(config.topics.stage_input(0), frame).is_failure
            assert next_item(inbox, "stage 0") == frame.encode()
            thief.close()
        assert (stage.reconnects, stage.last_problem) == (0, None)
    finally:
        stage.stop()
        camera.close()


def check_frames_wait_for_a_restarting_stage(broker: LocalBroker, pki: Path,
                                             passwords: dict[str, Path]) -> None:
    """A frame sent while stage 0 is stopped reaches it when it is back, after the check of
    its neighbours it makes at start (run_stage), on its own connection, before it serves."""
    config = stage0_config(broker, pki, passwords)
    inbox: queue.Queue[bytes] = queue.Queue()
    serving_stage(config, inbox).stop()
    camera = Probe(broker.tls_port, pki, "cam0", passwords["cam0"].read_text().strip())
    try:
        assert not refused(camera.connect())
        assert not camera.publish(config.topics.stage_input(0), "sent while away").is_failure
    finally:
        camera.close()
    spec = TensorSpec("photo", (1, 4, 4, 3), "uint8", 1.0, 0)
    me = NodeInfo(node=config.stage.node_name, stage=0, stages=STAGES, manifest="0" * 64,
                  model="model.tflite", input=spec, output=spec)
    stage = stage_session(config)
    pipeline = PipelineAvailability(stage, config.topics, me.node)
    stage.subscribe(config.topics.stage_input(0), lambda message: inbox.put(message.payload))
    stage.start()
    try:
        assert stage.wait_connected(TIMEOUT)
        wait_settled(stage, config.topics.probe(stage.client_id))
        assert check_chain(pipeline.view(), me) == (True, None)
        assert next_item(inbox, "stage 0, back") == b"sent while away"
    finally:
        stage.stop()


def check_one_connection_per_user(broker: LocalBroker, pki: Path,
                                  passwords: dict[str, Path]) -> None:
    """What binding client ids to users costs: a user's second connection, whatever client id
    it sends, ends its first (two tools of one user at once need two users)."""
    password = passwords["watcher"].read_text().strip()
    first = Probe(broker.tls_port, pki, "watcher", password)
    second = Probe(broker.tls_port, pki, "watcher", password)
    try:
        assert not refused(first.connect()) and not refused(second.connect())
        assert next_item(first.events, "the first connection")[0] == "disconnect"
    finally:
        second.close()
        first.close()


def check_device_deleted(home_assistant: Probe, stage4: MqttSession, config: NodeConfig,
                         announced: set[str]) -> None:
    """Deleting the device in Home Assistant clears its discovery messages (an empty retained
    message on each, which its user may write, on those topics only); they stay cleared when
    Home Assistant comes back and when the last stage sees a new camera."""
    topics, prefix = Topics(config.pipeline.name, config.pipeline.prefix), \
        config.homeassistant.prefix
    for topic in sorted(announced):
        assert not home_assistant.publish(topic, "", retain=True).is_failure, topic
    assert home_assistant.publish(f"{prefix}/sensor/other/config", "", retain=True).value \
        == NOT_AUTHORIZED
    assert not home_assistant.publish(f"{prefix}/status", "online").is_failure
    # the new camera's label comes after anything the last stage says of the birth or of it
    later = Prediction("cam1-1-0", "cam1", 0, 0.0, [Score(7, "hotdog, hot dog", 0.9)], 40.0, [])
    stage4.publish(topics.predictions, later.to_json(), qos=1)
    said = []
    while (message := next_item(home_assistant.messages, "Home Assistant"))[0] \
            != topics.label("cam1"):
        said.append(message)
    assert [topic for topic, payload in said if topic.endswith("/config") and payload] == []


def check_publish_rights(probes: Callable[[str], Probe], config: NodeConfig,
                         watcher_filter: str) -> None:
    """The node may publish its own topics and every probe topic, nothing else; a watcher
    subscribed to `watcher_filter` sees exactly what went through. (A client's id is its user
    name, whatever id it sent and names its probe topic after, so neither setup can tie a probe
    topic to its client.)"""
    node = node_name(config)
    allowed = allowed_writes(config) | {Topics("greenhouse").probe("someone-else")}
    watcher = probes("watcher")
    watcher.subscribe(watcher_filter)
    publisher = probes(config.broker.username)
    candidates = sorted(set(candidate_topics(load_cluster())) | allowed)
    codes = {topic: publisher.publish(topic, f"from {node}") for topic in candidates}
    granted = {topic for topic, code in codes.items() if not code.is_failure}
    assert granted == allowed
    for topic, code in codes.items():
        if topic not in allowed:
            assert code.value == NOT_AUTHORIZED, (topic, code)
    # The broker handles one client's messages in order: once the watcher has this marker, it
    # has every message of that node it was ever going to get.
    marker = Topics("greenhouse").availability(node)
    assert not publisher.publish(marker, "marker").is_failure
    seen = []
    while (message := next_item(watcher.messages, "the watcher")) != (marker, "marker"):
        seen.append(message[0])
    # the watcher may read the JSON branch and the cameras' snapshots, not the frames
    readable = ("aiotedge/", Topics("greenhouse").snapshot(""),
                f"{Topics('greenhouse').frames_base}/event-snapshot/")
    assert set(seen) == {t for t in allowed
                         if t.startswith(readable) and mqtt.topic_matches_sub(watcher_filter, t)}


def check_deliveries(probes: Callable[[str], Probe],
                     filters: Callable[[str], list[str]]) -> None:
    """Every node receives its own inputs and nothing else, the watcher every JSON topic and
    the cameras' snapshots (not the frames, which have a branch of their own), each subscribed
    to `filters(its name)`."""
    configs = load_cluster()
    topics = Topics("greenhouse")
    published = [topics.stage_input(k) for k in range(STAGES)]
    published += [topics.predictions, topics.errors, topics.availability("stage1"),
                  topics.info("stage1"), topics.stats("stage1"), topics.snapshot("cam0"),
                  topics.pipeline_availability]
    writers = {}
    for topic in published:  # the node whose job it is to publish it
        writers[topic] = next(c.broker.username for c in configs.values()
                              if topic in allowed_writes(c))
    # one connection per user: a second one would end the first (use_username_as_clientid)
    readers = {name: probes(config.broker.username) for name, config in configs.items()}
    readers["watcher"] = probes("watcher")
    logins = {name if name == "watcher" else configs[name].broker.username: reader
              for name, reader in readers.items()}
    for name, reader in readers.items():
        for topic_filter in filters(name):
            reader.subscribe(topic_filter)
    for round_number in (1, 2):
        for topic in published:
            assert not logins[writers[topic]].publish(topic, f"{round_number}").is_failure
    for name, reader in readers.items():
        expected = ({t for t in published if t.startswith((f"{topics.base}/",
                                                            topics.snapshot("")))}
                     if name == "watcher" else allowed_reads(configs[name], published))
        first_round = []
        # messages reach a subscriber in the order the broker took them: round 1 is complete
        # when the first message of round 2 arrives
        while (message := next_item(reader.messages, name))[1] == "1":
            first_round.append(message[0])
        assert sorted(first_round) == sorted(expected), name


# -- frame theft: a user without read rights on a stage's input joins its share group -----------

FRAMES = 20
THEFT_STAGE = 2
STAGE_USER = f"stage{THEFT_STAGE}"
#: who publishes the frames into stage 2 (as stage 1 does)
UPSTREAM = f"stage{THEFT_STAGE - 1}"
#: whose login the thief uses: the read-only tools', which may not read frames
THIEF = "watcher"


@dataclasses.dataclass
class Theft:
    #: distinct frames the stage's replicas received, of FRAMES
    received: int
    #: the thief's subscriptions, and those the broker granted
    thief_tried: list[str]
    thief_granted: list[str]


def theft(broker: LocalBroker, pki: Path, passwords: dict[str, Path], replicas: int) -> Theft:
    """Stage 2 served by stage2 and, with `replicas` 2, its replica stage2b (each a user of
    its own, in share group `stage2`; one replica: plainly subscribed); a thief, logged in as
    the watcher, subscribes to stage 2's input plainly and in share groups, its replicas'
    included; stage1 publishes FRAMES frames into stage 2 (as stage 1 does)."""
    topics = Topics("greenhouse")
    stage_input = topics.stage_input(THEFT_STAGE)
    group = STAGE_USER if replicas > 1 else None
    users = [STAGE_USER, REPLICA][:replicas]
    inboxes: list[queue.Queue[bytes]] = [queue.Queue() for _ in users]
    sessions = [MqttSession(BrokerConfig("127.0.0.1", broker.tls_port, username=user,
                                         password_file=str(passwords[user]), tls=True,
                                         ca_file=str(pki / "ca.crt")), user)
                for user in users]
    thief = Probe(broker.tls_port, pki, THIEF, passwords[THIEF].read_text().strip())
    upstream = Probe(broker.tls_port, pki, UPSTREAM, passwords[UPSTREAM].read_text().strip())
    try:
        for session, inbox in zip(sessions, inboxes, strict=True):
            session.subscribe(stage_input, lambda message, inbox=inbox: inbox.put(message.payload),
                              share_group=group)
            session.start()
            assert session.wait_connected(TIMEOUT)
            # a session subscribes as it connects; the broker handles its packets in order,
            # so once this is acknowledged the subscription is in place
            info = session.publish(topics.availability(session.client_id), "online", qos=1)
            info.wait_for_publish(TIMEOUT)
            assert info.is_published()
        assert not refused(thief.connect()) and not refused(upstream.connect())
        filters = [stage_input, f"$share/{STAGE_USER}/{stage_input}",
                   f"$share/x/{stage_input}"]
        granted = [f for f in filters if not thief.suback(f).is_failure]
        for number in range(FRAMES):
            assert not upstream.publish(stage_input, f"frame {number}").is_failure
        # mosquitto hands a share group's messages round robin: with one marker per member (the
        # thief included, if it joined) every replica gets one. A replica receives its messages
        # in the order they were published: once it has a marker, it has every frame it was
        # ever going to get.
        for _ in range(replicas + 1):
            assert not upstream.publish(stage_input, "marker").is_failure
        frames = []
        for n, inbox in enumerate(inboxes):
            while (payload := next_item(inbox, f"replica {n}")) != b"marker":
                frames.append(payload)
        assert len(frames) == len(set(frames)), "a frame reached two replicas"
        return Theft(len(frames), filters, granted)
    finally:
        for session in sessions:
            session.stop()
        thief.close()
        upstream.close()



def check_only_the_deployer_publishes_releases(probes: Callable[[str], Probe]) -> None:
    """A release, a model chunk or the live pointer from any user but the deployer is refused
    by the broker; the nodes (the watcher, reading everything) see the deployer's alone."""
    topics = Topics("greenhouse")
    targets = [f"{topics.release_plan}/forged", topics.live_release,
               topics.model_chunk("0" * 64)]
    for user in ("stage1", "cam0", "watcher"):
        probe = probes(user)
        for topic in targets:
            code = probe.publish(topic, f"from {user}", retain=True)
            assert code.value == NOT_AUTHORIZED, (user, topic, code)
    deployer = probes("deployer")
    for topic in targets:
        assert not deployer.publish(topic, "from deployer", retain=True).is_failure, topic
    reader = probes("watcher")
    reader.subscribe(f"{topics.release_plan}/forged")
    assert next_item(reader.messages, "watcher") == (f"{topics.release_plan}/forged",
                                                      "from deployer")
