"""One scenario's world: a mosquitto, stage daemons, a camera, and an observer that counts.

Everything a `Run` starts is registered on its ExitStack the moment it exists, so leaving the
`with` block (normally, on a failed check, or on the scenario's deadline) stops it all. Every
wait is for a condition, bounded by the scenario's deadline; none is a sleep.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import paho.mqtt.client as mqtt

import aiotedge
from aiotedge.config.sections import BrokerConfig, CameraConfig
from aiotedge.contracts.events import Prediction, Score
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import ONLINE, Topics
from aiotedge.media.sources import Stills
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.daemons.status import collect_status
from aiotedge.nodes.mqtt.broker import LocalBroker
from aiotedge.nodes.mqtt.session import MqttSession
from bench.reliability.procfs import ProcSampler, Usage
from bench.reliability.secure import Credentials

log = logging.getLogger(__name__)

#: how often the broker publishes $SYS counters (its dropped-message count explains losses)
SYS_INTERVAL = 1
#: seconds without any new prediction or error event after which a run counts as settled
#: (the default; the fast mode's tiny models need less)
QUIET_SECONDS = 8.0
BROKER_NODE = "mosquitto"
#: the users of the shipped ACL the observer and the camera log in as, where there are users
OBSERVER_USER = "watcher"
CAMERA_USER = "cam0"


class ScenarioTimeoutError(RuntimeError):
    """The scenario's hard deadline passed; everything it started is being stopped."""


