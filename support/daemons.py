"""Stage daemons as boards run them, `aiotedge stage` processes: the one harness with which the
tests and the benchmarks (the stage hop, memory, the cluster bench, the reliability suite) start,
watch and stop them.

A daemon is started from the command line a board runs, so that it may be wrapped (run inside
an emulated board's cgroup and network namespace, or `ip netns exec`) and given a config file
that flags override. Its output goes to a log file whose tail explains a crash; an exit nobody
asked for is recorded as a crash. In-process pipelines (`aiotedge run`) are the product's own
LocalPipeline; the node names here are its names.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiotedge
from aiotedge.nodes.daemons.local import stage_node_name

log = logging.getLogger(__name__)


def child_env() -> dict[str, str]:
    """The environment for daemons: they import the same aiotedge the harness imported."""
    source = str(Path(aiotedge.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{source}{os.pathsep}{path}" if path else source}


def aiotedge_command(_node: str) -> list[str]:
    """The `aiotedge` command a daemon runs (bench/hop.py gives a traced one instead)."""
    return [sys.executable, "-m", "aiotedge"]


def stage_command(program: Sequence[str], *flags: str, manifest: Path | str, index: int,
                  node: str, broker: object, pipeline: str) -> list[str]:
    """The `aiotedge stage` command line for stage `index` of a manifest, as node `node` on a
    broker (its address, or a BrokerConfig), in a pipeline; `flags` add to or override it."""
    return [*program, "stage", "--manifest", str(manifest), "--stage", str(index),
            "--node", node, "--broker", str(broker), "--pipeline", pipeline, *flags]


@dataclass(frozen=True)
class StageLaunch:
    """How to start one stage daemon: which stage, and what the harness does not decide.

    `wrap` turns its argv into the one to run (inside a board: a cgroup and a netns; `ip netns
    exec NS`); `broker` is then the broker's address as seen from there. `flags` come last, so
    they override the harness's (`--config FILE` gives a node's config, which flags override).
    """

    node: str = ""
    stage: int = 0
    share_group: str = ""
    wrap: Callable[[list[str]], list[str]] = list
    broker: object | None = None
    manifest: Path | None = None
    flags: tuple[str, ...] = ()


@dataclass
class StageProcess:
    """One started stage daemon and what the harness asked of it."""

    index: int
    node: str
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


class StageDaemons:
    """The stage daemons of one pipeline on one broker: started, watched and stopped.

    Every daemon gets the harness's settings (`qos`, `threads`, `stats_interval`, `flags`) and
    then its launch's; its output goes to `workdir`/NODE.log.
    """

    def __init__(self, workdir: Path, manifest_dir: Path, pipeline: str, broker: object, *,
                 qos: int = 1, threads: int = 1, stats_interval: float = 1.0,
                 flags: Sequence[str] = (),
                 command: Callable[[str], list[str]] = aiotedge_command,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.manifest_dir = manifest_dir
        self.pipeline = pipeline
        self.broker = broker
        self.settings = ("--qos", str(qos), "--threads", str(threads),
                         "--stats-interval", f"{stats_interval:g}", *flags)
        self.command = command
        self.env = {**child_env(), **(env or {})}
        self.stages: dict[str, StageProcess] = {}

    def spawn(self, launch: StageLaunch) -> StageProcess:
        """Start a stage daemon as `launch` says; under its node name (by default the one
        `aiotedge run` gives its stage), again if it ran before."""
        index = launch.stage
        node = launch.node or stage_node_name(self.pipeline, index)
        argv = stage_command(
            self.command(node), *self.settings,
            *(("--share-group", launch.share_group) if launch.share_group else ()),
            *launch.flags, manifest=launch.manifest or self.manifest_dir, index=index, node=node,
            broker=launch.broker or self.broker, pipeline=self.pipeline)
        daemon = self.stages.get(node) or StageProcess(index, node, self.workdir / f"{node}.log")
        self.stages[node] = daemon
        daemon.stop_requested = False
        with open(daemon.log_path, "ab") as out:
            daemon.process = subprocess.Popen(launch.wrap(argv), stdout=out,
                                              stderr=subprocess.STDOUT, env=self.env)
        return daemon

    def running(self) -> dict[str, subprocess.Popen[bytes]]:
        """Node -> its process, for those started and not stopped."""
        return {node: d.process for node, d in self.stages.items() if d.process is not None}

    def stop(self, node: str, kill: bool = False, timeout: float = 30.0) -> int | None:
        """SIGKILL or SIGTERM one daemon and wait for it; its exit is not a crash, but not
        stopping within `timeout` of SIGTERM, or a failing exit status on it, is."""
        daemon = self.stages[node]
        if daemon.process is None:
            return None
        daemon.stop_requested = True
        if kill:
            daemon.process.kill()
        else:
            daemon.process.terminate()
        return self._reap(daemon, timeout, kill)

    def stop_all(self, timeout: float = 15.0) -> None:
        """SIGTERM every daemon still running (they finish their frames), then SIGKILL those
        that outstay `timeout`."""
        running = [d for d in self.stages.values() if d.process is not None]
        for daemon in running:
            daemon.stop_requested = True
            daemon.process.terminate()
        for daemon in running:
            self._reap(daemon, timeout, kill=False)

    def _reap(self, daemon: StageProcess, timeout: float, kill: bool) -> int:
        assert daemon.process is not None
        try:
            code = daemon.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            daemon.crashes.append(f"{daemon.node} did not stop within {timeout:.0f} s of SIGTERM")
            log.warning("%s did not stop within %.0f s of SIGTERM; killing it", daemon.node,
                        timeout)
            daemon.process.kill()
            code = daemon.process.wait()
        if not kill and code != 0:
            daemon.crashes.append(
                f"{daemon.node} exited with {code} on SIGTERM: {daemon.log_tail(300)}")
        daemon.process = None
        return code

    def kill_all(self) -> None:
        """The last resort: SIGKILL every daemon, waiting for none."""
        for daemon in self.stages.values():
            if daemon.process is not None:
                daemon.stop_requested = True
                daemon.process.kill()

    def check_alive(self, tail_chars: int = 400) -> list[str]:
        """Record the daemons that exited without being asked to; their crash lines."""
        found = []
        for daemon in self.stages.values():
            process = daemon.process
            if process is not None and not daemon.stop_requested and process.poll() is not None:
                found.append(f"{daemon.node} exited with {process.returncode}: "
                             f"{daemon.log_tail(tail_chars)}")
                daemon.crashes.append(found[-1])
                daemon.process = None
        return found

    def crashes(self) -> list[str]:
        return [crash for daemon in self.stages.values() for crash in daemon.crashes]


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM, and SIGKILL when it has not ended within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
