"""Home Assistant MQTT discovery: a device per pipeline, with a sensor per camera (its current
top-1 label) and the pipeline's health (frames per second, latency) as diagnostic sensors; and
a device per camera that tracks labels (`[events] labels`), with per label an occupancy binary
sensor, a count sensor and the latest event's snapshot as an image.

Each discovery message has one owner, which alone announces it: the pipeline's device is the
last stage's (when its config says `[homeassistant] discovery = true`), a camera's device the
camera's (the same key in its config). Each follows the
current discovery schema (`default_entity_id`, an `origin` block, availability as a list with
`availability_mode: all`) and keeps Home Assistant's database small: a camera's label is
published, retained, on `.../label/<source>` only when it changes, so a camera at 2 fps showing
the same thing all day is one state, not 170,000 recorder rows. Discovery is said again when
Home Assistant says it is back (its birth message on `<prefix>/status`) and removed by
`aiotedge retire` (`discovery_filter`). A device deleted in Home Assistant (which clears its
discovery messages) is not announced again while its owner runs, as zigbee2mqtt does
(`Announcer`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

from aiotedge import __version__
from aiotedge.contracts.events import Prediction
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import ONLINE, Topics
from aiotedge.nodes.mqtt.transport import Messaging, Received

log = logging.getLogger(__name__)

Announcement = tuple[str, dict[str, Any]]


def node_id(topics: Topics, camera: str | None = None) -> str:
    """The discovery topics' node level, one per device: `aiotedge_<pipeline>` for the
    pipeline, `aiotedge_<pipeline>_<camera>` for a camera's."""
    pipeline = f"aiotedge_{_slug(topics.pipeline)}"
    return pipeline if camera is None else f"{pipeline}_{_slug(camera)}"


def device(topics: Topics, manifest: Manifest) -> dict[str, Any]:
    """The pipeline as one Home Assistant device (every entity of it names the same)."""
    return {"identifiers": [node_id(topics)], "name": f"aiotedge {topics.pipeline}",
            "manufacturer": "aiotedge", "model": manifest.source.file, "sw_version": __version__}


def camera_device(topics: Topics, camera: str) -> dict[str, Any]:
    """A camera that tracks labels, as a device of its own, seen through the pipeline's."""
    return {"identifiers": [node_id(topics, camera)], "name": f"aiotedge {topics.pipeline} "
            f"{camera}", "manufacturer": "aiotedge", "model": "camera",
            "sw_version": __version__, "via_device": node_id(topics)}


ORIGIN = {"name": "aiotedge", "sw_version": __version__}


def availability(topics: Topics, node: str, source: str | None = None,
                 replicated: bool = False) -> dict[str, Any]:
    """Available while the whole pipeline is (every stage has a node online, whichever of its
    replicas), and for a camera's sensor, while that camera is.

    A last stage without replicas (no share group) is listed too: its Last Will then makes the
    entities unavailable even when every board went at once and no stage is left to update
    the pipeline's availability. Replicas are not: the entities stay while any of them serves,
    whichever announced last.
    """
    topics_needed = [topics.pipeline_availability]
    if not replicated:
        topics_needed.append(topics.availability(node))
    if source is not None:
        topics_needed.append(topics.availability(source))
    return {"availability": [{"topic": topic} for topic in topics_needed],
            "availability_mode": "all"}


def config_topic(prefix: str, topics: Topics, object_id: str, component: str = "sensor",
                 camera: str | None = None) -> str:
    return f"{prefix}/{component}/{node_id(topics, camera)}/{object_id}/config"


def label_sensor(topics: Topics, manifest: Manifest, node: str, source: str,
                 prefix: str = "homeassistant", *, replicated: bool = False) -> Announcement:
    """A camera's sensor: its state is the first name of the top-1 label (`hotdog`)."""
    object_id = f"{_slug(source)}_label"
    unique_id = f"{node_id(topics)}_{object_id}"
    return config_topic(prefix, topics, object_id), {
        "name": source,
        "unique_id": unique_id,
        "default_entity_id": f"sensor.{unique_id}",
        "icon": "mdi:eye",
        "state_topic": topics.label(source),
        "value_template": "{{ value_json.label }}",
        "json_attributes_topic": topics.label(source),
        "json_attributes_template": "{{ {'labels': value_json.labels, "
                                    "'class': value_json.index} | tojson }}",
        **availability(topics, node, source, replicated),
        "device": device(topics, manifest),
        "origin": ORIGIN,
    }


