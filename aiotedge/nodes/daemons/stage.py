"""A stage daemon: take a frame from the broker, run this board's segment, pass the result on.

Two threads, so that under load network I/O and inference do not wait for each other: paho's
network thread measures and queues incoming messages (`_on_message`); the inference worker
decodes, invokes the segment and publishes (`_process`). The queue between them is bounded.
A QoS 1 frame that finds the stage idle (nothing queued or being computed, and no message
waiting behind it on the connection) is computed on the network thread instead: handing it
to a sleeping worker, and its result back to a sleeping network thread, would cost two thread
wake-ups per hop. Once a message arrived meanwhile, frames go through the queue again until
it runs dry, so at most one frame's inference ever holds the network thread.
`run_stage` owns the daemon's life: config to running node, announced, until told to stop.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from aiotedge.config.loader import NodeConfig
from aiotedge.contracts.errors import ConfigError, ImageError, WireError
from aiotedge.contracts.events import (
    ErrorEvent,
    NodeInfo,
    Prediction,
    build_prediction,
)
from aiotedge.contracts.geometry import View
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.room import Room
from aiotedge.contracts.topics import BROKER_DROPPED, broker_count
from aiotedge.contracts.wire import Frame, Hop, decode_activation, decode_photo, encode_frame
from aiotedge.media.image import decode_image, mask_png, preprocess
from aiotedge.nodes.daemons.lifecycle import stop_on_signals, wait_for_broker
from aiotedge.nodes.mqtt.session import MqttSession, wait_settled
from aiotedge.nodes.mqtt.transport import Received, Session
from aiotedge.nodes.observe import systemd
from aiotedge.nodes.observe.chain import ChainWatch, check_chain
from aiotedge.nodes.observe.dedup import RecentIds
from aiotedge.nodes.observe.dispatch import Dispatcher, RoomKeeper
from aiotedge.nodes.observe.gaps import SequenceGaps
from aiotedge.nodes.observe.health import PipelineAvailability
from aiotedge.nodes.observe.homeassistant import HomeAssistantBridge
from aiotedge.nodes.observe.metrics import (
    Metric,
    NodeStats,
    StatsReporter,
    serve_prometheus,
    stage_metrics,
)
from aiotedge.tflite.results import ResultFilter, UnusableOutputError, read_results
from aiotedge.tflite.runtime import Segment, open_segment
from aiotedge.tflite.selfcheck import require_reference

log = logging.getLogger(__name__)

_QueuedMessage = tuple[Received, float]
#: seconds between two warnings about missed frames at most (their count is in the stats)
SAY_MISSED_EVERY = 10.0
#: seconds after a reconnection within which the camera and other subscribers are back too
#: (their reconnect delay is 1 s): an answer given before may have reached no one
RESUBSCRIBED_WITHIN = 10.0


class StageNode:
    """One segment of the pipeline, served over MQTT through the session it is given."""

    def __init__(self, config: NodeConfig, manifest: Manifest, session: Session,
                 segment: Segment) -> None:
        self.config = config
        self.settings = config.stage
        self.index = config.stage.index
        self.node = config.stage.node_name
        self.qos = config.pipeline.qos
        self.manifest = manifest
        self.topics = config.topics
        self.session = session
        self.segment = segment
        self.spec = manifest.stage(self.index)
        self.is_last = self.index == len(manifest.stages) - 1
        #: the last stage: which results its predictions keep
        self.keep = ResultFilter.of(self.settings.min_score, self.settings.labels)
        # stage 0 takes photos from cameras (or its input tensor, from a camera that
        # preprocesses), the others the previous stage's activation
        self._decode: Callable[[bytes], Frame] = (
            partial(decode_photo, tensor=self.spec.input) if self.index == 0
            else partial(decode_activation, spec=self.spec.input)
        )
        self.input_topic = self.topics.stage_input(self.index)
        self.output_topic = (
            self.topics.predictions if self.is_last else self.topics.stage_input(self.index + 1)
        )
        self.info = NodeInfo.for_stage(manifest, self.index, self.node,
                                       self.settings.share_group)
        self.stats = NodeStats()
        self.counters = self.stats.counters
        self._recent = RecentIds()
        #: the last stage: frames answered already, by this node or (seen on the predictions
        #: topic) by a replica of it, each with the connection (the session's count of
        #: reconnects) and the time (Unix) of the answer
        self._answered = RecentIds()
        #: the session's count of reconnects, and when this stage first saw it (Unix)
        self._connection: tuple[int, float] = (0, 0.0)
        #: stage 0 alone (a replica sees only its share of the frames): gaps in each source's
        #: frame numbers
        self._gaps = (SequenceGaps() if self.index == 0 and not self.settings.share_group
                      else None)
        self._missed_said_at = -SAY_MISSED_EVERY
        self._stopping = threading.Event()
        #: set by serve(): until then frames are held, neither computed nor acknowledged, in
        #: `_held` (not in the bounded queue: the network thread must never wait then, it
        #: reads the messages the start-up check waits for)
        self._serving = threading.Event()
        self._held: list[_QueuedMessage] = []
        self._held_lock = threading.Lock()
        self._queue: queue.Queue[_QueuedMessage | None] = queue.Queue(self.settings.queue_size)
        #: held while the network thread computes a frame itself; stop() waits for it
        self._inline = threading.Lock()
        #: when the frame on the network thread started (monotonic), for the watchdog
        self._inline_since: float | None = None
        #: a message arrived while the network thread computed one: use the worker until
        #: its queue runs dry
        self._loaded = False
        self._worker = threading.Thread(target=self._run_worker, name="inference", daemon=True)
        self._reporter = StatsReporter(self.publish_stats, config.stats.interval)
        #: the broker's count of dropped messages, where followed (follow_broker_drops)
        self.broker_dropped: int | None = None
        #: a replica's room, offered to the senders once it serves (None: not a replica)
        self._room = (RoomKeeper(self.settings.queue_size, self._say_room)
                      if self.settings.share_group and self.settings.dispatch else None)
        #: which replica of the next stage gets a result (made in start())
        self._next: Dispatcher | None = None

    def forget_subscription(self, share_group: str) -> None:
        """Drop the input subscription of an earlier run with another share group.

        The broker keeps a stage's subscriptions in its session: one left from before a change
        of `share_group` would deliver every frame a second time.
        """
        old = f"$share/{share_group}/{self.input_topic}" if share_group else self.input_topic
        log.info("share group changed: dropping the earlier subscription %s", old)
        self.session.unsubscribe_on_connect(old)

    def start(self) -> None:
        if self.settings.share_group and not self.config.broker.checks_subscriptions:
            log.warning("share group %r: any user of a broker that does not check "
                        "subscriptions can join it and take frames, which are then lost; run "
                        "the broker with secure-dynsec.conf and set [broker] "
                        "checks_subscriptions = true (docs/deploy-pi-cluster.md, section 8)",
                        self.settings.share_group)
        self._worker.start()
        self.session.subscribe(
            self.input_topic,
            self._on_message,
            self.qos,
            share_group=self.settings.share_group or None,
            retained=False,  # a frame published retained is computed once, not at every start
        )
        if self._room is not None:
            self.session.subscribe(self.topics.replica_inputs(self.index, self.node),
                                   self._on_message, self.qos, retained=False,
                                   on_refused=self._room_refused)
        if self.is_last and self.settings.share_group:
            self.session.subscribe(self.topics.predictions, self._on_sibling_prediction, qos=0)
        if not self.is_last:
            self._next = Dispatcher(self.session, self.topics, self.index + 1, self.node)
        self.session.start()
        self._reporter.start()

    def serve(self) -> None:
        """Compute frames from now on, those held since start() first: a stage that turns out
        not to fit its neighbours stops without having taken any (the broker keeps them)."""
        with self._held_lock:
            # frames go to the worker, behind the held ones, until it is idle
            self._loaded = bool(self._held)
            self._serving.set()

    def announce_online(self) -> None:
        self.session.announce(self.topics.info(self.node), self.info.to_json())
        self.session.set_online()
        if self._room is not None:
            self._room.start()
        log.info(
            "stage %d ready: %s -> %s (%s)",
            self.index, self.input_topic, self.output_topic, self.segment.path.name,
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop taking frames, finish those already queued, publish the final stats (the
        last ones: retained), say offline.

        Frames that arrive from now on are left unacknowledged: with QoS 1 the broker keeps
        them for this node's next start (or, for a replica, its next connection).
        """
        self._stopping.set()
        if self._room is not None:
            self._room.close()
        if not self._serving.is_set():  # the frames held stay unacknowledged, with the broker
            self._worker.join(timeout)
            self._reporter.stop(timeout)
            self.session.stop()
            return
        with self._inline:  # a frame being computed on the network thread is finished first
            pass
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.error("the inference worker is stuck; stopping without it")
        self._worker.join(timeout)
        if not self.session.wait_acknowledged(timeout):
            log.warning("%d results not acknowledged by the broker", self.session.unacknowledged)
        self._reporter.stop(timeout)
        self.session.stop()
        log.info("stage %d stopped: %s", self.index, self.counters.snapshot())

    def stats_snapshot(self) -> dict:
        """The stats message (it starts new fps and CPU windows: the publisher's alone)."""
        return self.stats.snapshot(
            queue_depth=self._queue.qsize(),
            stage=self.index,
            refused_by_broker=self.session.refused,
            unrouted=self.session.unrouted,
            reconnects=self.session.reconnects,
            broker_problem=self.session.last_problem,
        )

    def metrics(self) -> list[Metric]:
        """The Prometheus view: read only, a scrape moves no window of the stats message."""
        return stage_metrics(
            self.stats,
            {"version": self.info.version, "model": self.info.model,
             "manifest": self.info.manifest},
            queued=self._queue.qsize(), connected=self.session.connected,
            refused=self.session.refused, unrouted=self.session.unrouted,
            reconnects=self.session.reconnects, broker_dropped=self.broker_dropped,
        )

    def follow_broker_drops(self) -> None:
        """Follow the broker's own count of dropped messages ($SYS), for Prometheus: what a
        publisher lost at the broker's queue limits, whoever it is. Where this login may not
        read it, the metric is absent."""
        def take(message: Received) -> None:
            self.broker_dropped = broker_count(message.payload)

        self.session.subscribe(BROKER_DROPPED, take, qos=0)

    def publish_stats(self) -> None:
        payload = json.dumps(self.stats_snapshot())
        self.session.publish(self.topics.stats(self.node), payload, qos=0, retain=True)

    def _say_room(self, room: Room) -> None:
        # retained: a sender that starts later knows every replica's room at once, instead of
        # sending everything to the first one it hears for up to a second
        self.session.publish(self.topics.room(self.index, self.node), room.to_json(), qos=0,
                             retain=True)

    def _room_refused(self, reason: str) -> None:
        """The broker's ACL refuses this replica its own topic: frames can reach it only
        through the stage's, so it offers no room (senders would lose what they send)."""
        log.error("no own input topic (%s): this replica takes the frames the broker deals "
                  "it, and offers no room (docs/deploy-pi-cluster.md, the ACL)", reason)
        if self._room is not None:
            self._room.close()

    # -- network thread -------------------------------------------------------------------

    def _on_message(self, message: Received) -> None:
        if self._stopping.is_set():
            return  # unacknowledged: the broker delivers it again after the restart
        received = time.time()
        self.counters.add("frames_in")
        self.counters.add("bytes_in", len(message.payload))
        if len(message.payload) > self.settings.max_message_bytes:
            self._reject(
                message,
                f"message of {len(message.payload)} bytes exceeds the limit of "
                f"{self.settings.max_message_bytes}",
            )
            return
        if self._room is not None:
            self._room.took(None if message.topic == self.input_topic
                            else message.topic.rsplit("/", 1)[-1])
        if not self._serving.is_set():
            with self._held_lock:
                if not self._serving.is_set():
                    self._held.append((message, received))
                    return
        if message.qos > 0:
            if not self._loaded and self._queue.unfinished_tasks == 0:
                self._process_inline(message, received)
                return
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
        self._queue.task_done()
        if oldest is None:  # stopping: keep the sentinel last
            self._queue.put_nowait(None)
            return
        message, _ = oldest
        if self._room is not None:
            self._room.finished()
        self.counters.add("dropped")
        log.warning("queue full: dropped the oldest frame (%d dropped so far)",
                    self.counters.get("dropped"))
        self.session.ack(message)

    # -- inference worker -----------------------------------------------------------------

    def _process_inline(self, message: Received, received: float) -> None:
        """Compute a frame on the network thread: the worker is idle and nothing is queued,
        and only this thread queues, so the two never run the segment at once."""
        with self._inline:
            if self._stopping.is_set():
                return  # unacknowledged: the broker delivers it again after the restart
            self._inline_since = time.monotonic()
            try:
                self._process(message, received)
            finally:
                self._inline_since = None
            self._loaded = self.session.input_waiting()

    def _run_worker(self) -> None:
        """Pings the systemd watchdog between frames: a hung invoke stops the pings (on the
        network thread too)."""
        ping_every = systemd.watchdog_interval()
        next_ping = 0.0
        while not self._serving.wait(timeout=1.0):  # frames are held until serve()
            if self._stopping.is_set():
                return
        with self._held_lock:
            held, self._held = self._held, []
        for item in held:
            self._process(*item)
        if held and self._queue.empty():  # as after a queued frame: ran dry
            self._loaded = False
        while True:
            if ping_every and time.monotonic() >= next_ping and not self._inline_hung(ping_every):
                systemd.notify("WATCHDOG=1")
                next_ping = time.monotonic() + ping_every
            try:
                item = self._queue.get(timeout=ping_every)
            except queue.Empty:
                continue
            if item is None:
                return
            try:
                self._process(*item)
            finally:
                if self._queue.empty():  # ran dry: the next frame may go on the network thread
                    self._loaded = False
                self._queue.task_done()

    def _inline_hung(self, ping_every: float) -> bool:
        started = self._inline_since
        return started is not None and time.monotonic() - started > ping_every

    def _process(self, message: Received, received: float) -> None:
        """Decode, drop a duplicate, compute and forward one frame; refuse what is bad."""
        frame_id = None
        taken = time.perf_counter()
        try:
            frame = self._decode(message.payload)
            frame_id = frame.frame_id
            if self._is_duplicate(message, frame, received):
                self.counters.add("duplicates")
                log.info("dropped a duplicate of %s", frame_id)
                self.session.ack(message)
                return
            if self._gaps is not None:
                self._follow_numbers(frame)
            self._handle(message, frame, received)
        except WireError as exc:
            self._reject(message, exc.reason, exc.frame_id)
        except (ImageError, UnusableOutputError) as exc:
            self._reject(message, str(exc), frame_id)
        except Exception as exc:  # the daemon outlives any single frame
            log.exception("frame %s failed", frame_id)
            self._reject(message, f"internal error: {exc!r}", frame_id)
        finally:  # a duplicate too: done with, whichever way
            if self._room is not None:
                self._room.finished()
        self.stats.service.add(time.perf_counter() - taken)

    def _is_duplicate(self, message: Received, frame: Frame, received: float) -> bool:
        """A copy of an attempt taken before (a redelivery), or a frame the last stage, or a
        replica of it, has answered already (a camera's resend of a late, not lost, frame):
        at-least-once inside the pipeline, once for the predictions' subscribers.

        At stage 0 the same attempt must also be the same message: a camera's redelivered
        frame is, byte for byte; another picture under a frame id already taken is refused.
        Later stages cannot tell: a stage that computes a frame again stamps other times.
        """
        content = zlib.crc32(message.payload) if self.index == 0 else True
        earlier = self._recent.seen(f"{frame.frame_id}#{frame.attempt}", content)
        if earlier is not None and earlier != content:
            raise WireError(f"frame id {frame.frame_id!r} (attempt {frame.attempt}) was taken "
                            "already with other content", frame.frame_id)
        return earlier is not None or (self.is_last and self._answered_before(frame, received))

    def _answered_before(self, frame: Frame, received: float) -> bool:
        """Whether an answer given already surely reached the camera, which sent the frame
        again. Not when the broker was restarted since (killed before it saved the answer, it
        lost it), nor when the answer went out in the first seconds after that, before the
        camera had subscribed again, and before this attempt entered the pipeline: such a
        frame is answered again rather than perhaps never."""
        reconnects = self.session.reconnects
        if reconnects != self._connection[0]:
            self._connection = (reconnects, time.time())
        answer = self._answered.get(frame.frame_id)
        if answer is None:
            return False
        connection, answered_at = answer  # type: ignore[misc]
        if connection != reconnects:
            return False
        entered = frame.trace[0].received if frame.trace else received
        settled = reconnects == 0 or answered_at >= self._connection[1] + RESUBSCRIBED_WITHIN
        return bool(settled or answered_at >= entered)

    def _remember_answer(self, frame_id: str, answered_at: float) -> None:
        self._answered.put(frame_id, (self.session.reconnects, answered_at))

    def _follow_numbers(self, frame: Frame) -> None:
        """Count the frames of a source that never reached this stage 0 (any publisher's)."""
        assert self._gaps is not None
        arrival = self._gaps.arrived(frame.source, frame.seq)
        if arrival.late:
            self.counters.add("arrived_late")
        if not arrival.skipped:
            return
        self.counters.add("missed", arrival.skipped)
        if (now := time.monotonic()) - self._missed_said_at >= SAY_MISSED_EVERY:
            self._missed_said_at = now
            log.warning("%d frame(s) of %s before #%d never came (%d missed so far): lost on "
                        "the way here, at the broker's queue limit say", arrival.skipped,
                        frame.source, frame.seq, self.counters.get("missed"))

    def _on_sibling_prediction(self, message: Received) -> None:
        """A replica of the last stage answered a frame: this one need not answer it again."""
        prediction = Prediction.parse(message.payload)
        if prediction is not None:
            self._remember_answer(prediction.frame_id, time.time())

    def _handle(self, message: Received, frame: Frame, received: float) -> None:
        frame, tensor = self._input_tensor(frame)
        started = time.perf_counter()
        outputs = self.segment.run_all(tensor) if self.is_last else (self.segment.run(tensor),)
        inference = time.perf_counter() - started
        hop = Hop(self.index, received, time.time())
        if self.is_last:
            payload = self._prediction(frame, outputs, hop)
            self._remember_answer(frame.frame_id, hop.done)
        else:
            payload = encode_frame(frame.with_tensor(outputs[0], self.spec.output, hop),
                                   self.spec.output_codec)
        self.stats.inference.add(inference)
        self.stats.latency.add(max(0.0, hop.done - frame.captured_at))
        self.counters.add("frames_out")
        self.counters.add("bytes_out", len(payload))
        # last: a frame computed on the network thread goes out once this thread is back in
        # paho's loop
        self.session.forward(self._next.topic() if self._next else self.output_topic,
                             payload, self.qos, message)

    def _prediction(self, frame: Frame, outputs: tuple[np.ndarray, ...], hop: Hop) -> bytes:
        """The prediction's JSON (tflite.results reads the model's kind); a segmentation's
        mask goes out beside it, on its own topic."""
        results = read_results(outputs, self.spec.outputs, self.manifest, frame.view,
                               top=self.settings.top_k, keep=self.keep)
        if results.mask is not None:
            self.session.publish(self.topics.mask(frame.source),
                                 mask_png(results.mask, frame.frame_id), qos=0, retain=True)
        return build_prediction(frame, results.top, hop, kind=results.kind,
                                objects=results.objects, keypoints=results.keypoints,
                                classes=results.classes,
                                release=self.config.release or None).to_json().encode()

    def _input_tensor(self, frame: Frame) -> tuple[Frame, np.ndarray]:
        """The frame's tensor; a photo's frame gains the photo's view when it came without one
        (the last stage maps boxes back through it)."""
        if frame.image is not None:
            photo = decode_image(frame.image)
            if frame.view is None:
                frame = replace(frame, view=View(*photo.size))
            return frame, preprocess(photo, self.manifest.preprocessing, self.spec.input)
        assert frame.tensor is not None  # a frame carries one or the other
        return frame, frame.tensor

    def _reject(self, message: Received, reason: str, frame_id: str | None = None) -> None:
        """Count it, tell the errors topic, acknowledge it so it is not redelivered.

        The input is acknowledged at once, not when the broker has the event: an event that
        cannot be delivered must never hold its input, and with it the stage, hostage.
        """
        self.counters.add("rejected")
        event = ErrorEvent(node=self.node, reason=reason, stage=self.index,
                           topic=message.topic, frame_id=frame_id)
        log.warning("rejected a message on %s: %s", event.topic, event.reason)
        self.session.publish(self.topics.errors, event.to_json(), qos=self.qos)
        self.session.ack(message)


