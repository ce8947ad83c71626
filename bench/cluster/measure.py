"""One layout on the emulated boards: start it, measure it, stop it.

A run starts a private mosquitto (outside the quotas) listening on loopback and on each
board's broker-side address, one `aiotedge stage` daemon per board inside the board, and feeds
photos with aiotedge's Camera from this process (outside the quotas). Then, in order:

1. warm-up: a few frames per board, results awaited;
2. lone frames: one in flight at a time, for the latency of a frame alone;
3. throughput: frames kept `in_flight` deep (pacing by results), photos in a shuffled order.

Around phase 3 the run takes two snapshots while nothing flows (every result in): each
board's cgroup CPU counters and link bytes, the broker's bytes read and written, and each
daemon's frame counters from the stats it publishes after that moment. So CPU per frame,
throttling and bytes per frame count exactly the frames of phase 3; frames/s comes from the
predictions' arrival times between the first and the last `in_flight` (the steady state).
Each daemon's resident memory is sampled at ready and throughout phase 3.
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import subprocess
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiotedge.config.sections import BrokerConfig, CameraConfig
from aiotedge.nodes.mqtt.broker import free_port
from bench.cluster.boards import Board, CpuStats, Link, LinkBytes
from bench.cluster.layouts import Layout
from bench.cluster.timing import wake_lateness
from bench.stagerun import Arrival, StageRun
from support.broker import Broker
from support.daemons import StageLaunch
from support.procfs import sample

log = logging.getLogger(__name__)

#: how often resident memory is sampled while frames flow
MEMORY_INTERVAL = 0.1


@dataclass(frozen=True)
class Phases:
    """How much each run sends; every count is per board of the layout."""

    warmup_per_board: int = 4
    lone_frames: int = 20
    frames_per_board: int = 40
    in_flight_per_board: int = 4


@dataclass
class BoardResult:
    """One board over the throughput phase."""

    node: str
    stage: int
    frames: int
    #: the daemon's own CPU (all its threads, /proc/PID/stat) per frame it computed
    cpu_ms_per_frame: float
    #: the share of the board's quota the daemon used: 1.0 is a board that never waits
    busy: float
    #: share of the CFS periods in which the quota ran out (every one with the idle filler)
    throttled_share: float
    bytes_in_per_frame: float
    bytes_out_per_frame: float
    rss_ready_mb: float
    rss_peak_mb: float


@dataclass
class RunResult:
    layout: str
    strategy: str
    boards: int
    describe: str
    predicted_fps: float | None
    fps: float
    lone_latency_ms: float
    #: medians over the lone frames, per stage: capture or the previous stage's output to
    #: this stage's network thread, and from there to its output (decode, segment, encode)
    lone_transfer_ms: list[float]
    lone_compute_ms: list[float]
    frames: int
    seconds: float
    #: what the broker read and wrote (MQTT bytes), per frame: its link's load
    broker_bytes_per_frame: float
    #: CPU outside the quotas, per frame: mosquitto, and this process (the camera mostly)
    broker_cpu_ms_per_frame: float
    camera_cpu_ms_per_frame: float
    #: share of the machine's CPU time busy (anyone's work) during the throughput phase
    machine_busy: float
    load_before: float
    load_after: float
    seed: int
    per_board: list[BoardResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Snapshot:
    at: float
    cpu: dict[str, CpuStats]
    daemon_cpu: dict[str, float]
    links: dict[str, LinkBytes]
    broker_io: int
    broker_cpu: float
    own_cpu: float
    frames_out: dict[str, int]


def broker_io_bytes(pid: int) -> int:
    """Bytes mosquitto read and wrote through system calls: its sockets, the MQTT traffic (its
    persistence file is written only every 30 s and at exit)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["rchar"]) + int(fields["wchar"])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


