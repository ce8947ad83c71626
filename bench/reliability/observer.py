"""What subscribers of a scenario's pipeline actually receive, counted by a raw MQTT observer:
predictions per frame (duplicates), error events, availability, stats, where each frame was
last seen, and the broker's own count of dropped messages."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable

import msgpack
import paho.mqtt.client as mqtt

from aiotedge.config.sections import BrokerConfig
from aiotedge.contracts.events import Prediction, Score
from aiotedge.contracts.topics import ONLINE, Topics
from aiotedge.nodes.mqtt.session import MqttSession
from bench.reliability.deadline import Deadline

log = logging.getLogger(__name__)

#: how often the broker publishes $SYS counters (its dropped-message count explains losses)
SYS_INTERVAL = 1


def frame_id_of(payload: bytes) -> str | None:
    """The frame id of a wire message, read with limits (a bomb must not blow up the harness)."""
    try:
        message = msgpack.unpackb(
            payload, raw=False, max_array_len=128, max_map_len=64, max_str_len=1024,
            max_ext_len=0,
        )
    except Exception:  # anything the storm sends: not a frame we can trace
        return None
    frame_id = message.get("frame_id") if isinstance(message, dict) else None
    return frame_id if isinstance(frame_id, str) else None


def strict_json(payload: bytes) -> bool:
    """Valid JSON for any consumer: Python's json accepts NaN and Infinity, most others do not."""
    def refuse(constant: str) -> None:
        raise ValueError(constant)

    try:
        json.loads(payload, parse_constant=refuse)
    except ValueError:
        return False
    return True


