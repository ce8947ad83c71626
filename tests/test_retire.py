"""`aiotedge retire`: a stopped node's retained messages and broker session go; its pipeline's
Home Assistant entities go with its last stage; an online node is not touched."""

from __future__ import annotations

import json
import queue
import subprocess
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from aiotedge.contracts.events import NodeInfo
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.mqtt.session import MqttSession, read_retained
from support.watch import retained_now
from tests.test_cli import assert_one_line_error

TOPICS = Topics("shelf")
SPEC = TensorSpec("t", (1, 4), "uint8", 0.5, 0)
DISCOVERY = "homeassistant/sensor/aiotedge_shelf/cam0_label/config"


def leave_behind(broker, node: str, stage: int, state: str) -> None:
    """What a stage of a 3-stage split leaves on the broker once stopped, and its session
    (clean start off, a subscription: the broker keeps it)."""
    stage_session = MqttSession(broker.address, node, session_expiry=3600)
    stage_session.subscribe(TOPICS.stage_input(stage), lambda _message: None)
    stage_session.start()
    assert stage_session.wait_connected(10)
    info = NodeInfo(node, stage, 3, "a" * 64, "net.tflite", SPEC, SPEC).to_json()
    retained = {TOPICS.availability(node): state, TOPICS.info(node): info,
                TOPICS.stats(node): json.dumps({"stage": stage})}
    if stage == 2:
        retained |= {DISCOVERY: "{}", TOPICS.label("cam0"): '{"label": "pizza"}',
                     TOPICS.pipeline_availability: "offline"}
    for topic, payload in retained.items():
        stage_session.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    stage_session.stop()


def session_present(broker, client_id: str) -> bool:
    """Whether the broker still holds a session for `client_id` (CONNACK's flag)."""
    answers: queue.Queue[bool] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = lambda _c, _u, flags, _rc, _p: answers.put(flags.session_present)
    client.connect("127.0.0.1", broker.port, clean_start=False)
    client.loop_start()
    try:
        return answers.get(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def retire(broker, node: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiotedge", "retire", "--broker", str(broker.address),
         "--pipeline", "shelf", "--node", node],
        capture_output=True, text=True, timeout=60, check=False)


def test_retiring_the_last_stage_retires_the_pipelines_home_assistant_entities(broker):
    leave_behind(broker, "s1", 1, "online")
    leave_behind(broker, "s2", 2, "offline")
    done = retire(broker, "s2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "retired s2: its session and 6 retained messages",
        "and pipeline shelf with it (its last stage): its availability, labels and Home "
        "Assistant entities"]
    left = retained_now(broker, TOPICS)
    assert sorted(left) == [TOPICS.availability("s1"), TOPICS.info("s1"), TOPICS.stats("s1")]
    assert not session_present(broker, "s2")
    assert session_present(broker, "s1")


def test_a_retired_camera_takes_its_counts_snapshots_and_home_assistant_device_along(broker):
    camera_device = "homeassistant/binary_sensor/aiotedge_shelf_cam0/person_occupancy/config"
    kept = {DISCOVERY: "{}", TOPICS.count("cam1", "person"): '{"count": 0}',
            TOPICS.availability("cam1"): "online"}
    gone = {TOPICS.availability("cam0"): "offline", TOPICS.count("cam0", "person"): '{"count": 1}',
            TOPICS.count("cam0", "cat"): '{"count": 0}', camera_device: "{}",
            TOPICS.event_snapshot("cam0", "person"): b"\xff\xd8 a jpeg"}
    session = MqttSession(broker.address, "leaving")
    session.start()
    assert session.wait_connected(10)
    for topic, payload in {**kept, **gone}.items():
        session.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    session.stop()
    done = retire(broker, "cam0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["retired cam0: its session and 7 retained messages"]
    left = retained_now(broker, TOPICS)
    assert sorted(left) == sorted(kept)
    reader = MqttSession(broker.address, "reader")
    reader.start()
    assert reader.wait_connected(10)
    try:
        assert read_retained(reader, [TOPICS.camera_event_snapshots("cam0")],
                             TOPICS.probe("reader")) == {}
    finally:
        reader.stop()


def test_an_online_node_is_not_retired(broker):
    leave_behind(broker, "s2", 2, "online")
    assert_one_line_error(retire(broker, "s2"), "s2 is online: stop it first")
    assert DISCOVERY in retained_now(broker, TOPICS)
    assert_one_line_error(retire(broker, "s9"), "no node 's9' has reported on pipeline shelf")


def test_an_online_node_is_told_to_stop_by_its_unit_named_after_its_config_file(broker,
                                                                                tmp_path):
    """aiotedge-stage@NAME reads /etc/aiotedge/NAME.toml: the unit is the config's name, which
    need not be the node's."""
    leave_behind(broker, "s2", 2, "online")
    assert_one_line_error(retire(broker, "s2"), "s2 is online: stop it first (on its board: "
                          "sudo systemctl stop aiotedge-stage@NAME, for its config "
                          "/etc/aiotedge/NAME.toml), then retire it")
    config = tmp_path / "greenhouse-top.toml"
    config.write_text(f'[broker]\nhost = "127.0.0.1"\nport = {broker.port}\n\n'
                      '[pipeline]\nname = "shelf"\n\n[stage]\nnode = "s2"\n')
    done = subprocess.run([sys.executable, "-m", "aiotedge", "retire", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert_one_line_error(done, "s2 is online: stop it first (sudo systemctl stop "
                                "aiotedge-stage@greenhouse-top), then retire it")
