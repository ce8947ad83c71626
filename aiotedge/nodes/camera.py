"""A camera node: publishes photos into stage 0 and follows each frame until its result.

Mosquitto silently discards messages beyond `max_queued_messages`, even at QoS 1, so a camera
must never outrun the pipeline: it keeps at most `in_flight` frames without a result (a
prediction or an error event) whatever its frame rate. Following every frame to its result is
also what makes a loss visible wherever it happened, and, at QoS 1, repairable: a frame with
no result in time is sent again under the same id (stages and sinks drop duplicates), which
covers what the broker cannot keep, such as frames for replicas while a broker restarts.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from aiotedge.config.schema import CameraConfig, NodeConfig
from aiotedge.contracts.errors import ConfigError, ImageError
from aiotedge.contracts.events import ErrorEvent, Prediction
from aiotedge.contracts.topics import Topics
from aiotedge.contracts.wire import Frame, encode_frame
from aiotedge.media.image import list_images
from aiotedge.nodes import systemd
from aiotedge.nodes.lifecycle import connect_once, stop_on_signals, wait_for_broker
from aiotedge.nodes.metrics import Counters, Metric, camera_metrics, serve_prometheus
from aiotedge.nodes.session import MqttSession

log = logging.getLogger(__name__)

#: with no result at all for this many frame timeouts, the frames in flight count as lost
STALLED = 4


def read_photo(path: Path) -> bytes:
    """The bytes of a photo `list_images` accepted (it checks every photo, once)."""
    try:
        return path.read_bytes()
    except OSError as exc:  # removed or replaced since it was listed
        raise ImageError(f"{path}: {exc.strerror or exc}") from None


@dataclass
class _InFlight:
    seq: int
    name: str
    #: kept only at QoS 1, to send the frame again
    image: bytes | None
    captured_at: float
    sent_at: float
    attempts: int = 1


class Camera:
    """Publishes frames and listens for their results on the pipeline's topics."""

    def __init__(self, session: MqttSession, topics: Topics, options: CameraConfig,
                 qos: int = 1) -> None:
        self.session = session
        self.topics = topics
        self.options = options
        self.qos = qos
        self._run_id = secrets.token_hex(3)
        self._in_flight: dict[str, _InFlight] = {}
        #: when the most recently sent of the frames that got a result was sent
        self._newest_answered_sent_at = 0.0
        self._changed = threading.Condition()
        #: published, answered (a prediction), rejected (an error event from a stage),
        #: unanswered (no result after every attempt), resent, refused_by_broker
        self.counters = Counters()
        session.subscribe(topics.predictions, self._on_prediction, qos=1)
        session.subscribe(topics.errors, self._on_error, qos=1)

    @property
    def published(self) -> int:
        return self.counters.get("published")

    @property
    def waiting(self) -> int:
        """Frames published and still without a result."""
        with self._changed:
            return len(self._in_flight)

    def metrics(self) -> list[Metric]:
        """The camera's Prometheus view (read only)."""
        return camera_metrics(self.counters.snapshot(), in_flight=self.waiting,
                              connected=self.session.connected,
                              reconnects=self.session.reconnects)

    def outcome(self, sent: int) -> int:
        """Log what became of the frames; 1 when none could get through (a config to fix)."""
        answered, rejected, unanswered, refused = (self.counters.get(name) for name in (
            "answered", "rejected", "unanswered", "refused_by_broker"))
        log.info("published %d frames: %d answered, %d rejected by the pipeline, %d unanswered, "
                 "%d refused by the broker", sent, answered, rejected, unanswered, refused)
        if sent and refused == sent:
            log.error("the broker refused every frame: is this camera's user allowed to "
                      "publish to %s (the broker's ACL)?", self.topics.stage_input(0))
            return 1
        if sent and rejected == sent:
            log.error("the pipeline rejected every frame (see %s for why)", self.topics.errors)
            return 1
        return 0

    def frame_id(self, seq: int) -> str:
        return f"{self.options.source}-{self._run_id}-{seq}"

    def run(self, photos: list[tuple[str, bytes]], frames: int | None = None,
            stop: threading.Event | None = None) -> int:
        """Publish photos (looping if asked) until `frames` are sent or `stop` is set, then
        wait for the results of those still in flight. Returns how many were published.

        Each run numbers its frames from 0 under a new run id, so frame ids never repeat.
        """
        stop = stop or threading.Event()
        self._run_id = secrets.token_hex(3)
        with self._changed:
            self._in_flight.clear()
        sequence: Iterator[tuple[str, bytes]] = (
            itertools.cycle(photos) if self.options.loop else iter(photos)
        )
        if frames is not None:
            sequence = itertools.islice(sequence, frames)
        period = 1.0 / self.options.fps if self.options.fps > 0 else 0.0
        next_at = time.monotonic()
        published = 0
        for seq, (name, data) in enumerate(sequence):
            if period:
                if stop.wait(max(0.0, next_at - time.monotonic())):
                    break
                next_at += period
            if not self._wait_until(lambda: len(self._in_flight) < self.options.in_flight,
                                    stop):
                break
            self.publish(seq, name, data)
            published += 1
        self._wait_until(lambda: not self._in_flight, stop)
        return published

    def publish(self, seq: int, name: str, data: bytes) -> str:
        frame_id = self.frame_id(seq)
        entry = _InFlight(seq, name, data if self.qos > 0 else None,
                          captured_at=time.time(), sent_at=time.monotonic())
        with self._changed:
            self._in_flight[frame_id] = entry
        self._send(frame_id, entry, data)
        self.counters.add("published")
        log.debug("published %s (%s)", frame_id, name)
        return frame_id

    def _send(self, frame_id: str, entry: _InFlight, data: bytes) -> None:
        frame = Frame(frame_id=frame_id, source=self.options.source, seq=entry.seq,
                      captured_at=entry.captured_at, attempt=entry.attempts, image=data)
        self.session.publish_confirmed(
            self.topics.stage_input(0), encode_frame(frame), self.qos,
            lambda refused: self._on_confirmed(frame_id, refused),
        )

    def _wait_until(self, condition: Callable[[], bool], stop: threading.Event) -> bool:
        """Wait for `condition` (checked under the lock), following up overdue frames.

        Publishing happens outside the lock: paho calls back into `_settle` holding its own.
        """
        while True:
            with self._changed:
                if condition() or stop.is_set():
                    return not stop.is_set()
                resend, given_up = self._take_overdue()
                if not (resend or given_up):
                    self._changed.wait(timeout=min(1.0, self.options.frame_timeout))
                    continue
            for frame_id, entry in resend:
                log.warning("no result for %s after %.0f s; sending it again",
                            frame_id, self.options.frame_timeout)
                self._send(frame_id, entry, entry.image)
            for frame_id, entry in given_up:
                self._give_up(frame_id, entry)

    def _take_overdue(self) -> tuple[list[tuple[str, _InFlight]], list[tuple[str, _InFlight]]]:
        """(to send again, to give up): frames whose result is overdue (called under the lock).

        A late result is not a lost frame: a frame waiting at the broker for a stage that is
        away comes out when the stage is back, and sending it again would only make a
        duplicate. So a frame counts as lost once a frame sent after it got its result first
        (stages work in order), or when no result at all came for `STALLED` times the timeout.
        """
        now = time.monotonic()
        resend, given_up = [], []
        for frame_id, entry in list(self._in_flight.items()):
            waited = now - entry.sent_at
            overtaken = self._newest_answered_sent_at > entry.sent_at
            if waited < self.options.frame_timeout or (
                not overtaken and waited < STALLED * self.options.frame_timeout
            ):
                continue
            if entry.image is not None and entry.attempts <= self.options.resends:
                entry.attempts += 1
                entry.sent_at = now
                self.counters.add("resent")
                resend.append((frame_id, entry))
            else:
                del self._in_flight[frame_id]
                self.counters.add("unanswered")
                given_up.append((frame_id, entry))
        return resend, given_up

    def _give_up(self, frame_id: str, entry: _InFlight) -> None:
        """Say so on the errors topic: a loss is never silent, wherever it happened."""
        reason = (f"no result within {self.options.frame_timeout:.0f} s after "
                  f"{entry.attempts} attempt(s): lost, or late behind a stage that is away")
        log.warning("%s: %s", frame_id, reason)
        event = ErrorEvent(node=self.options.source, reason=reason,
                           topic=self.topics.stage_input(0), frame_id=frame_id)
        self.session.publish(self.topics.errors, event.to_json(), qos=1)

    def _settle(self, frame_id: str | None, counter: str) -> None:
        with self._changed:
            entry = self._in_flight.pop(frame_id, None) if frame_id is not None else None
            if entry is None:
                return  # not ours, or settled already (a duplicate result)
            self._newest_answered_sent_at = max(self._newest_answered_sent_at, entry.sent_at)
            self.counters.add(counter)
            self._changed.notify_all()

    def _on_confirmed(self, frame_id: str, refused: bool) -> None:
        if refused:  # sending it again would be refused again
            self._settle(frame_id, "refused_by_broker")

    def _on_prediction(self, message: mqtt.MQTTMessage) -> None:
        prediction = Prediction.parse(message.payload)
        self._settle(prediction.frame_id if prediction else None, "answered")

    def _on_error(self, message: mqtt.MQTTMessage) -> None:
        event = ErrorEvent.parse(message.payload)
        if event is not None and event.node != self.options.source:
            self._settle(event.frame_id, "rejected")


