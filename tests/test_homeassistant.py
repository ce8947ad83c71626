"""Home Assistant discovery: the payloads against Home Assistant's documented schema, their
templates rendered as Home Assistant renders them (Jinja2), the labels a camera's sensor gets,
and discovery said again when Home Assistant comes back. The secure setup (its ACL user) is
checked against a real mosquitto in test_security.py and test_security_dynsec.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest

from aiotedge.contracts.events import Prediction, Score
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.mqtt.transport import MessageHandler, Received, RefusalHandler
from aiotedge.nodes.observe.event_publisher import count_state
from aiotedge.nodes.observe.homeassistant import (
    CameraDiscovery,
    HomeAssistantBridge,
    discovery_filter,
    event_entities,
    health_sensors,
    label_sensor,
    label_state,
)
from tests.homeassistant_schema import IGNORED, binary_sensor_state, problems, sensor_state
from tests.homeassistant_schema import render as render_payload

TOPICS = Topics("garden")
MODEL = SimpleNamespace(source=SimpleNamespace(file="mobilenet_v2.tflite"))
STATS = {"fps": 1.8, "latency_ms": {"p50": 412.5, "p99": 530.1}, "frames_out": 10}


def render(template: str, payload: dict) -> str:
    """A value template as Home Assistant renders it, on `payload` as it travels (JSON)."""
    pytest.importorskip("jinja2", reason="jinja2 is in the test extra")
    return render_payload(template, json.dumps(payload).encode())


def prediction(source: str, label: str, score: float = 0.9, seq: int = 0) -> Prediction:
    return Prediction(f"{source}-x-{seq}", source, seq, 0.0, [Score(934, label, score)], 40.0, [])


def every_announcement():
    return [*health_sensors(TOPICS, MODEL, "stage4"),
            label_sensor(TOPICS, MODEL, "stage4", "cam0")]


@pytest.mark.parametrize("announced", every_announcement(), ids=lambda a: a[0].split("/")[3])
def test_discovery_payloads_follow_home_assistants_documented_schema(announced):
    topic, config = announced
    assert problems(topic, json.loads(json.dumps(config))) == []
    assert "object_id" not in config  # deprecated; default_entity_id replaces it
    assert config["origin"]["name"] == "aiotedge"
    assert config["availability_mode"] == "all"
    assert {"topic": TOPICS.pipeline_availability} in config["availability"]
    assert {"topic": TOPICS.availability("stage4")} in config["availability"]
    assert config["device"]["identifiers"] == ["aiotedge_garden"]
    assert config["device"]["model"] == "mobilenet_v2.tflite"


def test_with_replicas_of_the_last_stage_the_entities_follow_the_pipeline_not_one_replica():
    """Each replica announces the same entities; whichever announced last must not take them
    down when it stops while another serves. Without replicas the last stage's own Last Will
    still counts (every board gone at once leaves nobody to update the pipeline's)."""
    for topic, config in [*health_sensors(TOPICS, MODEL, "stage4b", replicated=True),
                          label_sensor(TOPICS, MODEL, "stage4b", "cam0", replicated=True)]:
        assert problems(topic, config) == []
        assert config["availability"][0] == {"topic": TOPICS.pipeline_availability}
        assert {"topic": TOPICS.availability("stage4b")} not in config["availability"]
    _, camera = label_sensor(TOPICS, MODEL, "stage4b", "cam0", replicated=True)
    assert camera["availability"] == [{"topic": TOPICS.pipeline_availability},
                                      {"topic": TOPICS.availability("cam0")}]


def test_the_schema_check_finds_what_the_old_payload_did_wrong():
    old = {"name": "Prediction", "unique_id": "aiotedge_garden_prediction",
           "object_id": "aiotedge_garden_prediction", "state_topic": "aiotedge/garden/predictions",
           "availability_topic": "aiotedge/garden/availability/stage4",
           "availability": [{"topic": "x"}], "availability_mode": "every",
           "device": {"name": "aiotedge garden"}}
    found = problems("homeassistant/sensor/aiotedge_garden/prediction/config", old)
    assert "'object_id' is not a documented key" in found
    assert "'availability' and 'availability_topic' exclude each other" in found
    assert any("availability_mode 'every'" in problem for problem in found)
    assert "a device needs 'identifiers' or 'connections'" in found


def test_one_sensor_per_camera_whose_state_is_the_first_name_of_its_label():
    topic, config = label_sensor(TOPICS, MODEL, "stage4", "cam-0")
    assert topic == "homeassistant/sensor/aiotedge_garden/cam_0_label/config"
    assert config["default_entity_id"] == "sensor.aiotedge_garden_cam_0_label"
    assert config["state_topic"] == TOPICS.label("cam-0")
    assert {"topic": TOPICS.availability("cam-0")} in config["availability"]
    state = label_state(prediction("cam-0", "hotdog, hot dog, red hot"))
    assert render(config["value_template"], state) == "hotdog"
    attributes = json.loads(render(config["json_attributes_template"], state))
    assert attributes == {"labels": "hotdog, hot dog, red hot", "class": 934}


def test_health_sensors_read_the_last_stages_stats():
    sensors = {topic.split("/")[3]: config for topic, config in health_sensors(
        TOPICS, MODEL, "stage4")}
    assert set(sensors) == {"fps", "latency"}
    for config in sensors.values():
        assert config["state_topic"] == TOPICS.stats("stage4")
        assert config["entity_category"] == "diagnostic"
    assert sensor_state(sensors["fps"], json.dumps(STATS).encode()) == 1.8
    assert sensor_state(sensors["latency"], json.dumps(STATS).encode()) == 412.5


def test_the_latency_before_any_frame_is_unknown_to_home_assistant():
    """A fresh stage's stats say `"latency_ms": {"p50": null}`: Home Assistant's numeric sensor
    must get `None` (unknown), not a text such as `null`, which it refuses with a ValueError."""
    pytest.importorskip("jinja2", reason="jinja2 is in the test extra")
    latency = dict(health_sensors(TOPICS, MODEL, "stage4"))[
        "homeassistant/sensor/aiotedge_garden/latency/config"]
    fresh = json.dumps({**STATS, "fps": 0.0, "latency_ms": {"p50": None, "p99": None}})
    assert sensor_state(latency, fresh.encode()) is None
    assert sensor_state(latency, b'{"latency_ms": {"p50": 0}}') == 0.0
    assert sensor_state(latency, b'{"latency_ms": {"p50": 7.25}}') == 7.25


def test_the_home_assistant_model_refuses_what_home_assistant_refuses():
    """The check above means something: text in a numeric sensor is an error, `None` not."""
    pytest.importorskip("jinja2", reason="jinja2 is in the test extra")
    numeric = {"state_topic": "t", "unit_of_measurement": "ms", "value_template": "{{ 'null' }}"}
    with pytest.raises(ValueError, match="non-numeric value: 'null'"):
        sensor_state(numeric, b"{}")
    assert sensor_state({**numeric, "value_template": "{{ value_json.x }}"}, b'{"x": null}') \
        is None
    assert sensor_state({**numeric, "value_template": "{{ value_json.y }}"}, b"{}") is IGNORED


class FakeSession:
    """It has the shape of the `Messaging` part of a session (tests/test_transport.py checks
    it)."""

    def __init__(self) -> None:
        self.handlers: dict[str, MessageHandler] = {}
        self.published: list[tuple[str, dict]] = []
        #: what it would say again after a reconnect
        self.announced: set[str] = set()

    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1,
                  share_group: str | None = None, *, on_refused: RefusalHandler | None = None,
                  retained: bool = True) -> None:
        assert qos == 0  # the last stage acknowledges its QoS 1 messages by hand
        self.handlers[topic] = handler

    def publish(self, topic: str, payload: bytes | str, qos: int = 0,
                retain: bool = False) -> None:
        assert retain
        self.published.append((topic, json.loads(payload)))

    def announce(self, topic: str, payload: str) -> None:  # retained, and again after reconnects
        self.announced.add(topic)
        self.publish(topic, payload, retain=True)

    def withdraw(self, topic: str) -> None:
        self.announced.discard(topic)

    def deliver(self, topic: str, payload: bytes, retain: bool = False) -> None:
        for topic_filter, handler in self.handlers.items():
            if mqtt.topic_matches_sub(topic_filter, topic):
                handler(Received(topic, payload, retain=retain))

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.published]


