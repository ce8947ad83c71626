"""A fleet of `aiotedge node` daemons as processes on one broker, and what a subscriber sees
of it: the nodes' reports, the releases and the live pointer, the predictions (tests/test_fleet.py,
tests/test_heal.py)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import threading
from pathlib import Path

from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import CameraConfig, PipelineConfig
from aiotedge.contracts.events import ErrorEvent, Prediction
from aiotedge.contracts.release import LiveRelease, NodeReport, Release
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.daemons.speed import SPEED_FILE
from aiotedge.nodes.mqtt.session import MqttSession, wait_settled
from support.reference import whole_model_top

PIPELINE = "yard"
NODES = ("n1", "n2", "n3")


class Fleet:
    """Node daemons as processes, and a view of what they report, the releases retained and
    the live pointer."""

    def __init__(self, broker, cache: Path) -> None:
        self.broker, self.cache = broker, cache
        self.topics = Topics(PIPELINE)
        self.processes: dict[str, subprocess.Popen] = {}
        self.reports: dict[str, NodeReport] = {}
        #: release id -> the release retained (withdrawn ones are dropped)
        self.releases: dict[str, Release] = {}
        self.live: LiveRelease | None = None
        self.changed = threading.Condition()
        self.watcher = MqttSession(broker.address, "fleet-watcher")
        self.watcher.subscribe(self.topics.all_info, self._on_info)
        self.watcher.subscribe(f"{self.topics.release_plan}/+", self._on_release)
        self.watcher.subscribe(self.topics.live_release, self._on_live)
        self.watcher.start()
        assert self.watcher.wait_connected(10)

    def _on_info(self, message) -> None:
        report = NodeReport.parse(message.payload)
        if report is not None:
            with self.changed:
                self.reports[report.node] = report
                self.changed.notify_all()

    def _on_release(self, message) -> None:
        with self.changed:
            if message.payload:
                release = Release.parse(message.payload)
                self.releases[release.release] = release
            else:
                self.releases.pop(message.topic.rsplit("/", 1)[-1], None)
            self.changed.notify_all()

    def _on_live(self, message) -> None:
        with self.changed:
            self.live = LiveRelease.parse(message.payload) if message.payload else None
            self.changed.notify_all()

    def start(self, node: str, speed: float = 1000.0) -> None:
        """A node process; its speed profile written into its cache beforehand, as measured
        once on equal boards (measured here, on a busy machine, they would differ by chance)."""
        with self.changed:
            self.reports.pop(node, None)
        (self.cache / node).mkdir(exist_ok=True)
        (self.cache / node / SPEED_FILE).write_text(json.dumps(
            {"mmacs_per_s": speed, "machine": platform.machine()}))
        self.processes[node] = subprocess.Popen(
            [sys.executable, "-m", "aiotedge", "node", "--broker", str(self.broker.address),
             "--pipeline", PIPELINE, "--node", node, "--cache", str(self.cache / node),
             "--stats-interval", "0"],
            stdout=subprocess.DEVNULL, stderr=open(self.cache / f"{node}.log", "a"))  # noqa: SIM115

    def kill(self, node: str) -> None:
        self.processes[node].kill()
        self.processes[node].wait(30)

    def wait(self, condition, what: str, timeout: float = 120.0) -> None:
        """Until `condition(reports)` holds."""
        self.wait_fleet(lambda: condition(self.reports), what, timeout)

    def wait_fleet(self, condition, what: str, timeout: float = 120.0) -> None:
        """Until `condition()` holds, called under the lock of what the fleet reports."""
        with self.changed:
            assert self.changed.wait_for(condition, timeout), \
                (what, self.reports, sorted(self.releases), self.live, self.logs())

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.cache.glob("*.log")))

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(60)
        self.watcher.stop()


def deployer(broker) -> NodeConfig:
    return NodeConfig(broker=broker.address, pipeline=PipelineConfig(name=PIPELINE))


class Results:
    """Every prediction and error event of the pipeline, as a subscriber sees them."""

    def __init__(self, broker, topics: Topics) -> None:
        self.predictions: list[Prediction] = []
        self.errors: list[ErrorEvent] = []
        self.changed = threading.Condition()
        self.session = MqttSession(broker.address, "results")
        self.session.subscribe(topics.predictions, self._on_prediction)
        self.session.subscribe(topics.errors, self._on_error)
        self.session.start()
        assert self.session.wait_connected(10)
        wait_settled(self.session, topics.probe("results"))

    def _on_prediction(self, message) -> None:
        with self.changed:
            self.predictions.append(Prediction.from_json(message.payload))
            self.changed.notify_all()

    def _on_error(self, message) -> None:
        with self.changed:
            self.errors.append(ErrorEvent.parse(message.payload))
            self.changed.notify_all()

    def wait_for(self, condition, timeout: float = 120.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: condition(self.predictions), timeout), \
                (len(self.predictions), self.errors)


def camera_for(broker, name: str, **options) -> tuple[Camera, MqttSession]:
    session = MqttSession(broker.address, f"camera-{name}")
    camera = Camera(session, Topics(PIPELINE), CameraConfig(name=name, **options))
    session.start()
    assert session.wait_connected(10)
    wait_settled(session, Topics(PIPELINE).probe(f"camera-{name}"))  # the live pointer is in
    return camera, session


def expected_top1(model: Path, release: Release, photo: bytes) -> str:
    return whole_model_top(release.split(model.parent), photo, 1)[0].name
