"""A camera node: publishes frames from a source into stage 0 and follows each to its result.

Mosquitto silently discards messages beyond `max_queued_messages`, even at QoS 1, so a camera
must never outrun the pipeline: it keeps at most `in_flight` frames without a result (a
prediction or an error event) whatever its frame rate. Following every frame to its result is
also what makes a loss visible wherever it happened, and, at QoS 1, repairable: a frame with
no result in time is sent again under the same id (stages and sinks drop duplicates), which
covers what the broker cannot keep, such as frames for replicas while a broker restarts.
When the live release is abandoned (the pointer moves on with `resend`, docs/fleet.md), its
stages have stopped already: every frame without a result is sent again to the new release at
once, without waiting for the timeout.

A live source (a device, a stream) is read in a thread of its own that keeps only the newest
frame: the camera sends the newest one whenever the window has room (and the frame rate says
so), and counts the others as dropped. While the pipeline or the broker is away the camera
holds a few frames, whatever the source's rate. Files and folders lose nothing: each frame
waits for room.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import CameraConfig, EventsConfig
from aiotedge.contracts.errors import ConfigError, ImageError
from aiotedge.contracts.events import ErrorEvent, NodeInfo, Prediction
from aiotedge.contracts.geometry import View
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import Topics
from aiotedge.contracts.wire import Frame, encode_frame
from aiotedge.media.prepare import CropError, Geometry, ModelInput, prepare, snapshot_jpeg
from aiotedge.media.sources import FrameSource, open_source
from aiotedge.media.sources.base import CapturedFrame
from aiotedge.media.sources.live import LiveReader
from aiotedge.nodes.daemons.lifecycle import connect_once, stop_on_signals, wait_for_broker
from aiotedge.nodes.mqtt.session import MqttSession, wait_settled
from aiotedge.nodes.mqtt.transport import Received, Session
from aiotedge.nodes.observe import systemd
from aiotedge.nodes.observe.dispatch import Dispatcher
from aiotedge.nodes.observe.event_publisher import EventPublisher
from aiotedge.nodes.observe.homeassistant import CameraDiscovery
from aiotedge.nodes.observe.metrics import (
    CAMERA_COUNTERS,
    Metric,
    NodeStats,
    StatsReporter,
    camera_metrics,
    serve_prometheus,
)
from aiotedge.nodes.observe.releases import follow_live_release

log = logging.getLogger(__name__)

#: with no result at all for this many frame timeouts, the frames in flight count as lost
STALLED = 4
#: frames rejected in a row after which the camera says so as an error: a pipeline that
#: refuses everything (a manifest of another model) must not look like a quiet one
REJECTED_LOUDLY = 5
#: seconds a camera that preprocesses waits at start for stage 0 to say what it takes
MODEL_WAIT = 5.0
#: seconds between two snapshots at most: a dashboard needs no more
SNAPSHOT_PERIOD = 1.0


@dataclass
class _InFlight:
    seq: int
    #: kept only at QoS 1, to send the frame again
    frame: Frame | None
    sent_at: float
    #: kept only for the snapshots
    picture: CapturedFrame | None
    #: where the sent picture lies in the frame
    view: View | None = None
    attempts: int = 1


class Camera:
    """Publishes frames and listens for their results on the pipeline's topics.

    `model` is stage 0's input when known up front (a manifest); otherwise the camera learns
    it from stage 0's retained info: a camera asked to preprocess needs it for every frame, any
    camera for decoded frames (video), which go as the input tensor (`prepare`).
    """

    def __init__(self, session: Session, topics: Topics, options: CameraConfig,
                 qos: int = 1, model: ModelInput | None = None, *,
                 events: EventsConfig | None = None) -> None:
        self.session = session
        self.topics = topics
        self.options = options
        self.qos = qos
        self.model = model
        self._run_id = secrets.token_hex(3)
        self._in_flight: dict[str, _InFlight] = {}
        #: when the most recently sent of the frames that got a result was sent
        self._newest_answered_sent_at = 0.0
        self._changed = threading.Condition()
        #: published, answered (a prediction), rejected (an error event from a stage),
        #: unanswered (no result after every attempt), resent, refused_by_broker, unusable
        #: (a picture that could not be prepared)
        self.stats = NodeStats(tuple(CAMERA_COUNTERS))
        self.counters = self.stats.counters
        self._reader: LiveReader | None = None
        #: the source's state when no live reader says it: "reading" (a folder, a video read
        #: as fast as the pipeline takes it), then "ended" or "stopped"
        self._source_state = "reading"
        #: captured, dropped, reconnects and attempts of earlier runs' readers
        self._earlier: Counter[str] = Counter()
        self._rate_base = (time.monotonic(), 0, 0)
        self._rejected_in_a_row = 0
        self._last_snapshot = 0.0
        self._said_model_unknown = False
        crop = tuple(options.crop) if options.crop is not None else None
        self.geometry = Geometry(crop, options.rotate, options.flip)
        #: the tracked labels' events, counts and snapshots (`[events] labels`)
        self.events: EventPublisher | None = None
        if events is not None and events.labels:
            self.events = EventPublisher(session, topics, options.name, events,
                                         jpeg_quality=options.jpeg_quality)
            self.events.start()
        #: where the next frame goes (a replica of stage 0 with room, docs/architecture.md,
        #: Dispatch), in the live release's chain (docs/fleet.md), else the pipeline's own
        self._dispatchers: dict[str, Dispatcher] = {}
        self.dispatch: Dispatcher
        #: the stage 0 input frames go to now (the live release's, or the pipeline's)
        self._where: str | None = None
        self._send_to(topics)
        follow_live_release(session, topics, self._send_to)
        session.subscribe(topics.predictions, self._on_prediction, qos=1)
        session.subscribe(topics.errors, self._on_error, qos=1)
        if model is None:  # stage 0 says its preprocessing: needed for decoded frames too
            session.subscribe(topics.all_info, self._on_info, qos=1)

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
                              reconnects=self.session.reconnects,
                              thermal=self.stats.thermal.read())

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
        return f"{self.options.name}-{self._run_id}-{seq}"

    def run(self, source: FrameSource, frames: int | None = None,
            stop: threading.Event | None = None) -> int:
        """Publish the source's frames until `frames` are sent, the source ends or `stop` is
        set, then wait for the results of those still in flight. Returns how many were sent.

        Each run numbers its frames from 0 under a new run id, so frame ids never repeat.
        """
        stop = stop or threading.Event()
        self._run_id = secrets.token_hex(3)
        with self._changed:
            self._in_flight.clear()
        reader = LiveReader(source, condition=self._changed) if source.live else None
        self._reader = reader
        self._source_state = "reading"
        published = 0
        try:
            if reader is not None:
                reader.start()
            with closing(self._due_frames(source, reader, stop)) as due:
                for captured in due:
                    if self.publish(published, captured) is not None:
                        published += 1
                    if frames is not None and published >= frames:
                        break
        finally:
            # what the final stats say: the source had no more frames, or the camera stopped
            done = stop.is_set() or (frames is not None and published >= frames)
            self._source_state = "stopped" if done else "ended"
            if reader is not None:
                reader.stop()
                self._earlier.update(_reader_counts(reader))
                self._reader = None
        self._wait_until(lambda: not self._in_flight, stop)
        return published

    def _due_frames(self, source: FrameSource, reader: LiveReader | None,
                    stop: threading.Event) -> Iterator[CapturedFrame]:
        """Frames as they become due: after the frame period (`fps`) and when the window has
        room; from a live source the newest frame, and only while the broker is there."""
        period = 1.0 / self.options.fps if self.options.fps > 0 else 0.0
        next_at = time.monotonic()
        pictures = source.frames(stop) if reader is None else None
        try:
            while True:
                if period:
                    if stop.wait(max(0.0, next_at - time.monotonic())):
                        return
                    next_at = max(next_at + period, time.monotonic())
                if reader is None:
                    if not self._wait_until(self._has_room, stop):
                        return
                    captured = next(pictures, None)
                else:
                    if not self._wait_until(lambda r=reader: self._has_room() and r.ready
                                            and self.session.wait_connected(0), stop):
                        return
                    captured = reader.take(timeout=0)
                if captured is None:
                    return
                yield captured
        finally:
            if pictures is not None:
                pictures.close()

    def _has_room(self) -> bool:
        return len(self._in_flight) < self.options.in_flight

    def publish(self, seq: int, captured: CapturedFrame) -> str | None:
        """Send one frame; None (counted `unusable`) when its picture cannot be prepared."""
        model = self.model
        if model is None and not self._said_model_unknown and (
            self.options.preprocess != "none" or captured.encoded is None
        ):
            # asked to preprocess, a warning; a decoded frame as a PNG is exact, only larger
            log.log(logging.WARNING if self.options.preprocess != "none" else logging.INFO,
                    "stage 0's preprocessing is not known yet (no manifest given, and no "
                    "stage 0 has said it): frames go as they are, decoded ones as PNG, "
                    "until it is")
            self._said_model_unknown = True
        try:
            payload, view = prepare(captured, self.options.preprocess, model,
                                    self.options.jpeg_quality, self.geometry)
        except ImageError as exc:
            self.counters.add("unusable")
            if isinstance(exc, CropError) and not self.published:
                # the first frame: the crop never fits this camera's frames (a mistake to fix)
                raise ConfigError(f"camera {self.options.name}: key 'camera.crop': {exc}") \
                    from None
            log.warning("%s not sent: %s", captured.name, exc)
            return None
        frame_id = self.frame_id(seq)
        frame = Frame(frame_id=frame_id, source=self.options.name, seq=seq,
                      captured_at=captured.captured_at, name=captured.name, view=view)
        if isinstance(payload, np.ndarray):
            assert model is not None  # a tensor is made for a known model only
            frame = replace(frame, tensor=payload, scale=model.spec.scale,
                            zero_point=model.spec.zero_point)
        else:
            frame = replace(frame, image=payload)
        entry = _InFlight(seq, frame if self.qos > 0 else None, sent_at=time.monotonic(),
                          picture=captured if self.options.snapshot or self.events else None,
                          view=view)
        with self._changed:
            self._in_flight[frame_id] = entry
        self._send(frame_id, entry, frame)
        self.counters.add("published")
        log.debug("published %s (%s)", frame_id, captured.name)
        return frame_id

    def _send_to(self, chain: Topics, resend: bool = False) -> None:
        """Frames go to stage 0 of `chain` from now on; each chain's replicas followed once.

        `resend`: the chain before was abandoned, so the frames still in flight there are sent
        again to this one now (the network thread may publish; never under the lock). The
        same pointer said again (a reconnection) sends nothing again."""
        where = chain.stage_input(0)
        moved, self._where = where != self._where, where
        if where not in self._dispatchers:
            self._dispatchers[where] = Dispatcher(self.session, chain, 0, self.session.client_id)
        self.dispatch = self._dispatchers[where]
        if resend and moved:
            abandoned = self._take_abandoned()
            if abandoned:
                log.warning("the release before was abandoned: sending its %d frame(s) without "
                            "a result again to %s", len(abandoned), where)
            for frame_id, entry in abandoned:
                self._send_again(frame_id, entry)

    def _take_abandoned(self) -> list[tuple[str, _InFlight]]:
        """Every kept frame still without a result, as a new attempt from now: the release it
        went to was abandoned, so no result can come from there any more."""
        now = time.monotonic()
        with self._changed:
            abandoned = [(frame_id, entry) for frame_id, entry in self._in_flight.items()
                         if entry.frame is not None]
            for _frame_id, entry in abandoned:
                self._new_attempt(entry, now)
        return abandoned

    def _new_attempt(self, entry: _InFlight, now: float) -> None:
        """The frame counts as sent again from `now` (called under the lock)."""
        entry.attempts += 1
        entry.sent_at = now
        self.counters.add("resent")

    def _send_again(self, frame_id: str, entry: _InFlight) -> None:
        assert entry.frame is not None  # only kept frames are sent again
        self._send(frame_id, entry, entry.frame)

    def _send(self, frame_id: str, entry: _InFlight, frame: Frame) -> None:
        self.session.publish_confirmed(
            self.dispatch.topic(), encode_frame(replace(frame, attempt=entry.attempts)),
            self.qos, lambda refused: self._on_confirmed(frame_id, refused),
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
                self._send_again(frame_id, entry)
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
            if entry.frame is not None and entry.attempts <= self.options.resends:
                self._new_attempt(entry, now)
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
        event = ErrorEvent(node=self.options.name, reason=reason,
                           topic=self.topics.stage_input(0), frame_id=frame_id)
        self.session.publish(self.topics.errors, event.to_json(), qos=1)

    def _settle(self, frame_id: str | None, counter: str) -> _InFlight | None:
        """The frame's entry, done with; None when it is not ours or was settled already."""
        with self._changed:
            entry = self._in_flight.pop(frame_id, None) if frame_id is not None else None
            if entry is None:
                return None  # not ours, or settled already (a duplicate result)
            self._newest_answered_sent_at = max(self._newest_answered_sent_at, entry.sent_at)
            self.counters.add(counter)
            self._changed.notify_all()
            return entry

    def _on_confirmed(self, frame_id: str, refused: bool) -> None:
        if refused:  # sending it again would be refused again
            self._settle(frame_id, "refused_by_broker")

    def _on_prediction(self, message: Received) -> None:
        prediction = Prediction.parse(message.payload)
        entry = self._settle(prediction.frame_id if prediction else None, "answered")
        if entry is None or prediction is None:
            return
        self._rejected_in_a_row = 0
        self.stats.latency.add(prediction.latency_ms / 1000)
        if self.events is not None:
            self.events.observe(prediction, entry.picture, entry.view)
        now = time.monotonic()
        if self.options.snapshot and entry.picture is not None \
                and now - self._last_snapshot >= SNAPSHOT_PERIOD:
            self._last_snapshot = now
            self._publish_snapshot(entry.picture)

    def _publish_snapshot(self, picture: CapturedFrame) -> None:
        try:
            jpeg = snapshot_jpeg(picture, self.options.jpeg_quality)
        except ImageError as exc:  # it got a prediction, so this is unlikely: say it all the same
            log.warning("no snapshot of %s: %s", picture.name, exc)
            return
        self.session.publish(self.topics.snapshot(self.options.name), jpeg, qos=0, retain=True)

    def _on_error(self, message: Received) -> None:
        event = ErrorEvent.parse(message.payload)
        if event is None or event.node == self.options.name:
            return
        if self._settle(event.frame_id, "rejected") is None:
            return
        self._rejected_in_a_row += 1
        if self._rejected_in_a_row == REJECTED_LOUDLY:
            log.error("the pipeline rejected the last %d frames, the last because: %s (%s has "
                      "every reason)", REJECTED_LOUDLY, event.reason, self.topics.errors)

    def _on_info(self, message: Received) -> None:
        info = NodeInfo.parse(message.payload)
        if info is None or info.stage != 0 or info.preprocessing is None:
            return
        model = ModelInput(info.preprocessing, info.input)
        if model != self.model:
            log.info("stage 0 (%s) takes %dx%d pictures as %s: preprocessing %s here (%s)",
                     info.node, model.preprocessing.width, model.preprocessing.height,
                     model.spec, "decoded frames" if self.options.preprocess == "none"
                     else "frames", self.options.preprocess)
            with self._changed:
                self.model = model
                self._changed.notify_all()

    def wait_for_model(self, timeout: float) -> bool:
        """Wait for stage 0's retained info (sent by the broker right after connecting), so
        that the first frames are already preprocessed; False if none came."""
        with self._changed:
            return self._changed.wait_for(lambda: self.model is not None, timeout)

    # -- stats ------------------------------------------------------------------------------

    def stats_snapshot(self) -> dict:
        reader = self._reader
        counts = Counter(self._earlier)
        if reader is not None:
            counts.update(_reader_counts(reader))
        published = self.counters.get("published")
        captured = counts["captured"] if counts["captured"] or reader else published
        now = time.monotonic()
        since, published_then, captured_then = self._rate_base
        self._rate_base = (now, published, captured)
        elapsed = max(now - since, 1e-9)
        with self._changed:
            in_flight = len(self._in_flight)
        return self.stats.snapshot(
            captured=captured, dropped=counts["dropped"], reconnects=counts["reconnects"],
            reconnect_attempts=counts["attempts"],
            fps=round((published - published_then) / elapsed, 2),
            capture_fps=round((captured - captured_then) / elapsed, 2),
            in_flight=in_flight, source_state=reader.state if reader else self._source_state,
        )

    def publish_stats(self) -> dict:
        snapshot = self.stats_snapshot()
        self.session.publish(self.topics.stats(self.options.name), json.dumps(snapshot), qos=0,
                             retain=True)
        return snapshot

    def report_stats(self) -> None:
        """Retained stats, and the state to systemd (`systemctl status`)."""
        stats = self.publish_stats()
        systemd.notify(f"STATUS=camera {self.options.name}: {stats['source_state']}, "
                       f"{stats['published']} published, {stats['dropped']} dropped")