def test_a_label_is_published_when_it_changes_not_with_every_frame():
    """At 2 fps a label in the attributes or the state of every frame would be 170,000
    recorder rows a day in Home Assistant; a camera looking at the same thing is one."""
    session = FakeSession()
    HomeAssistantBridge(session, TOPICS, MODEL, "stage4").start()
    assert len(session.published) == 2  # the health sensors
    for seq, (label, score) in enumerate([("hotdog, hot dog", 0.9), ("hotdog, hot dog", 0.7),
                                          ("hotdog, hot dog", 0.8), ("pizza", 0.6)]):
        session.deliver(TOPICS.predictions, prediction("cam0", label, score, seq).to_json()
                        .encode())
    session.deliver(TOPICS.predictions, prediction("cam1", "pizza").to_json().encode())
    session.deliver(TOPICS.predictions, b"not a prediction")
    labels = [(topic, state["label"]) for topic, state in session.published
              if topic.startswith(f"{TOPICS.base}/label/")]
    assert labels == [(TOPICS.label("cam0"), "hotdog"), (TOPICS.label("cam0"), "pizza"),
                      (TOPICS.label("cam1"), "pizza")]
    sensors = [t for t in session.topics() if t.endswith("_label/config")]
    assert sensors == ["homeassistant/sensor/aiotedge_garden/cam0_label/config",
                       "homeassistant/sensor/aiotedge_garden/cam1_label/config"]