# -- the daemon -------------------------------------------------------------------------------


def load_stage_manifest(config: NodeConfig) -> Manifest:
    """The manifest a stage config names, with errors that point at the config key."""
    path, index, source = config.stage.manifest, config.stage.index, config.source
    if not path:
        raise ConfigError(f"{source}: no manifest given (--manifest or key 'stage.manifest')")
    if not Path(path).exists():
        raise ConfigError(f"{source}: key 'stage.manifest': {path} does not exist")
    if index is None:
        raise ConfigError(f"{source}: no stage index given (--stage or key 'stage.index')")
    manifest = Manifest.load(path)
    if not 0 <= index < len(manifest.stages):
        raise ConfigError(
            f"{source}: key 'stage.index' is {index}, but {path} has "
            f"{len(manifest.stages)} stages (0 to {len(manifest.stages) - 1})"
        )
    return manifest


def stage_session(config: NodeConfig) -> MqttSession:
    """The MQTT session a stage serves its segment through.

    QoS 1: manual acks (an input is acknowledged once its result is with the broker), at
    most `queue_size` unacknowledged frames from the broker, and a session the broker keeps
    while the stage restarts.
    """
    qos, node = config.pipeline.qos, config.stage.node_name
    return MqttSession(
        config.broker,
        client_id=node,
        availability_topic=config.topics.availability(node),
        manual_ack=qos > 0,
        receive_maximum=config.stage.queue_size,
        session_expiry=config.pipeline.session_expiry if qos > 0 else 0,
    )