def _reader_counts(reader: LiveReader) -> dict[str, int]:
    """What a live source's reader counted: frames read and dropped, outages, attempts."""
    return {"captured": reader.captured, "dropped": reader.dropped,
            "reconnects": reader.reconnects, "attempts": reader.attempts}


# -- the daemon -------------------------------------------------------------------------------


def model_input(config: NodeConfig) -> ModelInput | None:
    """Stage 0's input from the manifest `[camera] manifest` names, if it names one."""
    path = config.camera.manifest
    if not path:
        return None
    if not Path(path).exists():
        raise ConfigError(f"{config.source}: key 'camera.manifest': {path} does not exist")
    manifest = Manifest.load(path)
    return ModelInput(manifest.preprocessing, manifest.stage(0).input)


def run_camera(config: NodeConfig, stop: threading.Event | None = None) -> int:
    """A camera daemon: publishes its source's frames (all of them, `frames` of them, or until
    stopped) and follows each to its result. 1 when no frame could get through."""
    stop = stop or stop_on_signals()
    cam, topics = config.camera, config.topics
    source = open_source(cam, f"{config.source}: key 'camera.source'")
    model = model_input(config)
    # a session the broker keeps while the camera reconnects: results published meanwhile wait
    # a camera sending `frames` frames or a finite source once is a command: it fails at once
    # if the broker cannot be used; a live, looping or watching one is a daemon, which waits
    one_shot = cam.frames is not None or not (source.live or cam.loop or cam.watch)
    session = MqttSession(config.broker, f"camera-{cam.name}", topics.availability(cam.name),
                          session_expiry=config.pipeline.session_expiry, one_shot=one_shot)
    camera = Camera(session, topics, cam, config.pipeline.qos, model,
                    events=config.events)
    if config.homeassistant.discovery and config.events.labels:  # its own device's entities
        CameraDiscovery(session, topics, cam.name, config.events.labels,
                        config.homeassistant.prefix).start()
    if config.stats.prometheus_port:
        serve_prometheus(config.stats, config.source, {"pipeline": config.pipeline.name,
                                                       "node": cam.name}, camera.metrics)
    with ExitStack() as running:  # undone in reverse, however the camera ends
        if one_shot:
            connect_once(session)
        else:
            session.start()
        # the broker drops the session of a camera that is gone: nothing waits for it
        running.callback(session.stop, end_session=True)
        if not one_shot and not wait_for_broker(session, stop):
            return 0
        wait_settled(session, topics.probe(session.client_id))  # the live release is in
        session.set_online()
        if cam.preprocess != "none" and model is None:
            camera.wait_for_model(MODEL_WAIT)
        reporter = StatsReporter(camera.report_stats, config.stats.interval)
        reporter.start()
        running.callback(reporter.stop)
        systemd.notify(f"READY=1\nSTATUS=camera {cam.name} reading {source.name}")
        running.callback(systemd.notify, "STOPPING=1")
        log.info("camera %s: reading %s", cam.name, source.name)
        # a crop outside the first frame stops the camera (ConfigError): stopped cleanly
        sent = camera.run(source, frames=cam.frames, stop=stop)
    return camera.outcome(sent)
