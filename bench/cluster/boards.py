"""Emulated boards on one machine: a CPU quota per stage daemon and, optionally, its own network.

A cluster bench runs each stage daemon as if on its own Raspberry-Pi-class board: in a cgroup
whose CPU quota is a fraction of one core and, optionally, in a network namespace joined to the
broker's (root) namespace by a veth pair shaped with tbf on both ends. `detect()` says what this
machine permits and, for what it does not, why; `Board` creates all that and removes it again.
What a crashed run left is removed by leftovers.py; calibrate.py finds the quota at which a
command takes a target time per frame; selftest.py shows them at work:

    python -m bench.cluster.selftest             # show quotas and link rates as measured
    python -m bench.cluster.selftest --cleanup   # only remove what crashed runs left behind
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "aiotedge-bench"  # run cgroups and netns: aiotedge-bench-<pid>[-<board>]
VETH_PREFIX = "aeb"  # interface names hold 15 characters at most: aeb<pid>-<serial>
SUBNET = "10.213"  # board link N: SUBNET.N.1 on the root (broker) side, SUBNET.N.2 in its netns
MIN_QUOTA_US = 1_000  # the kernel refuses shorter quotas
MIN_PERIOD_US = 1_000  # and shorter periods
NET_FEATURES = ("netns", "veth", "tbf", "ethtool")
NET_DEVICES = Path("/sys/class/net")

RUN_NAME = re.compile(rf"^{PREFIX}-(\d+)(?:-.+)?$")
VETH_NAME = re.compile(rf"^{VETH_PREFIX}(\d+)-")
# The wrapper that puts a process in its cgroup: `sh -c _ENTER sh N FILE... ARGV...` writes the
# shell's own pid into the N cgroup.procs files, then execs ARGV under the same pid.
_ENTER = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n - 1)); done; '
    'exec "$@"'
)
_serials = itertools.count(1)


class BoardError(RuntimeError):
    """A board could not be set up or removed; the message holds the failing step's error."""