# -- the daemon -------------------------------------------------------------------------------


def run_camera(config: NodeConfig, stop: threading.Event | None = None) -> int:
    """A camera daemon: publishes the folder's photos (once, `frames` of them, or round and
    round) and follows each to its result. 1 when no frame could get through."""
    stop = stop or stop_on_signals()
    cam, source, topics = config.camera, config.source, config.topics
    if not cam.images:
        raise ConfigError(f"{source}: no image folder given (--images or key 'camera.images')")
    try:
        images = list_images(cam.images)
    except ImageError as exc:
        raise ConfigError(f"{source}: key 'camera.images': {exc}") from exc
    photos = [(path.name, read_photo(path)) for path in images]
    # a session the broker keeps while the camera reconnects: results published meanwhile wait
    # a camera sending `frames` photos is a command: it fails at once if the broker cannot be
    # used; one sending its folder round and round is a daemon, which waits for the broker
    one_shot = cam.frames is not None or not cam.loop
    session = MqttSession(config.broker, f"camera-{cam.source}", topics.availability(cam.source),
                          session_expiry=config.pipeline.session_expiry, one_shot=one_shot)
    camera = Camera(session, topics, cam, config.pipeline.qos)
    if config.stats.prometheus_port:
        serve_prometheus(config.stats, source, {"pipeline": config.pipeline.name,
                                                "node": cam.source}, camera.metrics)
    if one_shot:
        connect_once(session)
    else:
        session.start()
        if not wait_for_broker(session, stop):
            session.stop()
            return 0
    session.set_online()
    systemd.notify(f"READY=1\nSTATUS=camera {cam.source} publishing {len(photos)} photos")
    sent = camera.run(photos, frames=cam.frames, stop=stop)
    systemd.notify("STOPPING=1")
    session.stop()
    return camera.outcome(sent)