@dataclass(frozen=True)
class Deadline:
    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def bound(self, timeout: float) -> float:
        """`timeout`, cut to what is left; raises once nothing is left."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise ScenarioTimeoutError("the scenario's hard timeout passed")
        return min(timeout, left)


class Broker(LocalBroker):
    """LocalBroker plus its pid (for /proc) and whether it exited without being asked."""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def died(self) -> int | None:
        """The exit code if mosquitto is gone although nobody stopped it."""
        if self._process is None:
            return None
        return self._process.poll()

    def save(self, deadline: Deadline) -> None:
        """Have mosquitto write its persistence database now (SIGUSR1), and wait until it has:
        its sessions and subscriptions as they are survive a SIGKILL after this."""
        database = self._workdir / "mosquitto.db"
        before = database.stat().st_mtime_ns if database.exists() else -1
        assert self._process is not None
        self._process.send_signal(signal.SIGUSR1)
        while not (database.exists() and database.stat().st_mtime_ns != before):
            time.sleep(min(0.02, deadline.bound(0.02)))  # no event says a file was written


def broker_config(extra: str) -> str:
    """The harness's additions to the shipped settings (persistence on, as shipped): $SYS
    counters every second."""
    return f"sys_interval {SYS_INTERVAL}\n{extra}"


def child_env() -> dict[str, str]:
    """The environment for daemons: they import the same aiotedge the harness imported."""
    source = str(Path(aiotedge.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{source}{os.pathsep}{path}" if path else source}


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


@dataclass
class StageDaemon:
    """One `python -m aiotedge stage` process and what the harness asked of it."""

    index: int
    node: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    #: set before the harness stops it, so its exit does not count as a crash
    stop_requested: bool = False
    crashes: list[str] = field(default_factory=list)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass(frozen=True)
class StageLaunch:
    """How to start a stage: its manifest, extra flags, a command prefix, another broker address.

    The prefix runs the daemon elsewhere (`ip netns exec NS` for the partition); the address is
    then the broker's listener as seen from there.
    """

    manifest: Path | None = None
    flags: tuple[str, ...] = ()
    prefix: tuple[str, ...] = ()
    broker: str | None = None
    node: str | None = None


class Run:
    """A scenario's broker, daemons, camera and observer; a context manager that cleans up."""

    def __init__(
        self,
        name: str,
        manifest: Manifest,
        deadline: Deadline,
        *,
        qos: int = 1,
        extra: str = "",
        stage_flags: tuple[str, ...] = (),
        launches: dict[int, StageLaunch] | None = None,
        start_broker: bool = True,
        pipeline: str | None = None,
        credentials: Credentials | None = None,
        quiet: float = QUIET_SECONDS,
        observer_user: str = OBSERVER_USER,
    ) -> None:
        self.name = name
        self.manifest = manifest
        self.deadline = deadline
        self.qos = qos
        self.topics = Topics(pipeline or f"rel{secrets.token_hex(3)}")
        self.credentials = credentials
        self.observer_user = observer_user
        self.stage_flags = stage_flags
        self.launches = launches or {}
        self.quiet = quiet
        self.exit = ExitStack()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"aiotedge-rel-{name}-"))
        self.exit.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        if credentials is not None:
            extra = credentials.broker_config + extra
        self.broker = Broker(extra_config=broker_config(extra))
        self.exit.callback(self.broker.close)
        self._start_broker = start_broker
        self.stages: dict[str, StageDaemon] = {}
        self.broker_crashes: list[str] = []
        self._broker_stopped = False
        self.sampler = ProcSampler(self._pids)
        self.observer: Observer | None = None
        self.feeds: list[Feed] = []

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Run:
        try:
            self.sampler.start()
            self.exit.callback(self.sampler.stop)
            if self._start_broker:
                self.start_broker()
            self.exit.callback(self.stop_all_stages)
        except BaseException:
            self.exit.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.exit.close()

    def start_broker(self) -> None:
        self.broker.start()
        self._broker_stopped = False
        if self.observer is None:
            self.observer = Observer(self.login(self.observer_user), self.topics,
                                     self.check_alive)
            self.observer.session.start()
            self.exit.callback(self.observer.session.stop)
            if not self.observer.session.wait_connected(self.deadline.bound(10)):
                raise RuntimeError(f"the observer cannot reach the broker at {self.broker.address}")

    def stop_broker(self, kill: bool) -> None:
        self._broker_stopped = True
        self.broker.stop(kill=kill)

    def save_broker_state(self) -> None:
        self.broker.save(self.deadline)

    def restart_broker(self, kill: bool, down_for: float = 0.0) -> None:
        """Stop mosquitto (SIGKILL or SIGTERM), leave it down `down_for` s, start it again."""
        self.stop_broker(kill)
        if down_for:
            time.sleep(down_for)  # the fault's duration, not a synchronisation
        self.start_broker()

    # -- stage daemons ----------------------------------------------------------------------

    def node_name(self, index: int) -> str:
        launch = self.launches.get(index)
        return launch.node if launch and launch.node else f"{self.topics.pipeline}-stage{index}"

    def start_stages(self, wait: bool = True) -> None:
        for index in range(len(self.manifest.stages)):
            self.spawn(index)
        if wait:
            self.wait_online()

    def spawn(self, index: int, launch: StageLaunch | None = None) -> StageDaemon:
        """Start stage `index` as the harness launches it, or as `launch` says (a replica: its
        own node name)."""
        launch = launch or self.launches.get(index, StageLaunch())
        node = launch.node or self.node_name(index)
        command = [
            *launch.prefix, sys.executable, "-m", "aiotedge", "stage",
            "--manifest", str(launch.manifest or self.manifest.directory),
            "--stage", str(index),
            "--node", node,
            "--broker", launch.broker or str(self.broker.address),
            "--pipeline", self.topics.pipeline,
            "--qos", str(self.qos),
            "--threads", "1",
            "--stats-interval", "1",
            *self.stage_flags,
            *launch.flags,
        ]
        daemon = self.stages.get(node) or StageDaemon(
            index, node, command, self.workdir / f"{node}.log"
        )
        self.stages[node] = daemon
        daemon.stop_requested = False
        with open(daemon.log_path, "ab") as out:
            daemon.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=child_env()
            )
        return daemon

    def stop_stage(self, node: str, kill: bool = False, timeout: float = 30.0) -> int | None:
        """SIGKILL or SIGTERM one stage and wait for it; its exit is not a crash."""
        daemon = self.stages[node]
        process = daemon.process
        if process is None:
            return None
        daemon.stop_requested = True
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            code = process.wait(timeout=self.deadline.bound(timeout))
        except subprocess.TimeoutExpired:
            daemon.crashes.append(f"{node} did not stop within {timeout:.0f} s of SIGTERM")
            process.kill()
            code = process.wait()
        if not kill and code != 0:
            daemon.crashes.append(f"{node} exited with {code} on SIGTERM: {daemon.log_tail(300)}")
        daemon.process = None
        if self.observer is not None:
            with self.observer.changed:
                self.observer.online.discard(node)
        return code

    def restart_stage(self, node: str, kill: bool) -> None:
        self.stop_stage(node, kill=kill)
        self.spawn(self.stages[node].index)
        self.wait_online([node])

    def stop_all_stages(self) -> None:
        """SIGTERM every stage still running, then SIGKILL those that outstay 15 s."""
        running = [d for d in self.stages.values() if d.process is not None]
        for daemon in running:
            daemon.stop_requested = True
            daemon.process.terminate()
        for daemon in running:
            try:
                code = daemon.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.crashes.append(f"{daemon.node} did not stop within 15 s of SIGTERM")
                daemon.process.kill()
                code = daemon.process.wait()
            if code != 0:
                daemon.crashes.append(
                    f"{daemon.node} exited with {code} on SIGTERM: {daemon.log_tail(300)}"
                )
            daemon.process = None

    def kill_everything(self) -> None:
        """The watchdog's last resort: SIGKILL every daemon and the broker."""
        for daemon in self.stages.values():
            process = daemon.process
            if process is not None:
                daemon.stop_requested = True
                process.kill()
        self._broker_stopped = True
        if self.broker.pid is not None:
            os.kill(self.broker.pid, signal.SIGKILL)

    def check_alive(self) -> None:
        """Record daemons (and the broker) that exited without being asked to."""
        for daemon in self.stages.values():
            process = daemon.process
            if process is not None and not daemon.stop_requested and process.poll() is not None:
                daemon.crashes.append(
                    f"{daemon.node} exited with {process.returncode}: {daemon.log_tail(400)}"
                )
                daemon.process = None
        code = None if self._broker_stopped else self.broker.died()
        if code is not None:
            self.broker_crashes.append(f"mosquitto exited with {code}")
            self._broker_stopped = True

    def wait_online(self, nodes: list[str] | None = None, timeout: float = 60.0) -> None:
        wanted = set(nodes if nodes is not None else self.stages)
        assert self.observer is not None
        if not self.observer.wait(lambda: wanted <= self.observer.online, self.deadline,
                                  timeout, "stages online"):
            missing = sorted(wanted - self.observer.online)
            tails = "\n".join(self.stages[n].log_tail(600) for n in missing)
            raise RuntimeError(f"not online after {timeout:.0f} s: {missing}\n{tails}")
        self.sampler.rebase(sorted(wanted))

    def _pids(self) -> dict[str, int]:
        pids = {node: d.process.pid for node, d in self.stages.items() if d.process is not None}
        if self.broker.pid is not None:
            pids[BROKER_NODE] = self.broker.pid
        return pids

    # -- frames -----------------------------------------------------------------------------

    def login(self, user: str) -> BrokerConfig:
        """The broker's address, logged in as `user` when the broker has users."""
        if self.credentials is None:
            return self.broker.address
        return self.credentials.login(self.broker.address, user)

    def session(self, client_id: str, user: str = OBSERVER_USER) -> MqttSession:
        """A connected MQTT session (as `user` where the broker has users), stopped with the run."""
        session = MqttSession(self.login(user), f"{client_id}-{secrets.token_hex(3)}")
        session.start()
        self.exit.callback(session.stop)
        if not session.wait_connected(self.deadline.bound(10)):
            raise RuntimeError(f"{client_id} cannot reach the broker")
        return session

    def feed(self, photos: list[tuple[str, bytes]], frames: int, *, fps: float = 0.0,
             in_flight: int = 0, frame_timeout: float = 10.0, user: str = CAMERA_USER) -> Feed:
        """Start a camera (aiotedge's Camera) publishing `frames` photos in its own thread.

        fps > 0: a fixed rate whatever happens downstream; otherwise a window of `in_flight`
        frames (default: two per stage) released by predictions and error events.
        """
        options = CameraConfig(
            name=f"cam{len(self.feeds)}", fps=fps,
            in_flight=in_flight or 2 * len(self.manifest.stages),
            frame_timeout=frame_timeout,
        )
        # as `aiotedge camera` does: a session the broker keeps while the camera reconnects
        session = MqttSession(self.login(user), f"camera-{secrets.token_hex(3)}",
                              session_expiry=600)
        camera = Camera(session, self.topics, options, self.qos)
        session.start()
        self.exit.callback(session.stop)
        if not session.wait_connected(self.deadline.bound(10)):
            raise RuntimeError("the camera cannot reach the broker")
        feed = Feed(camera, photos, frames)
        self.feeds.append(feed)
        self.exit.callback(feed.stop)
        return feed.start()

    def settle(self, extra: Iterable[str] = (), until: Callable[[], bool] | None = None) -> None:
        """Wait for every feed to finish, then for every frame's prediction (and `until`).

        Also returns once nothing (no prediction, no error event) arrived for `self.quiet`
        seconds while no running stage reports frames in its queue: frames that will never come
        out must not hold the run until its deadline, a slow stage must not be cut short.
        """
        for feed in self.feeds:
            feed.join(self.deadline)
        wanted = set(self.sent_ids()) | set(extra)
        observer = self.observer
        assert observer is not None

        def done() -> bool:
            return wanted <= observer.predictions.keys() and (until is None or until())

        while not observer.wait(done, self.deadline, self.quiet, "predictions"):
            if time.monotonic() - observer.last_progress >= self.quiet and not self.busy():
                return

    def busy(self) -> bool:
        """Whether a running stage said, in its latest stats, that frames wait in its queue."""
        observer = self.observer
        assert observer is not None
        running = [node for node, daemon in self.stages.items() if daemon.process is not None]
        with observer.changed:
            return any(int(observer.stats.get(node, {}).get("queue_depth", 0) or 0) > 0
                       for node in running)

    def sent_ids(self) -> dict[str, str]:
        """Frame id -> photo name, over every feed of the run."""
        return {frame_id: name for feed in self.feeds for frame_id, name in feed.sent().items()}

    def status(self) -> dict[str, dict]:
        """Each node's retained stats (`aiotedge status`), after its final report."""
        nodes = collect_status(self.login(OBSERVER_USER), self.topics,
                               timeout=self.deadline.bound(10))
        return {node: info.get("stats", {}) for node, info in nodes.items()}

    def usage(self) -> dict[str, Usage]:
        self.sampler.sample_now()
        return self.sampler.snapshot()

    def crashes(self) -> list[str]:
        self.check_alive()
        return [c for d in self.stages.values() for c in d.crashes] + self.broker_crashes