@dataclass(frozen=True)
class CpuStats:
    """A cgroup's CPU counters since it was made; subtract two snapshots for a window's."""

    usage_usec: int
    nr_periods: int
    nr_throttled: int
    throttled_usec: int

    def __sub__(self, other: CpuStats) -> CpuStats:
        return CpuStats(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass(frozen=True)
class LinkBytes:
    """Bytes through a board's veth as counted on the root side, headers included."""

    to_board: int
    from_board: int

    def __sub__(self, other: LinkBytes) -> LinkBytes:
        return LinkBytes(self.to_board - other.to_board, self.from_board - other.from_board)


@dataclass(frozen=True)
class Cgroups:
    """Where CPU cgroups are made: one unified hierarchy (v2), or v1's cpu and cpuacct ones
    (the same directory when they are mounted together). Paths given are relative to them."""

    version: int
    cpu_root: Path
    acct_root: Path

    def dirs(self, rel: str) -> list[Path]:
        return list(dict.fromkeys([self.cpu_root / rel, self.acct_root / rel]))

    def procs_files(self, rel: str) -> list[Path]:
        return [directory / "cgroup.procs" for directory in self.dirs(rel)]

    def make_run(self, run: str) -> None:
        """The run's parent cgroup; on v2 it must hand the cpu controller down to its boards."""
        for directory in self.dirs(run):
            directory.mkdir(exist_ok=True)
        if self.version == 2:
            (self.cpu_root / run / "cgroup.subtree_control").write_text("+cpu")

    def make(self, rel: str, quota_us: int, period_us: int) -> None:
        for directory in self.dirs(rel):
            directory.mkdir()
        cpu = self.cpu_root / rel
        if self.version == 2:
            (cpu / "cpu.max").write_text(f"{quota_us} {period_us}")
        else:
            (cpu / "cpu.cfs_period_us").write_text(str(period_us))
            (cpu / "cpu.cfs_quota_us").write_text(str(quota_us))

    def quota(self, rel: str) -> tuple[int | None, int]:
        """(quota µs or None for no limit, period µs) as the kernel holds them."""
        cpu = self.cpu_root / rel
        if self.version == 2:
            quota, period = (cpu / "cpu.max").read_text().split()
            return (None if quota == "max" else int(quota)), int(period)
        quota_us = int((cpu / "cpu.cfs_quota_us").read_text())
        return (None if quota_us < 0 else quota_us), int((cpu / "cpu.cfs_period_us").read_text())

    def stats(self, rel: str) -> CpuStats:
        stat = (self.cpu_root / rel / "cpu.stat").read_text()
        cpu = dict(line.split() for line in stat.splitlines())
        if self.version == 2:
            return CpuStats(int(cpu["usage_usec"]), int(cpu["nr_periods"]),
                            int(cpu["nr_throttled"]), int(cpu["throttled_usec"]))
        usage_ns = int((self.acct_root / rel / "cpuacct.usage").read_text())
        return CpuStats(usage_ns // 1000, int(cpu["nr_periods"]), int(cpu["nr_throttled"]),
                        int(cpu["throttled_time"]) // 1000)

    def pids(self, rel: str) -> set[int]:
        return set().union(*(read_pids(directory) for directory in self.dirs(rel)))

    def remove(self, rel: str) -> None:
        for directory in self.dirs(rel):
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()

    def remove_run(self, run: str) -> None:
        """The run's parent goes with its last board; while others remain, rmdir says busy."""
        for directory in self.dirs(run):
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise


@dataclass(frozen=True)
class Support:
    """What this machine permits: the cgroups for CPU quotas, and for each feature it does not
    permit ("cpu", "cgroup v2", "netns", "veth", "tbf", "ethtool") the reason."""

    cgroups: Cgroups | None
    missing: dict[str, str] = field(default_factory=dict)

    def why_not(self, *features: str) -> str | None:
        """None when every feature given is permitted, else the reasons (a bench's skip message)."""
        reasons = [f"{feature}: {self.missing[feature]}" for feature in features
                   if feature in self.missing]
        return "; ".join(reasons) or None


@dataclass(frozen=True)
class Link:
    """A board's network link: tbf at rate_mbit on both veth ends, so each direction gets it."""

    rate_mbit: float
    latency_ms: float = 50.0  # how long a packet may wait in tbf's queue before it is dropped

    def tbf_args(self) -> list[str]:
        # A bucket of 1 ms at the rate (at least two full frames): enough for the kernel's timer
        # to keep the rate, small enough that short bursts do not outrun it.
        burst = max(round(self.rate_mbit * 1e6 / 8 / 1000), 2 * 1514)
        return ["tbf", "rate", f"{self.rate_mbit:g}mbit", "burst", str(burst),
                "latency", f"{self.latency_ms:g}ms"]


def shortest_period_us(cpu: float) -> int:
    """The shortest CFS period at which `cpu` core is a quota the kernel takes (1 ms at least).

    Short, as a board that was idle runs its whole first quota at full speed before the quota
    bites: a stage's frame takes a few ms of CPU, and with the kernel's 100 ms period it would
    run at full speed and then stall, unlike a slower board. At 0.2 core: 1 ms every 5 ms."""
    return max(MIN_PERIOD_US, math.ceil(MIN_QUOTA_US / cpu))


class Board:
    """One emulated board: a cgroup with a CPU quota and, given a link, its own network namespace.

    Use it as a context manager: leaving it kills the board's processes and removes its veth,
    netns and cgroup, also on an exception or Ctrl-C. Make boards from one thread.
    """

    def __init__(self, name: str, cpu: float, link: Link | None = None, *,
                 period_us: int | None = None, on_cpu: int | None = None) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", name):
            raise ValueError(f"board name {name!r}: use up to 32 of a-z 0-9 _ -")
        self.name = name
        self.cpu = cpu
        self.link = link
        #: the one CPU the board's processes run on (taskset), if given: a board is then a
        #: share of one core, its threads never run side by side, and fill_idle's loop gives
        #: way to them (a lowest-priority task only yields to others on its own CPU)
        self.on_cpu = on_cpu
        self.period_us = period_us = period_us or shortest_period_us(cpu)
        self.quota_us = round(cpu * period_us)
        if self.quota_us < MIN_QUOTA_US:
            raise ValueError(f"{cpu} core over {period_us} µs is a quota under the kernel's "
                             f"{MIN_QUOTA_US} µs: give a longer period_us")
        self.run = run_name()
        self.cgroup = f"{self.run}/{name}"
        self.netns: str | None = None
        self.veth: str | None = None
        self.address: str | None = None  # the board's own, inside its netns
        self.broker_address: str | None = None  # root side of its link: where to find the broker
        self._cgroups: Cgroups | None = None
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> Board:
        support = detect()
        reason = support.why_not("cpu", *(NET_FEATURES if self.link else ()))
        if reason:
            raise BoardError(f"board {self.name}: this machine does not permit {reason}")
        if (support.cgroups.cpu_root / self.cgroup).exists():
            raise BoardError(f"board {self.name}: this run has a board of that name already")
        try:
            with _interrupts_deferred():
                self._cgroups = support.cgroups
                self._cgroups.make_run(self.run)
                self._cgroups.make(self.cgroup, self.quota_us, self.period_us)
                if self.link:
                    self._make_link(self.link)
        except BaseException:
            with contextlib.suppress(BoardError):  # close logged it; the setup error tells more
                self.close()
            raise
        log.info("board %s: %g core%s", self.name, self.cpu,
                 f", {self.link.rate_mbit:g} Mbit/s at {self.address}" if self.link else "")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.close()
        except BoardError:
            if exc_type is None:
                raise

    def _make_link(self, link: Link) -> None:
        netns = f"{self.run}-{self.name}"
        run_setup(["ip", "netns", "add", netns])
        self.netns = netns
        veth = f"{VETH_PREFIX}{os.getpid()}-{next(_serials)}"
        run_setup(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                   "netns", netns])
        self.veth = veth
        number = _claim_subnet(veth)
        self.broker_address, self.address = f"{SUBNET}.{number}.1", f"{SUBNET}.{number}.2"
        for argv in (
            ["ethtool", "-K", veth, "tso", "off", "gso", "off"],
            ["ip", "netns", "exec", netns, "ethtool", "-K", "eth0", "tso", "off", "gso", "off"],
            ["ip", "-n", netns, "addr", "add", f"{self.address}/30", "dev", "eth0"],
            ["ip", "-n", netns, "link", "set", "lo", "up"],
            ["ip", "-n", netns, "link", "set", "eth0", "up"],
            ["ip", "link", "set", veth, "up"],
            ["tc", "qdisc", "add", "dev", veth, "root", *link.tbf_args()],
            ["tc", "-n", netns, "qdisc", "add", "dev", "eth0", "root", *link.tbf_args()],
        ):
            run_setup(argv)

    def command(self, argv: Sequence[str]) -> list[str]:
        """argv wrapped to run inside this board under one pid: a shell writes its own pid into
        the cgroup, then execs `taskset -c CPU` (given on_cpu), `ip netns exec NETNS` (given a
        link) and argv. The cgroup comes first as `ip netns exec` remounts /sys, which hides the
        cgroup files; a wrapper rather than Popen's preexec_fn, which is unsafe in a process
        with threads (a bench's MQTT clients)."""
        pin = ["taskset", "-c", str(self.on_cpu)] if self.on_cpu is not None else []
        netns = ["ip", "netns", "exec", self.netns] if self.netns else []
        return enter_argv(self._set_up().procs_files(self.cgroup), [*pin, *netns, *argv])

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start argv inside this board (subprocess.Popen's keywords apply); it is killed when
        the board closes if it has not ended by then."""
        proc = subprocess.Popen(self.command(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def fill_idle(self) -> subprocess.Popen:
        """Keep the board's quota in use while its other processes wait: a busy loop at the
        lowest priority (SCHED_IDLE), which any of them on its CPU preempts at once (so give
        the board on_cpu). A frame that arrives after a pause then runs at the quota's rate
        from its start, as on a slower CPU, rather than at full speed until the period's unused
        quota runs out. The board's CPU counters then include the loop's time; a process's own
        is in /proc/PID/stat."""
        return self.popen([sys.executable, "-c", _FILL_IDLE])

    def set_link(self, up: bool) -> None:
        """Cut the board off (its veth's root end down: nothing passes either way, as an
        unplugged cable), or plug it in again."""
        if self.veth is None:
            raise BoardError(f"board {self.name} has no link")
        run_setup(["ip", "link", "set", self.veth, "up" if up else "down"])

    def cpu_stats(self) -> CpuStats:
        return self._set_up().stats(self.cgroup)

    def quota(self) -> tuple[int | None, int]:
        return self._set_up().quota(self.cgroup)

    def link_bytes(self) -> LinkBytes:
        if self.veth is None:
            raise BoardError(f"board {self.name} has no link")
        counters = NET_DEVICES / self.veth / "statistics"
        return LinkBytes(int((counters / "tx_bytes").read_text()),
                         int((counters / "rx_bytes").read_text()))

    def close(self) -> None:
        """Kill the board's processes, remove its veth, netns and cgroup. Every step is tried;
        BoardError names those that failed (`cleanup_leftovers` can finish them later)."""
        failures: list[str] = []

        def attempt(what: str, step: Callable[[], object]) -> None:
            try:
                step()
            except (OSError, BoardError, subprocess.SubprocessError) as exc:
                failures.append(f"{what}: {exc}")

        cgroups, netns, veth = self._cgroups, self.netns, self.veth
        with _interrupts_deferred():
            if cgroups:
                attempt("kill its processes",
                        lambda: kill_all(lambda: cgroups.pids(self.cgroup), self._reap))
            if netns:
                attempt("kill processes in its netns",
                        lambda: kill_all(lambda: netns_pids(netns), self._reap))
            for proc in self._procs:
                attempt(f"reap pid {proc.pid}", lambda proc=proc: proc.wait(timeout=10))
            if veth and (NET_DEVICES / veth).exists():
                attempt("remove veth", lambda: run_setup(["ip", "link", "del", veth]))
            if netns:
                attempt("remove netns", lambda: run_setup(["ip", "netns", "del", netns]))
            if cgroups:
                attempt("remove cgroup", lambda: cgroups.remove(self.cgroup))
                attempt("remove run cgroup", lambda: cgroups.remove_run(self.run))
        self._cgroups = self.netns = self.veth = None
        self._procs.clear()
        if failures:
            message = f"board {self.name}: " + "; ".join(failures)
            log.error("%s", message)
            raise BoardError(message)

    def _reap(self) -> None:
        for proc in self._procs:
            proc.poll()

    def _set_up(self) -> Cgroups:
        if self._cgroups is None:
            raise BoardError(f"board {self.name} is not set up: use it in a with block")
        return self._cgroups


def run_name(pid: int | None = None) -> str:
    """The run's parent cgroup, also the start of its netns names."""
    return f"{PREFIX}-{os.getpid() if pid is None else pid}"


@functools.cache
def detect() -> Support:
    """Probe this machine once: a scratch cgroup with a quota and a process put in it, a scratch
    netns with a veth pair, tbf and TSO/GSO off. Each failure is kept as its reason."""
    missing: dict[str, str] = {}
    cgroups, reasons = _detect_cgroups(cgroup_mounts())
    missing.update(reasons)
    missing.update(_probe_network())
    for feature, reason in missing.items():
        log.debug("not permitted: %s: %s", feature, reason)
    return Support(cgroups, missing)


def cgroup_mounts() -> list[tuple[str, Path, set[str]]]:
    """(file system type, mount point, super options) of every cgroup mount we can see."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, after = line.split(" - ", 1)
        fstype, _source, options = after.split()[:3]
        if fstype in ("cgroup", "cgroup2"):
            mounts.append((fstype, Path(before.split()[4]), set(options.split(","))))
    return mounts


def _detect_cgroups(
    mounts: list[tuple[str, Path, set[str]]],
) -> tuple[Cgroups | None, dict[str, str]]:
    """cgroup v2 when its cpu controller can be used, else v1; reasons for what is not."""
    reasons: dict[str, str] = {}
    unified = next((path for fstype, path, _ in mounts if fstype == "cgroup2"), None)
    if unified is None:
        reasons["cgroup v2"] = "no cgroup2 file system is mounted"
    else:
        cgroups = Cgroups(2, unified, unified)
        why = _check_unified(unified) or _probe_cgroups(cgroups)
        if not why:
            return cgroups, reasons
        reasons["cgroup v2"] = why
    cpu, acct = (next((path for fstype, path, opts in mounts
                       if fstype == "cgroup" and controller in opts), None)
                 for controller in ("cpu", "cpuacct"))
    if cpu is None or acct is None:
        why = "no cgroup v1 hierarchy with the cpu and cpuacct controllers is mounted"
    else:
        cgroups = Cgroups(1, cpu, acct)
        why = _probe_cgroups(cgroups)
        if not why:
            return cgroups, reasons
    reasons["cpu"] = f"cgroup v2: {reasons['cgroup v2']}; cgroup v1: {why}"
    return None, reasons


def _check_unified(root: Path) -> str:
    controllers = (root / "cgroup.controllers").read_text().split()
    if "cpu" not in controllers:
        return (f"{root} offers no cpu controller (its cgroup.controllers: "
                f"{' '.join(controllers) or 'none'})")
    control = root / "cgroup.subtree_control"
    if "cpu" not in control.read_text().split():
        try:
            control.write_text("+cpu")
        except OSError as exc:
            return f"writing +cpu to {control} failed: {exc.strerror}"
    return ""


def _probe_cgroups(cgroups: Cgroups) -> str:
    """Make a scratch board cgroup with a quota, read it back, put a process in it."""
    run = f"{run_name()}-probe"
    rel = f"{run}/board"
    try:
        cgroups.make_run(run)
        cgroups.make(rel, 20_000, 100_000)
        if cgroups.quota(rel) != (20_000, 100_000):
            return f"a quota of 20000/100000 µs reads back as {cgroups.quota(rel)}"
        cgroups.stats(rel)
        done = subprocess.run(enter_argv(cgroups.procs_files(rel), ["true"]),
                              capture_output=True, text=True, check=False)
        if done.returncode:
            return f"putting a process in {cgroups.cpu_root / rel} failed: {done.stderr.strip()}"
        return ""
    except OSError as exc:
        return f"{exc.filename}: {exc.strerror}"
    except KeyError as exc:
        return f"its cpu.stat has no {exc}"
    finally:
        cgroups.remove(rel)
        cgroups.remove_run(run)


def _probe_network() -> dict[str, str]:
    if not shutil.which("ip"):
        return dict.fromkeys(NET_FEATURES, "`ip` is not installed (Debian package iproute2)")
    missing: dict[str, str] = {}
    if not shutil.which("tc"):
        missing["tbf"] = "`tc` is not installed (Debian package iproute2)"
    if not shutil.which("ethtool"):
        missing["ethtool"] = ("`ethtool` is not installed (Debian package ethtool); it turns "
                              "TSO/GSO off on the veths")
    netns, veth = f"{run_name()}-probe", f"{VETH_PREFIX}{os.getpid()}-p"
    steps = [
        ("netns", ["ip", "netns", "add", netns]),
        ("veth", ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                  "netns", netns]),
        ("tbf", ["tc", "qdisc", "add", "dev", veth, "root", *Link(100).tbf_args()]),
        ("ethtool", ["ethtool", "-K", veth, "tso", "off", "gso", "off"]),
    ]
    try:
        for position, (feature, argv) in enumerate(steps):
            if feature in missing:
                continue
            try:
                run_setup(argv)
            except BoardError as exc:
                missing[feature] = str(exc)
                if feature in ("netns", "veth"):
                    for later, _ in steps[position + 1:]:
                        missing.setdefault(later, f"needs {feature}, not permitted")
                    break
    finally:
        with contextlib.suppress(BoardError):  # a leftover then, for cleanup_leftovers
            if (NET_DEVICES / veth).exists():
                run_setup(["ip", "link", "del", veth])
            if "netns" not in missing:
                run_setup(["ip", "netns", "del", netns])
    return missing


def run_setup(argv: Sequence[str]) -> str:
    """Run a setup command; BoardError with the command's own error message when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        error = done.stderr.strip() or f"exit status {done.returncode}"
        raise BoardError(f"`{shlex.join(argv)}` failed: {error}")
    return done.stdout


def enter_argv(procs_files: Sequence[Path], argv: Sequence[str]) -> list[str]:
    return ["sh", "-c", _ENTER, "sh", str(len(procs_files)), *map(str, procs_files), *argv]


def _claim_subnet(veth: str) -> int:
    """The lowest SUBNET.N.0/30 free in the root namespace, its .1 given to veth's root end; a
    lock file keeps two runs starting together from taking the same N."""
    with open(Path(tempfile.gettempdir()) / f"{PREFIX}-subnets.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        listing = run_setup(["ip", "-o", "-4", "addr", "show"])
        used = {int(n) for n in re.findall(rf"inet {re.escape(SUBNET)}\.(\d+)\.", listing)}
        number = next((n for n in range(1, 255) if n not in used), None)
        if number is None:
            raise BoardError(f"every {SUBNET}.N.0/30 (N 1-254) is in use")
        run_setup(["ip", "addr", "add", f"{SUBNET}.{number}.1/30", "dev", veth])
        return number


def read_pids(cgroup_dir: Path) -> set[int]:
    try:
        return {int(pid) for pid in (cgroup_dir / "cgroup.procs").read_text().split()}
    except FileNotFoundError:
        return set()


def netns_pids(netns: str) -> set[int]:
    return {int(pid) for pid in run_setup(["ip", "netns", "pids", netns]).split()}


def kill_all(pids: Callable[[], set[int]], reap: Callable[[], None] = lambda: None) -> None:
    """SIGKILL every pid listed until none is left (a fork may race a pass); reap lets our own
    children's zombies go."""
    deadline = time.monotonic() + 10
    while remaining := pids():
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        reap()
        if time.monotonic() > deadline:
            raise BoardError(f"pids {sorted(remaining)} outlived SIGKILL for 10 s")
        time.sleep(0.02)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C until a board's setup or teardown is through, so nothing is left half made."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


# The idle loop yields about every 50 µs: the kernel charges a task's time to the quota when it
# switches or at its tick (4 ms at HZ=250), so a loop that never yields overruns the quota by
# up to a tick, and the board then sits throttled for periods to pay it back: a daemon woken
# meanwhile waited a median 4 to 7 ms (`wake_lateness`), against none on a slower CPU.
_FILL_IDLE = """import os
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
while True:
    for _ in range(2000):
        pass
    os.sched_yield()
"""