def test_discovery_is_said_again_when_home_assistant_comes_back():
    session = FakeSession()
    HomeAssistantBridge(session, TOPICS, MODEL, "stage4", prefix="ha").start()
    session.deliver(TOPICS.predictions, prediction("cam0", "pizza").to_json().encode())
    announced = [t for t in session.topics() if t.startswith("ha/")]
    session.published.clear()
    session.deliver("ha/status", b"offline")
    session.deliver("ha/status", b"online", retain=True)  # an old one, not a restart
    assert session.published == []
    session.deliver("ha/status", b"online")
    assert sorted(session.topics()) == sorted(announced)


def test_a_device_deleted_in_home_assistant_is_not_announced_again_while_the_stage_runs():
    """Home Assistant deletes a device by clearing its discovery messages (an empty retained
    message on each); zigbee2mqtt then leaves it deleted until it restarts, and so does the
    last stage: not on Home Assistant's birth, not after a reconnect, not for a new camera."""
    session = FakeSession()
    HomeAssistantBridge(session, TOPICS, MODEL, "stage4", prefix="ha").start()
    session.deliver(TOPICS.predictions, prediction("cam0", "pizza").to_json().encode())
    announced = sorted(t for t in session.topics() if t.startswith("ha/"))
    session.deliver(announced[0], json.dumps({"name": "from a replica"}).encode())  # not a clear
    session.published.clear()
    session.deliver("ha/status", b"online")
    assert sorted(session.topics()) == announced
    session.published.clear()
    for topic in announced:  # as Home Assistant does
        session.deliver(topic, b"")
    assert session.announced == set()  # not said again after a reconnect
    session.deliver("ha/status", b"online")
    session.deliver(TOPICS.predictions, prediction("cam1", "hotdog").to_json().encode())
    session.deliver(TOPICS.predictions, prediction("cam0", "hotdog").to_json().encode())
    assert session.topics() == [TOPICS.label("cam1"), TOPICS.label("cam0")]  # labels only


# -- a camera's own device: its tracked labels ----------------------------------------------------


def test_a_cameras_tracked_label_is_an_occupancy_a_count_and_a_snapshot_of_its_own_device():
    announced = dict(event_entities(TOPICS, "front door", "person"))
    node = "aiotedge_garden_front_door"
    assert sorted(announced) == [f"homeassistant/binary_sensor/{node}/person_occupancy/config",
                                 f"homeassistant/image/{node}/person_snapshot/config",
                                 f"homeassistant/sensor/{node}/person_count/config"]
    for topic, config in announced.items():
        assert problems(topic, json.loads(json.dumps(config))) == [], topic
        assert config["device"]["identifiers"] == [node]
        assert config["device"]["via_device"] == "aiotedge_garden"  # the pipeline's device
        assert config["availability"] == [{"topic": TOPICS.pipeline_availability},
                                          {"topic": TOPICS.availability("front door")}]
        # one owner each: the camera's topics are not the pipeline's, which the stage keeps
        assert not mqtt.topic_matches_sub(discovery_filter(TOPICS), topic)
        assert mqtt.topic_matches_sub(discovery_filter(TOPICS, camera="front door"), topic)
    occupancy, image, count = (announced[t] for t in sorted(announced))
    assert occupancy["device_class"] == "occupancy"
    assert occupancy["state_topic"] == count["state_topic"] == TOPICS.count("front door",
                                                                             "person")
    assert (image["image_topic"], image["content_type"]) == (
        TOPICS.event_snapshot("front door", "person"), "image/jpeg")


def test_home_assistant_reads_the_count_as_occupancy_and_as_a_number():
    pytest.importorskip("jinja2", reason="jinja2 is in the test extra")
    announced = dict(event_entities(TOPICS, "cam0", "cat"))
    occupancy = announced["homeassistant/binary_sensor/aiotedge_garden_cam0/cat_occupancy/config"]
    count = announced["homeassistant/sensor/aiotedge_garden_cam0/cat_count/config"]
    for number, occupied in ((0, False), (1, True), (3, True)):
        assert binary_sensor_state(occupancy, count_state(number).encode()) is occupied
        assert sensor_state(count, count_state(number).encode()) == float(number)


def test_the_cameras_device_is_said_again_when_home_assistant_is_back_and_stays_deleted():
    session = FakeSession()
    CameraDiscovery(session, TOPICS, "cam0", ["person", "cat"], prefix="ha").start()
    announced = sorted(session.topics())
    assert len(announced) == 6 and session.announced == set(announced)
    session.published.clear()
    session.deliver("ha/status", b"online")
    assert sorted(session.topics()) == announced
    session.published.clear()
    # the pipeline's device deleted: not the camera's
    session.deliver("ha/sensor/aiotedge_garden/fps/config", b"")
    assert session.announced == set(announced)
    for topic in announced:  # the camera's device deleted, as Home Assistant does it
        session.deliver(topic, b"")
    assert session.announced == set()
    session.deliver("ha/status", b"online")
    assert session.published == []
