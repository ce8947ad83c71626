"""A whole pipeline on one machine: a private broker, one process per stage, a camera.

This is what `aiotedge run` and `make demo` use, and what a user runs before spreading the
stages over boards: the processes talk through the broker exactly as the boards will. Each
stage process runs `run_stage`, the same lifecycle as `aiotedge stage` on a board, given its
config directly (a fresh interpreter, spawned: no threads or sockets inherited). Its output
comes back through a pipe, each line prefixed with its node name; a stage that dies is started
again, as systemd would (`Restart=always`), unless it stopped on a mistake to fix (exit 2).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import queue
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np

from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import (
    BrokerConfig,
    CameraConfig,
    PipelineConfig,
    StageConfig,
    StatsConfig,
)
from aiotedge.contracts.errors import PipelineError
from aiotedge.contracts.events import Prediction
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.plan import PLAN_BOARDS
from aiotedge.contracts.topics import ONLINE
from aiotedge.media.prepare import ModelInput
from aiotedge.media.sources import FrameSource, Stills
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.daemons.lifecycle import connect_once, exit_status
from aiotedge.nodes.daemons.stage import run_stage
from aiotedge.nodes.mqtt.broker import LocalBroker
from aiotedge.nodes.mqtt.session import MqttSession
from aiotedge.nodes.mqtt.transport import Received
from aiotedge.nodes.observe import systemd
from aiotedge.nodes.observe.dedup import RecentIds
from aiotedge.nodes.observe.metrics import StatsReporter

log = logging.getLogger(__name__)


#: the camera `predict` feeds through unless told otherwise; other cameras' predictions are
#: ignored
LOCAL_CAMERA = CameraConfig(name="local")
LOCAL_PIPELINE = PipelineConfig(name="local")
DEFAULT_STAGE = StageConfig()
DEFAULT_STATS = StatsConfig()
#: a fresh interpreter per stage, as on a board; fork would copy this process's threads
_PROCESSES = multiprocessing.get_context("spawn")
#: times a stage may die before `aiotedge run` gives up on it
MAX_RESTARTS = 5
#: a stage's log line as `_stage_process` formats it
_LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)$")
#: a stage's last lines kept for the message that says why it stopped
_TAIL_LINES = 20


def plan_replicas(plan_dir: Path | str) -> dict[int, int]:
    """How many boards serve each stage in a plan's board configs (`aiotedge run --plan`)."""
    configs = sorted((Path(plan_dir) / PLAN_BOARDS).glob("*.toml"))
    if not configs:
        raise PipelineError(f"{plan_dir}: no board configs in {PLAN_BOARDS}/ "
                            "(written by aiotedge-convert plan --out)")
    replicas: dict[int, int] = {}
    for path in configs:
        index = NodeConfig.load(path).stage.index
        replicas[index] = replicas.get(index, 0) + 1
    return replicas


def stage_node_name(pipeline: str, index: int, replica: int | None = None) -> str:
    """The node name of a stage process on this machine (`replica` where a stage has several)."""
    return f"{pipeline}-stage{index}" + (f"-r{replica}" if replica is not None else "")


def log_to_file(path: Path) -> None:
    """Every log line into `path`, and only warnings and errors on the terminal as well:
    `aiotedge run` prints predictions there, which its daemons' connecting, subscribed and
    online lines would bury."""
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setLevel(logging.WARNING)
    to_file = logging.FileHandler(path, mode="w", encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(to_file)


@dataclass
class RunSummary:
    """What a run did, in the one line `aiotedge run` ends with."""

    started: float = field(default_factory=time.monotonic)
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, prediction: Prediction) -> None:
        self.latencies_ms.append(prediction.latency_ms)

    def line(self, counters: Mapping[str, int]) -> str:
        """`10 frames in 1.6 s (6.2 frames/s), latency p50 115 ms, p95 172 ms, 0 lost`;
        `counters` are the camera's: a frame without a result after every attempt, or refused
        by the broker, is lost; one a stage refused is rejected (its reason is in the log)."""
        seconds = time.monotonic() - self.started
        frames = len(self.latencies_ms)
        line = f"{frames} frames in {seconds:.1f} s ({frames / seconds:.1f} frames/s)"
        if frames:
            p50, p95 = np.percentile(self.latencies_ms, [50, 95])
            line += f", latency p50 {p50:.0f} ms, p95 {p95:.0f} ms"
        line += f", {counters['unanswered'] + counters['refused_by_broker']} lost"
        if counters["rejected"]:
            line += f", {counters['rejected']} rejected"
        return line