def health_sensors(topics: Topics, manifest: Manifest, node: str, prefix: str = "homeassistant",
                   *, replicated: bool = False) -> list[Announcement]:
    """The pipeline's throughput and latency, from the last stage's stats message."""
    common = {"state_topic": topics.stats(node), "state_class": "measurement",
              "entity_category": "diagnostic", **availability(topics, node, None, replicated),
              "device": device(topics, manifest), "origin": ORIGIN}
    sensors = {
        "fps": {"name": "Frames per second", "icon": "mdi:speedometer",
                "unit_of_measurement": "fps", "suggested_display_precision": 1,
                "value_template": "{{ value_json.fps }}"},
        "latency": {"name": "Latency", "device_class": "duration",
                    "unit_of_measurement": "ms", "suggested_display_precision": 0,
                    # null before any frame: rendered `None`, which Home Assistant's sensor
                    # takes for unknown (any other text must be a number)
                    "value_template": "{{ value_json.latency_ms.p50 }}"},
    }
    announced = []
    for object_id, specific in sensors.items():
        unique_id = f"{node_id(topics)}_{object_id}"
        announced.append((config_topic(prefix, topics, object_id), {
            **specific, "unique_id": unique_id, "default_entity_id": f"sensor.{unique_id}",
            **common}))
    return announced


def event_entities(topics: Topics, camera: str, label: str,
                   prefix: str = "homeassistant") -> list[Announcement]:
    """A camera's entities for one tracked label: occupied or not, how many, and the latest
    event's frame with its objects drawn; all from the camera's retained messages."""
    slug = _slug(label)
    common = {**availability(topics, camera), "device": camera_device(topics, camera),
              "origin": ORIGIN}
    count = topics.count(camera, label)
    entities = {
        ("binary_sensor", f"{slug}_occupancy"): {
            "name": label.capitalize(), "device_class": "occupancy", "state_topic": count,
            "value_template": "{{ 'ON' if value_json.count > 0 else 'OFF' }}"},
        ("sensor", f"{slug}_count"): {
            "name": f"{label.capitalize()} count", "icon": "mdi:counter",
            "state_class": "measurement", "state_topic": count,
            "value_template": "{{ value_json.count }}"},
        ("image", f"{slug}_snapshot"): {
            "name": f"{label.capitalize()} snapshot",
            "image_topic": topics.event_snapshot(camera, label), "content_type": "image/jpeg"},
    }
    announced = []
    for (component, object_id), specific in entities.items():
        unique_id = f"{node_id(topics, camera)}_{object_id}"
        announced.append((config_topic(prefix, topics, object_id, component, camera), {
            **specific, "unique_id": unique_id,
            "default_entity_id": f"{component}.{unique_id}", **common}))
    return announced


def label_state(prediction: Prediction) -> dict[str, Any]:
    """What `.../label/<source>` says: the first name of the top-1 label, its full text and
    class index; nothing that changes from frame to frame."""
    best = prediction.top[0]
    return {"label": best.name, "labels": best.label, "index": best.index}


class Announcer:
    """The discovery messages of one owner's device, kept true.

    Announced retained (and said again after every reconnect, for a broker without
    persistence), said again when Home Assistant says it is back (its birth on
    `<prefix>/status`, not a retained one). Listens on the device's discovery topics to learn
    that the device was deleted in Home Assistant (it clears their retained messages): then
    nothing is announced again, not after Home Assistant's restarts, nor the broker's, until
    the owner restarts. Subscribes at QoS 0 (a last stage acknowledges QoS 1 by hand).
    """

    def __init__(self, session: Messaging, own_filter: str, device_name: str, owner: str,
                 prefix: str = "homeassistant") -> None:
        self._session = session
        self._device_name = device_name
        self._owner = owner
        self._lock = threading.Lock()
        self._announced: dict[str, dict[str, Any]] = {}
        self._removed = False
        session.subscribe(f"{prefix}/status", self._on_home_assistant, qos=0)
        session.subscribe(own_filter, self._on_discovery, qos=0)

    def announce(self, topic: str, config: dict[str, Any]) -> None:
        with self._lock:
            if self._removed:
                return
            self._announced[topic] = config
        self._session.announce(topic, json.dumps(config))

    def _on_home_assistant(self, message: Received) -> None:
        if message.payload.decode(errors="replace") != ONLINE or message.retain:
            return
        with self._lock:
            announced = list(self._announced.items())
        if not announced:
            return
        log.info("Home Assistant is back: announcing %s's entities again", self._device_name)
        for topic, config in announced:
            self._session.publish(topic, json.dumps(config), qos=1, retain=True)

    def _on_discovery(self, message: Received) -> None:
        """An empty message on one of our discovery topics: someone cleared it, Home
        Assistant when its user deletes the device (the broker never keeps an empty retained
        message, so this is never an old one)."""
        if message.payload:
            return
        with self._lock:
            if message.topic not in self._announced:
                return
            self._removed = True
            announced, self._announced = list(self._announced), {}
        for topic in announced:
            self._session.withdraw(topic)
        log.warning("the Home Assistant device %s was deleted (%s cleared): not announcing it "
                    "again until %s restarts", self._device_name, message.topic, self._owner)


