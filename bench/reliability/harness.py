"""One scenario's world: a mosquitto, stage daemons, a camera, and an observer that counts.

Everything a `Run` starts is registered on its ExitStack the moment it exists, so leaving the
`with` block (normally, on a failed check, or on the scenario's deadline) stops it all. Every
wait is for a condition, bounded by the scenario's deadline; none is a sleep. The daemons are
started, watched and stopped by the shared harness (support/daemons.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from aiotedge.config.sections import BrokerConfig, CameraConfig
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.daemons.local import stage_node_name
from aiotedge.nodes.daemons.status import collect_status
from aiotedge.nodes.mqtt.session import MqttSession
from bench.reliability.deadline import Deadline
from bench.reliability.feeds import Feed
from bench.reliability.observer import SYS_INTERVAL, Observer
from bench.reliability.secure import Credentials
from support.broker import Broker
from support.daemons import StageDaemons, StageLaunch, StageProcess
from support.procfs import ProcSampler, Usage

#: seconds without any new prediction or error event after which a run counts as settled
#: (the default; the fast mode's tiny models need less)
QUIET_SECONDS = 8.0
BROKER_NODE = "mosquitto"
#: the users of the shipped ACL the observer and the camera log in as, where there are users
OBSERVER_USER = "watcher"
CAMERA_USER = "cam0"


def broker_config(extra: str) -> str:
    """The harness's additions to the shipped settings (persistence on, as shipped): $SYS
    counters every second."""
    return f"sys_interval {SYS_INTERVAL}\n{extra}"


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
        self.daemons = StageDaemons(self.workdir, manifest.directory, self.topics.pipeline,
                                    self.broker.address, qos=qos, flags=stage_flags)
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
        self.broker.save(self.deadline.bound)

    def restart_broker(self, kill: bool, down_for: float = 0.0) -> None:
        """Stop mosquitto (SIGKILL or SIGTERM), leave it down `down_for` s, start it again."""
        self.stop_broker(kill)
        if down_for:
            time.sleep(down_for)  # the fault's duration, not a synchronisation
        self.start_broker()

    # -- stage daemons ----------------------------------------------------------------------

    @property
    def stages(self) -> dict[str, StageProcess]:
        return self.daemons.stages

    def node_name(self, index: int) -> str:
        launch = self.launches.get(index)
        return launch.node if launch and launch.node else stage_node_name(self.topics.pipeline,
                                                                          index)

    def start_stages(self, wait: bool = True) -> None:
        for index in range(len(self.manifest.stages)):
            self.spawn(index)
        if wait:
            self.wait_online()

    def spawn(self, index: int, launch: StageLaunch | None = None) -> StageProcess:
        """Start stage `index` as the harness launches it, or as `launch` says (a replica: its
        own node name)."""
        return self.daemons.spawn(replace(launch or self.launches.get(index, StageLaunch()),
                                          stage=index))

    def stop_stage(self, node: str, kill: bool = False, timeout: float = 30.0) -> int | None:
        """SIGKILL or SIGTERM one stage and wait for it; its exit is not a crash."""
        code = self.daemons.stop(node, kill, self.deadline.bound(timeout))
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
        self.daemons.stop_all(15)

    def kill_everything(self) -> None:
        """The watchdog's last resort: SIGKILL every daemon and the broker."""
        self.daemons.kill_all()
        self._broker_stopped = True
        if self.broker.pid is not None:
            os.kill(self.broker.pid, signal.SIGKILL)

    def check_alive(self) -> None:
        """Record daemons (and the broker) that exited without being asked to."""
        self.daemons.check_alive()
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
        pids = {node: process.pid for node, process in self.daemons.running().items()}
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
        running = self.daemons.running()
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
        return self.daemons.crashes() + self.broker_crashes
