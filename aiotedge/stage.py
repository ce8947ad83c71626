"""The stage loop: take a frame from the broker, run this board's segment, pass the result on.

Two threads, so network I/O and inference never wait for each other: paho's network thread
only measures and queues incoming messages (`_on_message`); the inference worker decodes,
invokes the segment and publishes (`_handle`). The queue between them is bounded.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import paho.mqtt.client as mqtt

from aiotedge import service
from aiotedge.dedup import RecentIds
from aiotedge.events import ErrorEvent
from aiotedge.image import ImageError, decode_image, preprocess
from aiotedge.manifest import Manifest, ManifestError
from aiotedge.metrics import NodeStats
from aiotedge.nodeinfo import NodeInfo
from aiotedge.runtime import Segment
from aiotedge.session import BrokerConfig, MqttSession
from aiotedge.sink import build_prediction, top_k
from aiotedge.topics import Topics
from aiotedge.wire import Frame, Hop, WireError, decode_frame, encode_frame

log = logging.getLogger(__name__)

_QueuedMessage = tuple[mqtt.MQTTMessage, float]


class UnusableOutputError(ValueError):
    """The segment ran but its output cannot be passed on (JSON has no NaN)."""


@dataclass(frozen=True)
class StageOptions:
    index: int
    node: str
    qos: int = 1
    queue_size: int = 4
    num_threads: int | None = None
    top_k: int = 5
    max_message_bytes: int = 8 * 1024 * 1024
    #: replicas with the same group share the stage's frames (MQTT v5 shared subscription);
    #: empty: a plain subscription, which mosquitto keeps across its own restarts
    share_group: str = ""
    session_expiry: int = 3600
    stats_interval: float = 10.0


class StageNode:
    """One segment of the pipeline, served over MQTT."""

    def __init__(
        self, manifest: Manifest, topics: Topics, broker: BrokerConfig, options: StageOptions
    ) -> None:
        self.manifest = manifest
        self.topics = topics
        self.options = options
        self.spec = manifest.stage(options.index)
        self.is_last = options.index == len(manifest.stages) - 1
        self.segment = Segment(manifest.check_segment(options.index), options.num_threads)
        for which, actual, promised in (
            ("input", self.segment.input_spec, self.spec.input),
            ("output", self.segment.output_spec, self.spec.output),
        ):
            if not actual.matches(promised):
                raise ManifestError(
                    f"segment {which} is {actual}, the manifest promises {promised}"
                )
        # stage 0 takes photos from cameras, the others the previous stage's activation
        self._expected = None if options.index == 0 else self.spec.input
        self.input_topic = topics.stage_input(options.index)
        self.output_topic = (
            topics.predictions if self.is_last else topics.stage_input(options.index + 1)
        )
        self.info = NodeInfo.for_stage(manifest, options.index, options.node, options.share_group)
        self.stats = NodeStats()
        self.counters = self.stats.counters
        self._recent = RecentIds()
        self._stopping = threading.Event()
        self._queue: queue.Queue[_QueuedMessage | None] = queue.Queue(options.queue_size)
        self.session = MqttSession(
            broker,
            client_id=options.node,
            availability_topic=topics.availability(options.node),
            manual_ack=options.qos > 0,
            receive_maximum=options.queue_size,
            session_expiry=options.session_expiry if options.qos > 0 else 0,
        )
        self._worker = threading.Thread(target=self._run_worker, name="inference", daemon=True)
        self._reporter = threading.Thread(target=self._report_stats, name="stats", daemon=True)

    def forget_subscription(self, share_group: str) -> None:
        """Drop the input subscription of an earlier run with another share group.

        The broker keeps a stage's subscriptions in its session: one left from before a change
        of `share_group` would deliver every frame a second time.
        """
        old = f"$share/{share_group}/{self.input_topic}" if share_group else self.input_topic
        log.info("share group changed: dropping the earlier subscription %s", old)
        self.session.unsubscribe_on_connect(old)

    def start(self) -> None:
        self._worker.start()
        self.session.subscribe(
            self.input_topic,
            self._on_message,
            self.options.qos,
            share_group=self.options.share_group or None,
        )
        self.session.start()
        if self.options.stats_interval > 0:
            self._reporter.start()

    def announce_online(self) -> None:
        self.session.announce(self.topics.info(self.options.node), self.info.to_json())
        self.session.set_online()
        log.info(
            "stage %d ready: %s -> %s (%s)",
            self.options.index, self.input_topic, self.output_topic, self.segment.path.name,
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop taking frames, finish those already queued, say offline.

        Frames that arrive from now on are left unacknowledged: with QoS 1 the broker keeps
        them for this node's next start (or, for a replica, its next connection).
        """
        self._stopping.set()
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.error("the inference worker is stuck; stopping without it")
        self._worker.join(timeout)
        if not self.session.wait_acknowledged(timeout):
            log.warning("%d results not acknowledged by the broker", self.session.unacknowledged)
        self.publish_stats()
        self.session.stop()
        log.info("stage %d stopped: %s", self.options.index, self.counters.snapshot())

    def stats_snapshot(self) -> dict:
        return self.stats.snapshot(
            queue_depth=self._queue.qsize(),
            stage=self.options.index,
            refused_by_broker=self.session.refused,
            unrouted=self.session.unrouted,
        )

    def publish_stats(self) -> None:
        payload = json.dumps(self.stats_snapshot())
        self.session.publish(self.topics.stats(self.options.node), payload, qos=0, retain=True)

    def _report_stats(self) -> None:
        while not self._stopping.wait(self.options.stats_interval):
            self.publish_stats()

    # -- network thread -------------------------------------------------------------------

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        if self._stopping.is_set():
            return  # unacknowledged: the broker delivers it again after the restart
        received = time.time()
        self.counters.add("frames_in")
        self.counters.add("bytes_in", len(message.payload))
        if len(message.payload) > self.options.max_message_bytes:
            self._reject(
                message,
                f"message of {len(message.payload)} bytes exceeds the limit of "
                f"{self.options.max_message_bytes}",
            )
            return
        if message.qos > 0:
            # Receive Maximum keeps the broker within the queue's size, but mosquitto 2.0
            # overshoots it after acknowledgements: wait for room rather than lose a frame.
            while not self._stopping.is_set():
                try:
                    self._queue.put((message, received), timeout=1.0)
                    return
                except queue.Full:
                    continue
            return  # stopping: left unacknowledged, delivered again after the restart
        try:
            self._queue.put_nowait((message, received))
        except queue.Full:
            self._drop_oldest()
            try:
                self._queue.put_nowait((message, received))
            except queue.Full:  # stop() queued its sentinel meanwhile
                return

    def _drop_oldest(self) -> None:
        """Live streams want the newest frame: the oldest waiting one gives way."""
        try:
            oldest = self._queue.get_nowait()
        except queue.Empty:
            return
        if oldest is None:  # stopping: keep the sentinel last
            self._queue.put_nowait(None)
            return
        message, _ = oldest
        self.counters.add("dropped")
        log.warning("queue full: dropped the oldest frame (%d dropped so far)",
                    self.counters.get("dropped"))
        self.session.ack(message)

    # -- inference worker -----------------------------------------------------------------

    def _run_worker(self) -> None:
        """Pings the systemd watchdog between frames: a hung invoke stops the pings."""
        ping_every = service.watchdog_interval()
        next_ping = 0.0
        while True:
            if ping_every and time.monotonic() >= next_ping:
                service.notify("WATCHDOG=1")
                next_ping = time.monotonic() + ping_every
            try:
                item = self._queue.get(timeout=ping_every)
            except queue.Empty:
                continue
            if item is None:
                return
            message, received = item
            frame_id = None
            try:
                frame = decode_frame(message.payload, self._expected)
                frame_id = frame.frame_id
                if self._recent.seen(f"{frame_id}#{frame.attempt}"):
                    self.counters.add("duplicates")
                    log.info("dropped a duplicate of %s", frame_id)
                    self.session.ack(message)
                    continue
                self._handle(message, frame, received)
            except WireError as exc:
                self._reject(message, exc.reason, exc.frame_id)
            except (ImageError, UnusableOutputError) as exc:
                self._reject(message, str(exc), frame_id)
            except Exception as exc:  # the daemon outlives any single frame
                log.exception("frame %s failed", frame_id)
                self._reject(message, f"internal error: {exc!r}", frame_id)

    def _handle(self, message: mqtt.MQTTMessage, frame: Frame, received: float) -> None:
        tensor = self._input_tensor(frame)
        started = time.perf_counter()
        output = self.segment.run(tensor)
        self.stats.inference_ms.add((time.perf_counter() - started) * 1000)
        hop = Hop(self.options.index, received, time.time())
        self.stats.latency_ms.add((hop.done - frame.captured_at) * 1000)
        if self.is_last:
            top = top_k(output, self.spec.output, self.manifest, self.options.top_k)
            if not all(math.isfinite(score.score) for score in top):
                raise UnusableOutputError("the model's output is not finite (NaN or infinity): "
                                     "no prediction can be made of it")
            payload = build_prediction(frame, top, hop).to_json().encode()
        else:
            payload = encode_frame(frame.with_tensor(output, self.spec.output, hop))
        self.session.forward(self.output_topic, payload, self.options.qos, message)
        self.counters.add("frames_out")
        self.counters.add("bytes_out", len(payload))

    def _input_tensor(self, frame: Frame) -> np.ndarray:
        if frame.image is not None:
            return preprocess(
                decode_image(frame.image), self.manifest.preprocessing, self.spec.input
            )
        assert frame.tensor is not None  # decode_frame returns one or the other
        return frame.tensor

    def _reject(self, message: mqtt.MQTTMessage, reason: str, frame_id: str | None = None) -> None:
        """Count it, tell the errors topic, acknowledge it so it is not redelivered.

        The input is acknowledged at once, not when the broker has the event: an event that
        cannot be delivered must never hold its input, and with it the stage, hostage.
        """
        self.counters.add("rejected")
        event = ErrorEvent(node=self.options.node, reason=reason, stage=self.options.index,
                           topic=message.topic, frame_id=frame_id)
        log.warning("rejected a message on %s: %s", event.topic, event.reason)
        self.session.publish(self.topics.errors, event.to_json(), qos=self.options.qos)
        self.session.ack(message)