def _stage_process(config: NodeConfig, output: Connection, verbose: bool) -> None:
    """A stage's process: everything it writes (the runtime's own lines too) into `output`,
    a pipe to the parent, which gives each line the node's name and a timestamp."""
    os.dup2(output.fileno(), sys.stdout.fileno())
    os.dup2(output.fileno(), sys.stderr.fileno())
    systemd.setup_logging(verbose, timestamps=False)
    sys.exit(exit_status(lambda: run_stage(config)))


class LocalPipeline:
    """Stages of one manifest as local processes, and a camera feeding them photos.

    The config sections given (`pipeline`, `stage`, `stats`) are what each stage starts from;
    its index, node name and share group are set per process.
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        broker: BrokerConfig | None = None,
        pipeline: PipelineConfig = LOCAL_PIPELINE,
        stage: StageConfig = DEFAULT_STAGE,
        stats: StatsConfig = DEFAULT_STATS,
        camera: CameraConfig = LOCAL_CAMERA,
        replicas: dict[int, int] | None = None,
        ready_timeout: float = 60.0,
        verbose: bool = False,
    ) -> None:
        self.manifest = manifest
        self.topics = NodeConfig(pipeline=pipeline).topics
        self.broker = broker
        self.pipeline = pipeline
        self.stage = stage
        self.stats = stats
        self.replicas = replicas or {}
        self.ready_timeout = ready_timeout
        self._camera_config = camera
        self.verbose = verbose
        self._exit = ExitStack()
        #: node name -> (stage index, process)
        self._stages: dict[str, tuple[int, BaseProcess]] = {}
        #: node name -> its last lines of output; times it was started again after dying
        self._tails: dict[str, deque[str]] = {}
        self.restarts: dict[str, int] = {}
        #: node name -> the thread relaying its current process's output
        self._relays: dict[str, threading.Thread] = {}
        self._replicated: set[int] = set()
        #: stages stopped on purpose (stop_stage), not to be taken for dead ones
        self._stopped: set[str] = set()
        self._online: set[str] = set()
        self._online_changed = threading.Condition()
        self._predictions: queue.Queue[Prediction] = queue.Queue()
        self._recent = RecentIds()

    def __enter__(self) -> LocalPipeline:
        try:
            self._start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self._exit.close()

    def _start(self) -> None:
        if self.broker is None:
            local = self._exit.enter_context(LocalBroker())
            self.broker = local.address
        # kept by the broker for a minute: predictions published while it reconnects wait
        self.session = MqttSession(self.broker, f"run-{self.topics.pipeline}-{id(self):x}",
                                   self.topics.availability(self._camera_config.name),
                                   session_expiry=60, one_shot=True)
        self.session.subscribe(self.topics.all_availability, self._on_availability, qos=1)
        self.session.subscribe(self.topics.predictions, self._on_prediction, qos=1)
        # a camera as `aiotedge camera` runs it (its [camera] keys, its retained stats), but
        # told stage 0's input by the manifest at hand
        self.camera = Camera(
            self.session, self.topics, self._camera_config, self.pipeline.qos,
            ModelInput(self.manifest.preprocessing, self.manifest.stage(0).input),
        )
        connect_once(self.session)  # an external broker that cannot be used: say why, now
        self.session.set_online()
        self._exit.callback(self.session.stop, end_session=True)
        reporter = StatsReporter(self.camera.publish_stats, self.stats.interval)
        reporter.start()
        self._exit.callback(reporter.stop)
        self._exit.callback(self._stop_stages)
        for index in range(len(self.manifest.stages)):
            copies = self.replicas.get(index, 1)
            if copies > 1:
                self._replicated.add(index)
            for replica in range(copies):
                self._spawn_stage(index, stage_node_name(self.topics.pipeline, index,
                                                         replica if copies > 1 else None))
        self._wait_online()

    @property
    def nodes(self) -> list[str]:
        return list(self._stages)

    def process(self, node: str) -> BaseProcess:
        """The process serving `node` now (another one after a restart)."""
        return self._stages[node][1]

    def restart_stage(self, node: str, kill: bool = True) -> None:
        """Stop a stage process (SIGKILL, or SIGTERM when `kill` is false) and start it again."""
        self.stop_stage(node, kill)
        self.start_stage(node)

    def stop_stage(self, node: str, kill: bool = False) -> None:
        """Stop one stage process (SIGTERM: it finishes its frames; SIGKILL: it just dies)."""
        process = self._stages[node][1]
        if kill:
            process.kill()
        else:
            process.terminate()
        process.join(timeout=30)
        self._stopped.add(node)
        with self._online_changed:
            self._online.discard(node)

    def start_stage(self, node: str) -> None:
        """Start a stopped stage again, under its name, and wait until it is online."""
        self._spawn_stage(self._stages[node][0], node)
        self._stopped.discard(node)
        self._wait_online()

    def _spawn_stage(self, index: int, node: str) -> None:
        config = NodeConfig(
            broker=self.broker,
            pipeline=self.pipeline,
            stage=dataclasses.replace(
                self.stage, manifest=str(self.manifest.directory), index=index, node=node,
                share_group=f"stage{index}" if index in self._replicated else "",
            ),
            stats=self.stats,
            source=f"aiotedge run ({node})",
        )
        reader, writer = _PROCESSES.Pipe(duplex=False)
        process = _PROCESSES.Process(target=_stage_process, args=(config, writer, self.verbose),
                                     name=node)
        process.start()
        writer.close()  # the child's copy is the only one: its exit ends the relay
        relay = threading.Thread(target=self._relay, args=(node, reader), name=f"log-{node}",
                                 daemon=True)
        relay.start()
        self._relays[node] = relay
        self._stages[node] = (index, process)

    def _relay(self, node: str, output: Connection) -> None:
        """Log each line of a stage's output under its node name, at its own level."""
        tail = self._tails.setdefault(node, deque(maxlen=_TAIL_LINES))
        with os.fdopen(os.dup(output.fileno()), "rb") as stream:
            output.close()
            for raw in stream:
                line = raw.decode(errors="replace").rstrip()
                tail.append(line)
                if match := _LOG_LINE.match(line):
                    level, name, message = match.groups()
                    logging.getLogger(name).log(logging.getLevelName(level), "[%s] %s",
                                                node, message)
                elif line:  # the runtime's own lines, a traceback
                    log.info("[%s] %s", node, line)

    def _wait_online(self) -> None:
        nodes = set(self._stages)
        deadline = time.monotonic() + self.ready_timeout
        with self._online_changed:
            while not nodes <= self._online:
                self._check_stages_alive()
                if time.monotonic() > deadline:
                    raise PipelineError(
                        f"stages not online after {self.ready_timeout:.0f} s: "
                        f"{sorted(nodes - self._online)} (their lines above say why)"
                    )
                self._online_changed.wait(timeout=0.5)
        log.info("%d stages online", len(nodes))

    def _check_stages_alive(self) -> None:
        """Start a stage that died again; give up on one that stopped on a mistake (exit
        status 2: a restart would stop the same way) or that keeps dying. One that exited 0
        was told to stop (a signal to the whole process group, Ctrl-C): it stays stopped."""
        for node, (index, process) in list(self._stages.items()):
            if node in self._stopped or process.exitcode is None:
                continue
            process.join()  # its exit is seen; its relay has its last lines
            last = self._last_line(node)
            if process.exitcode == 0:
                log.info("%s stopped", node)
                self._stopped.add(node)
                continue
            if process.exitcode == 2:
                raise PipelineError(f"{node} stopped: {last}")
            if self.restarts.get(node, 0) >= MAX_RESTARTS:
                raise PipelineError(f"{node} died {MAX_RESTARTS + 1} times, the last with "
                                    f"exit status {process.exitcode}: {last}")
            self.restarts[node] = self.restarts.get(node, 0) + 1
            log.warning("%s exited with status %s; starting it again", node, process.exitcode)
            self._spawn_stage(index, node)

    def _last_line(self, node: str) -> str:
        self._relays[node].join(timeout=5)
        tail = self._tails.get(node) or deque(["no output"])
        return tail[-1][:500]

    def _stop_stages(self) -> None:
        for _, process in self._stages.values():
            process.terminate()
        for node, (_, process) in self._stages.items():
            process.join(timeout=15)
            if process.exitcode is None:
                log.warning("%s did not stop on SIGTERM; killing it", node)
                process.kill()
                process.join()
        for relay in self._relays.values():
            relay.join(timeout=5)

    def _on_availability(self, message: Received) -> None:
        node = message.topic.rsplit("/", 1)[-1]
        with self._online_changed:
            if message.payload.decode(errors="replace") == ONLINE:
                self._online.add(node)
            else:
                self._online.discard(node)
            self._online_changed.notify_all()

    def _on_prediction(self, message: Received) -> None:
        prediction = Prediction.parse(message.payload)
        if (prediction is not None and prediction.source == self.camera.options.name
                and not self._recent.seen(prediction.frame_id)):
            self._predictions.put(prediction)

    def predict(
        self,
        photos: FrameSource | list[tuple[str, bytes]],
        frames: int | None = None,
        stop: threading.Event | None = None,
        timeout: float = 60.0,
        in_flight: int | None = None,
    ) -> Iterator[tuple[str, Prediction]]:
        """Feed a source's frames through the pipeline; yield (frame name, prediction) as they
        arrive.

        `photos` given as (name, bytes) pairs go through once without `frames`, and repeat
        until that many predictions came back with it. A source ends when it ends, or after
        `frames`. By default one frame per stage process (replicas included) is in flight, so
        every one stays busy.
        """
        stop = stop or threading.Event()
        if isinstance(photos, FrameSource):
            source, wanted = photos, frames
        else:
            source = Stills(photos, loop=frames is not None)
            wanted = frames if frames is not None else len(photos)
        self.camera.options = dataclasses.replace(
            self.camera.options, in_flight=in_flight or len(self._stages))
        feeder = threading.Thread(
            target=self.camera.run, args=(source, wanted, stop), name="camera", daemon=True
        )
        feeder.start()
        try:
            count = 0
            while wanted is None or count < wanted:
                prediction = self._next_prediction(stop, timeout, feeder)
                if prediction is None:
                    return
                count += 1
                yield prediction.name or "", prediction
        finally:
            stop.set()
            feeder.join()

    def _next_prediction(self, stop: threading.Event, timeout: float,
                         feeder: threading.Thread) -> Prediction | None:
        """The next prediction; None once stopped, or once the camera is done and every
        prediction it got was taken."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            self._check_stages_alive()
            if not feeder.is_alive() and self._predictions.empty():
                return None
            try:
                return self._predictions.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise PipelineError(
                        f"no prediction within {timeout:.0f} s (the stages' lines above say "
                        "why)") from None
        return None