class Cluster:
    """N emulated boards made once, on which layouts run one after another."""

    def __init__(self, count: int, cpu: float, link: Link | None, *,
                 period_us: int | None = None, fill_idle: bool = True) -> None:
        self.count = count
        self.cpu = cpu
        self.link = link
        self.period_us = period_us
        self.fill_idle = fill_idle
        self.boards: list[Board] = []
        self._exit = ExitStack()

    def __enter__(self) -> Cluster:
        with ExitStack() as stack:  # the boards made so far go if one cannot be made
            for number in range(self.count):
                self.boards.append(stack.enter_context(
                    Board(f"board{number}", self.cpu, self.link, period_us=self.period_us,
                          on_cpu=number % (os.cpu_count() or 1))))
            self._exit = stack.pop_all()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._exit.close()

    def wake_lateness(self) -> list[float]:
        """How late a sleeper on a board wakes (ms), with the board's idle loop as in a run."""
        board = self.boards[0]
        with ExitStack() as stack:
            if self.fill_idle:
                stack.callback(_stop, board.fill_idle())
            return wake_lateness(board)

    def run(self, layout: Layout, photos: list[tuple[str, bytes]], phases: Phases, *,
            seed: int, camera: CameraConfig | None = None) -> RunResult:
        if layout.boards > len(self.boards):
            raise ValueError(f"{layout.name} needs {layout.boards} boards, there are "
                             f"{len(self.boards)}")
        boards = self.boards[:layout.boards]
        order = list(photos)
        random.Random(seed).shuffle(order)
        load_before = os.getloadavg()[0]
        port = free_port()
        listeners = "".join(f"listener {port} {board.broker_address}\n"
                            for board in boards if board.broker_address)
        with ExitStack() as stack:
            if self.fill_idle:  # on the boards this layout uses only: the others stay idle
                for board in boards:
                    stack.callback(_stop, board.fill_idle())
            broker = Broker(port, extra_config=listeners)
            stack.callback(broker.close)
            broker.start()
            daemons = [
                StageLaunch(f"board{number}", role.stage, role.share_group, board.command,
                            BrokerConfig(board.broker_address, broker.port)
                            if board.broker_address else None)
                for number, (board, role) in enumerate(zip(boards, layout.roles, strict=True))
            ]
            run = stack.enter_context(StageRun(layout.split, daemons, broker.address,
                                               camera=camera))
            pids = {node: process.pid for node, process in run.processes.items()}
            ready = {node: _rss(pid) for node, pid in pids.items()}
            in_flight = phases.in_flight_per_board * layout.boards
            run.feed(order, phases.warmup_per_board * layout.boards, in_flight)
            lone = run.feed(order, phases.lone_frames, 1)
            before = self._snapshot(run, boards, broker.pid, pids)
            memory = _MemorySampler(pids).start()
            frames = phases.frames_per_board * layout.boards
            started, machine = time.monotonic(), machine_jiffies()
            arrivals = run.feed(order, frames, in_flight)
            seconds = time.monotonic() - started
            busy, total = (b - a for a, b in zip(machine, machine_jiffies(), strict=True))
            peaks = memory.stop()
            after = self._snapshot(run, boards, broker.pid, pids)
        return _result(layout, arrivals, lone, in_flight=in_flight, before=before, after=after,
                       seconds=seconds,
                       machine_busy=busy / max(1, total),
                       ready=ready, peaks=peaks, loads=(load_before, os.getloadavg()[0]),
                       seed=seed, cpu=self.cpu)

    def _snapshot(self, run: StageRun, boards: list[Board], broker_pid: int,
                  pids: dict[str, int]) -> _Snapshot:
        at = time.time()
        cpu = {f"board{n}": board.cpu_stats() for n, board in enumerate(boards)}
        daemon_cpu = {node: process_cpu_seconds(pid) for node, pid in pids.items()}
        links = {f"board{n}": board.link_bytes() for n, board in enumerate(boards)
                 if board.veth}
        broker = broker_io_bytes(broker_pid)
        broker_cpu, own_cpu = process_cpu_seconds(broker_pid), process_cpu_seconds(os.getpid())
        stats = run.stats_after(at)
        return _Snapshot(at, cpu, daemon_cpu, links, broker, broker_cpu, own_cpu,
                         {node: int(s.get("frames_out", 0)) for node, s in stats.items()})


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def _rss(pid: int) -> float:
    taken = sample(pid)
    return taken.rss_mb if taken else 0.0


class _MemorySampler:
    """The highest resident memory of each pid while frames flow."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peaks = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory", daemon=True)

    def start(self) -> _MemorySampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peaks

    def _run(self) -> None:
        while True:
            for node, pid in self.pids.items():
                self.peaks[node] = max(self.peaks[node], _rss(pid))
            if self._stop.wait(MEMORY_INTERVAL):
                return


def steady_fps(arrivals: list[Arrival], in_flight: int) -> float:
    """Frames/s between the in_flight-th and the last in_flight-th result: the pipeline full,
    neither filling nor draining."""
    times = sorted(arrival.at for arrival in arrivals)
    middle = times[in_flight:len(times) - in_flight] if len(times) > 2 * in_flight + 2 else times
    return (len(middle) - 1) / (middle[-1] - middle[0])


def _result(layout: Layout, arrivals: list[Arrival], lone: list[Arrival], *, in_flight: int,
            before: _Snapshot, after: _Snapshot, seconds: float, machine_busy: float,
            ready: dict[str, float],
            peaks: dict[str, float], loads: tuple[float, float], seed: int,
            cpu: float) -> RunResult:
    frames = len(arrivals)
    per_board = []
    for number, role in enumerate(layout.roles):
        node = f"board{number}"
        done = after.frames_out[node] - before.frames_out[node]
        own = after.daemon_cpu[node] - before.daemon_cpu[node]
        board = after.cpu[node] - before.cpu[node]
        link = after.links[node] - before.links[node] if node in after.links else None
        per_board.append(BoardResult(
            node=node, stage=role.stage, frames=done,
            cpu_ms_per_frame=own * 1000 / done if done else 0.0,
            busy=own / (cpu * seconds),
            throttled_share=board.nr_throttled / board.nr_periods if board.nr_periods else 0.0,
            bytes_in_per_frame=link.to_board / done if link and done else 0.0,
            bytes_out_per_frame=link.from_board / done if link and done else 0.0,
            rss_ready_mb=ready[node], rss_peak_mb=peaks[node],
        ))
    stages = range(len(lone[0].prediction.stages))
    lone_transfer_ms = [statistics.median(a.prediction.stages[k].transfer_ms for a in lone)
                        for k in stages]
    lone_compute_ms = [statistics.median(a.prediction.stages[k].compute_ms for a in lone)
                       for k in stages]
    return RunResult(
        layout=layout.name, strategy=layout.strategy, boards=layout.boards,
        describe=layout.describe(), predicted_fps=layout.predicted_fps,
        fps=steady_fps(arrivals, in_flight),
        lone_latency_ms=statistics.median(a.prediction.latency_ms for a in lone),
        lone_transfer_ms=lone_transfer_ms, lone_compute_ms=lone_compute_ms,
        frames=frames, seconds=seconds,
        broker_bytes_per_frame=(after.broker_io - before.broker_io) / frames,
        broker_cpu_ms_per_frame=(after.broker_cpu - before.broker_cpu) * 1000 / frames,
        camera_cpu_ms_per_frame=(after.own_cpu - before.own_cpu) * 1000 / frames,
        machine_busy=machine_busy,
        load_before=loads[0], load_after=loads[1], seed=seed, per_board=per_board,
    )