class Injector:
    """Publishes raw messages into stage topics (QoS 1), kept at most `window` messages ahead
    of the predictions and error events that answer them: a burst beyond the broker's queue
    limit would be dropped by mosquitto, and that is the overload scenario, not this one."""

    def __init__(self, run: Run, window: int = 64) -> None:
        self.run = run
        self.window = window
        self.sent = 0
        #: messages given up on: no answer came within the run's quiet time (lost, or
        #: answered by nothing, like a dropped duplicate)
        self._written_off = 0
        self._session = run.session("injector")

    def _outstanding(self) -> int:
        assert self.run.observer is not None
        published = self.sent + sum(f.camera.published for f in self.run.feeds)
        return published - self.run.observer.progress - self._written_off

    def publish(self, stage: int, payload: bytes, answered: bool = True) -> None:
        """`answered`: whether a prediction or an error event will answer it (a duplicate,
        dropped by the stage, gets neither: it is not waited for)."""
        observer = self.run.observer
        assert observer is not None
        room = self.window + sum(feed.camera.options.in_flight for feed in self.run.feeds)
        if not observer.wait(lambda: self._outstanding() < room, self.run.deadline,
                             self.run.quiet, "answers to injected messages"):
            self._written_off += self._outstanding()
        self._session.publish(self.run.topics.stage_input(stage), payload, qos=1)
        self.sent += 1
        if not answered:
            self._written_off += 1


class Feed:
    """A Camera running in a thread, and the frames it sent."""

    def __init__(self, camera: Camera, photos: list[tuple[str, bytes]], frames: int) -> None:
        self.camera = camera
        self.photos = photos
        self.frames = frames
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)

    def start(self) -> Feed:
        self._thread.start()
        return self

    def _run(self) -> None:
        self.camera.run(Stills(self.photos, loop=True), self.frames, self._stop)

    def join(self, deadline: Deadline) -> None:
        self._thread.join(deadline.bound(3600))
        if self._thread.is_alive():
            raise ScenarioTimeoutError("the camera did not finish before the deadline")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sent(self) -> dict[str, str]:
        return {self.camera.frame_id(seq): self.photos[seq % len(self.photos)][0]
                for seq in range(self.camera.published)}


@contextmanager
def watchdog(deadline: Deadline, grace: float, on_expiry: Callable[[], None]) -> Iterator[None]:
    """Calls `on_expiry` (kill what the run started) if the scenario is still going at its
    deadline plus `grace`: a wait outside the harness's control cannot hold the suite."""
    timer = threading.Timer(max(0.0, deadline.at - time.monotonic()) + grace, on_expiry)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