class HomeAssistantBridge:
    """Announces the pipeline's entities and keeps each camera's label state.

    Listens on the last stage's own session, at QoS 0 (the stage acknowledges its QoS 1
    messages by hand): to the predictions, to learn cameras and their labels; and through its
    `Announcer` to Home Assistant's status and the pipeline's discovery topics. A device
    deleted in Home Assistant is not announced again, not for a new camera either, until this
    stage restarts; the labels' states go on.
    """

    def __init__(self, session: Messaging, topics: Topics, manifest: Manifest, node: str,
                 prefix: str = "homeassistant", *, replicated: bool = False) -> None:
        self._session = session
        self._topics = topics
        self._manifest = manifest
        self._node = node
        self._prefix = prefix
        self._replicated = replicated
        self._lock = threading.Lock()
        #: source -> its label state as last published
        self._labels: dict[str, dict[str, Any]] = {}
        session.subscribe(topics.predictions, self._on_prediction, qos=0)
        self._announcer = Announcer(session, discovery_filter(topics, prefix),
                                    f"aiotedge {topics.pipeline}", "this stage", prefix)

    def start(self) -> None:
        """Announce the health sensors (camera sensors follow their first prediction)."""
        for topic, config in health_sensors(self._topics, self._manifest, self._node,
                                            self._prefix, replicated=self._replicated):
            self._announcer.announce(topic, config)

    def _on_prediction(self, message: Received) -> None:
        prediction = Prediction.parse(message.payload)
        if prediction is None or not prediction.top:
            return
        source, state = prediction.source, label_state(prediction)
        with self._lock:
            new_source = source not in self._labels
            changed = self._labels.get(source) != state
            self._labels[source] = state
        if new_source:
            self._announcer.announce(*label_sensor(
                self._topics, self._manifest, self._node, source, self._prefix,
                replicated=self._replicated))
        if changed:
            self._session.publish(self._topics.label(source), json.dumps(state), qos=1,
                                  retain=True)


class CameraDiscovery:
    """A camera's own device (`[events] labels` with `[homeassistant] discovery = true`):
    per tracked label its occupancy, count and snapshot, announced by the camera, which alone
    knows its labels."""

    def __init__(self, session: Messaging, topics: Topics, camera: str, labels: list[str],
                 prefix: str = "homeassistant") -> None:
        self._entities = [entity for label in labels
                          for entity in event_entities(topics, camera, label, prefix)]
        self._announcer = Announcer(session, discovery_filter(topics, prefix, camera),
                                    f"aiotedge {topics.pipeline} {camera}", "this camera",
                                    prefix)

    def start(self) -> None:
        for topic, config in self._entities:
            self._announcer.announce(topic, config)


def discovery_filter(topics: Topics, prefix: str = "homeassistant",
                     camera: str | None = None) -> str:
    """Every discovery topic of the pipeline's device (sensors only), or of a camera's (for
    `retire` and the owner's own watch for a deleted device)."""
    component = "sensor" if camera is None else "+"
    return f"{prefix}/{component}/{node_id(topics, camera)}/+/config"


def _slug(text: str) -> str:
    """What Home Assistant accepts in an entity id and a discovery topic level."""
    return re.sub(r"[^a-z0-9_]", "_", text.lower())