class Observer:
    """A raw MQTT subscriber on the pipeline: what subscribers actually receive.

    Counts predictions per frame id (a count above 1 is a duplicate delivered to subscribers),
    keeps error events, node availability, retained stats, the stage topic a frame was last
    seen on (a tracer at QoS 0) and the broker's own count of dropped messages ($SYS). Its
    session outlives broker restarts (session expiry), so it misses nothing while reconnecting.
    """

    def __init__(self, broker: BrokerConfig, topics: Topics, on_wake: Callable[[], None]) -> None:
        self.topics = topics
        self._on_wake = on_wake
        self.changed = threading.Condition()
        self.predictions: Counter[str] = Counter()
        #: frame id -> when its first prediction came (monotonic seconds)
        self.first_predicted: dict[str, float] = {}
        self.tops: dict[str, list[Score]] = {}
        self.not_strict_json = 0
        self.errors: list[dict] = []
        self.largest_error_bytes = 0
        self.online: set[str] = set()
        #: node -> times it went from online to offline (its will, or its own goodbye)
        self.went_offline: Counter[str] = Counter()
        #: node -> its latest stats (queue depth tells whether it still has work)
        self.stats: dict[str, dict] = {}
        #: frame id -> (highest stage topic it was seen on, when: monotonic seconds)
        self.last_seen: dict[str, tuple[int, float]] = {}
        self.last_progress = time.monotonic()
        #: predictions and error events received, for pacing injections
        self.progress = 0
        self._sys_dropped_base = 0
        self._sys_dropped = 0
        self._sys_ticks = 0
        self.session = MqttSession(broker, f"observer-{secrets.token_hex(4)}", session_expiry=600)
        self.session.subscribe(topics.predictions, self._on_prediction, qos=1)
        self.session.subscribe(topics.errors, self._on_error, qos=1)
        self.session.subscribe(topics.all_availability, self._on_availability, qos=1)
        self.session.subscribe(topics.all_stats, self._on_stats, qos=0)
        self.session.subscribe(topics.all_stage_inputs, self._on_frame, qos=0)
        self.session.subscribe("$SYS/broker/publish/messages/dropped", self._on_dropped, qos=0)
        self.session.subscribe("$SYS/broker/uptime", self._on_uptime, qos=0)
        self._probes = 0
        self._probe_topic = f"{topics.base}/status-probe/{self.session.client_id}"
        self.session.subscribe(self._probe_topic, self._on_probe, qos=1)

    def _on_prediction(self, message: mqtt.MQTTMessage) -> None:
        prediction = Prediction.parse(message.payload)
        with self.changed:
            if not strict_json(message.payload):
                self.not_strict_json += 1
            if prediction is not None:
                self.predictions[prediction.frame_id] += 1
                self.first_predicted.setdefault(prediction.frame_id, time.monotonic())
                self.tops.setdefault(prediction.frame_id, prediction.top)
            self.progress += 1
            self.last_progress = time.monotonic()
            self.changed.notify_all()

    def _on_error(self, message: mqtt.MQTTMessage) -> None:
        try:
            event = json.loads(message.payload)
        except ValueError:
            event = {"reason": "(not JSON)"}
        with self.changed:
            self.errors.append(event if isinstance(event, dict) else {"reason": repr(event)})
            self.largest_error_bytes = max(self.largest_error_bytes, len(message.payload))
            self.progress += 1
            self.last_progress = time.monotonic()
            self.changed.notify_all()

    def _on_availability(self, message: mqtt.MQTTMessage) -> None:
        node = message.topic.rsplit("/", 1)[-1]
        with self.changed:
            if message.payload == ONLINE.encode():
                self.online.add(node)
            elif node in self.online:
                self.online.discard(node)
                self.went_offline[node] += 1
            self.changed.notify_all()

    def _on_stats(self, message: mqtt.MQTTMessage) -> None:
        try:
            stats = json.loads(message.payload)
        except ValueError:
            return
        if isinstance(stats, dict):
            with self.changed:
                self.stats[message.topic.rsplit("/", 1)[-1]] = stats

    def _on_frame(self, message: mqtt.MQTTMessage) -> None:
        frame_id = frame_id_of(message.payload)
        if frame_id is not None:
            stage = int(message.topic.rsplit("/", 1)[-1])
            with self.changed:
                seen = self.last_seen.get(frame_id, (stage, 0.0))[0]
                self.last_seen[frame_id] = (max(stage, seen), time.monotonic())

    def _on_dropped(self, message: mqtt.MQTTMessage) -> None:
        value = int(message.payload or 0)
        with self.changed:
            if value < self._sys_dropped:  # the broker restarted: its counters start again
                self._sys_dropped_base += self._sys_dropped
            self._sys_dropped = value

    def _on_uptime(self, _message: mqtt.MQTTMessage) -> None:
        with self.changed:
            self._sys_ticks += 1
            self.changed.notify_all()

    @property
    def broker_dropped(self) -> int:
        """Messages mosquitto dropped (queue limits), summed over its restarts."""
        with self.changed:
            return self._sys_dropped_base + self._sys_dropped

    def wait(self, predicate: Callable[[], bool], deadline: Deadline, timeout: float,
             what: str) -> bool:
        """Wait for `predicate` (called under the lock); False if `timeout` passed first."""
        until = time.monotonic() + deadline.bound(timeout)
        with self.changed:
            while not predicate():
                left = until - time.monotonic()
                if left <= 0:
                    log.info("gave up waiting for %s after %.0f s", what, timeout)
                    return False
                self.changed.wait(min(left, 0.5))
                self.changed.release()
                try:
                    self._on_wake()  # e.g. notice a daemon that died
                finally:
                    self.changed.acquire()
        return True

    def sync_sys(self, deadline: Deadline) -> None:
        """Wait until the broker's latest $SYS counters are in.

        The next round starts with its uptime; a probe published after that comes back only
        after the rest of the round (the broker keeps each client's messages in order).
        """
        with self.changed:
            ticks, probes = self._sys_ticks, self._probes
        if self.wait(lambda: self._sys_ticks > ticks, deadline, 4 * SYS_INTERVAL + 2, "$SYS"):
            self.session.publish(self._probe_topic, b"", qos=1)
            self.wait(lambda: self._probes > probes, deadline, 10, "the observer's probe")

    def _on_probe(self, _message: mqtt.MQTTMessage) -> None:
        with self.changed:
            self._probes += 1
            self.changed.notify_all()
