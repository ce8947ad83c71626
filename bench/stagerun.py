"""Stage daemons against one broker, fed by aiotedge's Camera: one bounded run, for the benches.

`StageRun` starts one `aiotedge stage` process per daemon with the shared harness
(support/daemons.py: each may be wrapped, e.g. to run inside an emulated board, and may reach
the broker at its own address), follows their availability, retained stats and the
predictions, and feeds photos with the project's own Camera, pacing itself by the results in
flight. Every wait is bounded; leaving the `with`
block stops every process it started and removes its folder.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import paho.mqtt.client as mqtt

from aiotedge.config.sections import BrokerConfig, CameraConfig
from aiotedge.contracts.events import Prediction
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import Topics
from aiotedge.media.prepare import ModelInput
from aiotedge.media.sources.stills import Stills
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.mqtt.session import MqttSession
from aiotedge.nodes.observe.health import PipelineView
from support.daemons import StageDaemons, StageLaunch, aiotedge_command

log = logging.getLogger(__name__)

#: the longest a run waits for anything (daemons online, a frame's result, stats)
WAIT_SECONDS = 120.0


class RunError(RuntimeError):
    """A daemon died or something awaited did not come in time; the message says which."""


@dataclass
class Arrival:
    """A prediction and when the camera's session got it (monotonic seconds)."""

    at: float
    prediction: Prediction


@dataclass
class _Seen:
    #: the daemons as their retained availability and stats say
    nodes: PipelineView = field(default_factory=PipelineView)
    arrivals: list[Arrival] = field(default_factory=list)

    @property
    def online(self) -> set[str]:
        return {node.name for node in self.nodes.nodes.values() if node.online}

    def stats(self, node: str) -> dict:
        view = self.nodes.nodes.get(node)
        return view.stats if view else {}


class StageRun:
    """A broker's worth of stage daemons and a camera; a context manager that cleans up."""

    def __init__(self, manifest_dir: Path, daemons: Sequence[StageLaunch], broker: BrokerConfig, *,
                 qos: int = 1, stats_interval: float = 1.0, threads: int = 1,
                 command: Callable[[str], list[str]] = aiotedge_command,
                 camera: CameraConfig | None = None, env: dict[str, str] | None = None) -> None:
        self.manifest_dir = manifest_dir
        self.daemons = list(daemons)
        self.broker = broker
        self.qos = qos
        self.camera_options = camera or CameraConfig(source="bench", loop=True)
        self.topics = Topics(f"bench{secrets.token_hex(3)}")
        self.workdir = Path(tempfile.mkdtemp(prefix="aiotedge-bench-run-"))
        self.stages = StageDaemons(self.workdir, manifest_dir, self.topics.pipeline, broker,
                                   qos=qos, threads=threads, stats_interval=stats_interval,
                                   command=command, env=env)
        self._exit = ExitStack()
        self._changed = threading.Condition()
        self._seen = _Seen()

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> StageRun:
        with ExitStack() as stack:  # undone at once if any step fails
            stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
            self._connect()
            stack.callback(self.session.stop)
            stack.callback(self.stop_daemons)
            for daemon in self.daemons:
                self.stages.spawn(daemon)
            self.wait(lambda: {d.node for d in self.daemons} <= self._seen.online,
                      "every stage online")
            self._exit = stack.pop_all()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._exit.close()

    def _connect(self) -> None:
        self.session = MqttSession(self.broker, f"bench-{secrets.token_hex(4)}")
        self.session.subscribe(self.topics.all_availability, self._on_node, qos=1)
        self.session.subscribe(self.topics.all_stats, self._on_node, qos=0)
        self.session.subscribe(self.topics.predictions, self._on_prediction, qos=1)
        manifest = Manifest.load(self.manifest_dir)
        self.camera = Camera(self.session, self.topics, self.camera_options, self.qos,
                             ModelInput(manifest.preprocessing, manifest.stage(0).input))
        self.session.start()
        if not self.session.wait_connected(10):
            raise RunError(f"cannot reach the broker at {self.broker}")

    @property
    def processes(self) -> dict[str, subprocess.Popen]:
        """Node -> its running process."""
        return self.stages.running()

    def stop_daemons(self, timeout: float = 20.0) -> None:
        """SIGTERM every daemon (they finish their frames), SIGKILL those that outstay it."""
        self.stages.stop_all(timeout)

    def check_alive(self) -> None:
        if crashed := self.stages.check_alive(tail_chars=1500):
            raise RunError(crashed[0])

    def wait(self, condition: Callable[[], bool], what: str,
             timeout: float = WAIT_SECONDS) -> None:
        """Wait until `condition` (called under the lock) holds; RunError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RunError(f"no {what} within {timeout:.0f} s (logs in {self.workdir})")
                self._changed.wait(min(left, 0.5))
                self.check_alive()

    # -- what the daemons say ---------------------------------------------------------------

    def _on_node(self, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self._seen.nodes.update(self.topics, message.topic, message.payload)
            self._changed.notify_all()

    def _on_prediction(self, message: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        prediction = Prediction.parse(message.payload)
        if prediction is None:
            return
        with self._changed:
            self._seen.arrivals.append(Arrival(at, prediction))
            self._changed.notify_all()

    def stats_after(self, unix_time: float) -> dict[str, dict]:
        """Every daemon's stats as it published them after `unix_time` (waits for them)."""
        nodes = [d.node for d in self.daemons]
        self.wait(lambda: all(self._seen.stats(node).get("timestamp", 0) > unix_time
                              for node in nodes), "stats from every stage")
        with self._changed:
            return {node: self._seen.stats(node) for node in nodes}

    # -- frames -----------------------------------------------------------------------------

    def feed(self, photos: list[tuple[str, bytes]], frames: int, in_flight: int,
             timeout: float = WAIT_SECONDS) -> list[Arrival]:
        """Send `frames` photos (cycling), at most `in_flight` without a result; return their
        predictions as they arrived. Raises RunError if a frame got no prediction."""
        self.camera.options = replace(self.camera.options, in_flight=in_flight, loop=True,
                                      frame_timeout=timeout)
        with self._changed:
            first = len(self._seen.arrivals)
        stop = threading.Event()
        sender = threading.Thread(target=self.camera.run,
                                  args=(Stills(photos, loop=True), frames, stop),
                                  name="camera", daemon=True)
        sender.start()
        try:
            self.wait(lambda: len(self._seen.arrivals) - first >= frames,
                      f"prediction for each of {frames} frames", timeout)
        finally:
            stop.set()
            sender.join()
        with self._changed:
            return self._seen.arrivals[first:]