def run_stage(config: NodeConfig, stop: threading.Event | None = None, *,
              on_serving: Callable[[StageNode], None] | None = None,
              notify_systemd: bool = True) -> int:
    """A stage daemon from start to stop: 0 when stopped, 2 when it does not fit the chain.

    A node daemon (nodes/daemons/node.py) runs it in a thread per release it serves: it
    hears when the stage serves (`on_serving`), and speaks to systemd itself.

    `stop` defaults to SIGTERM/SIGINT (systemctl stop, Ctrl-C). Whether the stage fits its
    online neighbours is checked on its own connection, once the broker has sent it the
    pipeline's retained state, and frames are held until then: a second connection under
    the stage's client id (its user name on the secure brokers) would end the session the
    broker kept for it, and with it the frames that waited while it was away.
    """
    stop = stop or stop_on_signals()
    manifest = load_stage_manifest(config)
    segment = open_segment(manifest, config.stage.index, config.stage.threads)
    node = StageNode(config, manifest, stage_session(config), segment)
    if config.stats.prometheus_port:  # a missing extra is said before any work
        serve_prometheus(config.stats, config.source,
                         {"pipeline": config.pipeline.name, "stage": str(node.index),
                          "node": node.node}, node.metrics)
        if node.index == 0:  # where the frames of any publisher are lost at the broker
            node.follow_broker_drops()
    checked = require_reference(manifest, config.stage.index, segment)
    if checked is not None:  # said in its info
        node.info = replace(node.info, self_check=checked.describe())
    pipeline = PipelineAvailability(node.session, config.topics, node.node)
    bridge = None
    if config.homeassistant.discovery and node.is_last:
        bridge = HomeAssistantBridge(node.session, config.topics, manifest, node.node,
                                     config.homeassistant.prefix,
                                     replicated=bool(config.stage.share_group))
    with ExitStack() as running:  # undone in reverse, however the daemon ends
        node.start()
        running.callback(node.stop)
        if not wait_for_broker(node.session, stop):
            return 0
        wait_settled(node.session, config.topics.probe(node.session.client_id))
        fits, previous = check_chain(pipeline.view(), node.info)
        if not fits:
            return 2
        if previous is not None and previous.share_group != config.stage.share_group:
            node.forget_subscription(previous.share_group)
        # the check above saw only the neighbours online already: the watch follows them on
        pipeline.follow(ChainWatch(node.session, config.topics, node.info, node.counters,
                                   config.pipeline.qos).check)
        node.serve()
        node.announce_online()
        running.callback(pipeline.leaving)
        if bridge is not None:
            bridge.start()
        if on_serving is not None:
            on_serving(node)
        if notify_systemd:
            systemd.notify(f"READY=1\nSTATUS=stage {node.index} serving {node.input_topic}")
            running.callback(systemd.notify, "STOPPING=1")
        stop.wait()
    return 0
