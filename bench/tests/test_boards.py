"""Emulated boards (bench.cluster: boards, leftovers, timing): a board's process is in its
cgroup and its netns, the quota file holds what was asked, and nothing is left once a board
closes or a dead run's leftovers are cleaned. Skipped with the module's reason where the machine
does not permit it; no timing checks."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cluster import boards, leftovers, timing

NET = ("cpu", *boards.NET_FEATURES)
# Tries each address given at the port given; prints {address: "connected" or the error's name}.
CONNECT = """import json, socket, sys
port, result = int(sys.argv[1]), {}
for host in sys.argv[2:]:
    try:
        socket.create_connection((host, port), timeout=5).close()
        result[host] = "connected"
    except OSError as exc:
        result[host] = type(exc).__name__
print(json.dumps(result))
"""


def need(*features: str) -> boards.Cgroups:
    support = boards.detect()
    if reason := support.why_not(*features):
        pytest.skip(f"this machine does not permit it: {reason}")
    assert support.cgroups
    return support.cgroups


def started(pid: int, program: str) -> None:
    """Wait until pid runs `program` (the board's wrapper has exec'd), 10 s at most."""
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(program.encode()):
        assert time.monotonic() < deadline, f"pid {pid} never became {program}"
        time.sleep(0.01)


def cpu_cgroup_of(pid: int, cgroups: boards.Cgroups) -> str:
    """pid's cgroup in the hierarchy that holds the cpu controller, from /proc/PID/cgroup."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (cgroups.version == 2 and controllers == "") or "cpu" in controllers.split(","):
            return path
    raise AssertionError(f"no cpu cgroup for {pid}")


def gone(pid: int) -> bool:
    """Dead: no such process, or a zombie awaiting its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def netns_names() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listing.stdout.splitlines()}


def link_exists(name: str) -> bool:
    shown = subprocess.run(["ip", "link", "show", name], capture_output=True, check=False)
    return shown.returncode == 0


def test_a_process_runs_in_its_cgroup_under_its_own_pid():
    cgroups = need("cpu")
    with boards.Board("t-cgroup", 0.3) as board:
        proc = board.popen(["sleep", "60"])
        started(proc.pid, "sleep")
        assert cpu_cgroup_of(proc.pid, cgroups) == f"/{board.cgroup}"
        assert proc.pid in {int(p) for p in (cgroups.cpu_root / board.cgroup / "cgroup.procs")
                            .read_text().split()}


@pytest.mark.parametrize(("cpu", "period_us"), [(0.2, None), (0.5, 100_000), (1.5, 20_000)])
def test_the_quota_file_holds_what_was_asked(cpu, period_us):
    cgroups = need("cpu")
    with boards.Board("t-quota", cpu, period_us=period_us) as board:
        period_us = period_us or board.period_us
        quota_us = round(cpu * period_us)
        directory = cgroups.cpu_root / board.cgroup
        if cgroups.version == 2:
            assert (directory / "cpu.max").read_text().split() == [str(quota_us), str(period_us)]
        else:
            assert int((directory / "cpu.cfs_quota_us").read_text()) == quota_us
            assert int((directory / "cpu.cfs_period_us").read_text()) == period_us
        assert board.quota() == (quota_us, period_us)


@pytest.mark.parametrize(("cpu", "period_us"), [(0.2, 5_000), (0.05, 20_000), (0.3, 3_334),
                                                (1.5, 1_000)])
def test_the_default_period_is_the_shortest_the_kernel_takes(cpu, period_us):
    board = boards.Board("t-period", cpu)
    assert (board.period_us, board.quota_us) == (period_us, max(1_000, round(cpu * period_us)))


def test_the_idle_filler_runs_in_the_board_on_its_cpu_at_the_lowest_priority():
    cgroups = need("cpu")
    with boards.Board("t-fill", 0.3, on_cpu=0) as board:
        filler = board.fill_idle()
        deadline = time.monotonic() + 10
        while os.sched_getscheduler(filler.pid) != os.SCHED_IDLE:
            assert time.monotonic() < deadline, "the filler never became SCHED_IDLE"
            time.sleep(0.01)
        assert cpu_cgroup_of(filler.pid, cgroups) == f"/{board.cgroup}"
        assert os.sched_getaffinity(filler.pid) == {0}
    assert gone(filler.pid)


def test_wake_lateness_is_measured_inside_the_board_beside_its_idle_loop():
    need("cpu")
    with boards.Board("t-wake", 0.3, on_cpu=0) as board:
        filler = board.fill_idle()
        late = timing.wake_lateness(board, samples=20)
        assert filler.poll() is None  # the idle loop ran throughout
    assert len(late) == 20
    assert all(value >= 0 for value in late)  # time.sleep never returns early


def test_a_quota_under_the_kernels_minimum_is_refused():
    with pytest.raises(ValueError, match="longer period"):
        boards.Board("t-tiny", 0.05, period_us=10_000)


def test_a_process_runs_in_its_netns_and_reaches_only_the_broker_side():
    cgroups = need(*NET)
    with boards.Board("t-netns", 0.5, boards.Link(100)) as board:
        assert board.broker_address and board.netns
        with socket.create_server(("127.0.0.1", 0)) as loopback:
            port = loopback.getsockname()[1]
            with socket.create_server((board.broker_address, port)):
                probe = board.popen(
                    [sys.executable, "-c", CONNECT, str(port), "127.0.0.1", board.broker_address],
                    stdout=subprocess.PIPE, text=True)
                output, _ = probe.communicate(timeout=60)
        assert json.loads(output) == {"127.0.0.1": "ConnectionRefusedError",
                                      board.broker_address: "connected"}

        sleeper = board.popen(["sleep", "60"])
        started(sleeper.pid, "sleep")
        identify = subprocess.run(["ip", "netns", "identify", str(sleeper.pid)],
                                  capture_output=True, text=True, check=True)
        assert identify.stdout.split() == [board.netns]
        assert cpu_cgroup_of(sleeper.pid, cgroups) == f"/{board.cgroup}"


@pytest.mark.parametrize("with_link", [False, True], ids=["cgroup", "cgroup+netns"])
@pytest.mark.parametrize("failing", [False, True], ids=["clean-exit", "exception"])
def test_closing_a_board_leaves_nothing(with_link, failing):
    cgroups = need(*(NET if with_link else ("cpu",)))
    raised = (pytest.raises(RuntimeError, match="bench failed") if failing
              else contextlib.nullcontext())
    with raised, boards.Board("t-cleanup", 0.3, boards.Link(100) if with_link else None) as board:
        proc = board.popen(["sh", "-c", "sleep 60 & exec sleep 61"])  # a child and a grandchild
        started(proc.pid, "sleep")
        deadline = time.monotonic() + 10
        while len(pids := cgroups.pids(board.cgroup)) < 2:
            assert time.monotonic() < deadline, "the grandchild never showed in the cgroup"
            time.sleep(0.01)
        netns, veth = board.netns, board.veth
        if failing:
            raise RuntimeError("bench failed")
    assert all(gone(pid) for pid in pids)
    assert not (cgroups.cpu_root / board.cgroup).exists()
    assert not (cgroups.acct_root / board.cgroup).exists()
    assert not (cgroups.cpu_root / board.run).exists()
    if with_link:
        assert netns not in netns_names()
        assert not link_exists(veth)


def test_cleanup_leftovers_removes_a_dead_runs_and_spares_a_live_one():
    cgroups = need(*NET)
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead_pid = finished.pid  # names a run that is over
    run = boards.run_name(dead_pid)
    cgroups.make_run(run)
    cgroups.make(f"{run}/board0", 20_000, 100_000)
    procs = " ".join(str(path) for path in cgroups.procs_files(f"{run}/board0"))
    stray = subprocess.Popen(["sh", "-c", f'for f in {procs}; do echo $$ > "$f"; done; '
                              "exec sleep 60"])
    started(stray.pid, "sleep")
    netns, veth = f"{run}-board0", f"{boards.VETH_PREFIX}{dead_pid}-1"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                    "netns", netns], check=True)

    with boards.Board("t-alive", 0.3, boards.Link(100)) as alive:
        removed = leftovers.cleanup_leftovers()
        stray.wait(timeout=10)
        assert {(item.kind, item.pid) for item in removed} >= {
            ("cgroup", dead_pid), ("netns", dead_pid)}
        assert all(item.pid != os.getpid() for item in removed)
        assert (cgroups.cpu_root / alive.cgroup).is_dir()
        assert alive.netns in netns_names()
        assert link_exists(alive.veth)
    assert not (cgroups.cpu_root / run).exists()
    assert not (cgroups.acct_root / run).exists()
    assert netns not in netns_names()
    assert not link_exists(veth)


def test_calibrate_runs_the_command_on_a_board_and_reads_its_time_per_frame():
    need("cpu")
    # frames of 100 ms at 0.5 core: the 100 ms target needs 0.5 core, which the check confirms
    found = timing.calibrate([sys.executable, "-c", "print(0.1)"], 0.1, probe_fraction=0.5)
    assert found.fraction == pytest.approx(0.5)
    assert (found.probe_seconds, found.check_seconds) == (0.1, 0.1)


@pytest.mark.parametrize(("times", "fraction", "checked"), [
    ([0.05, 0.1], 0.25, 0.1),  # 50 ms at 0.5 core: 0.25 core for 100 ms, confirmed
    ([0.05, 0.08, 0.1], 0.2, 0.1),  # the machine sped up after the probe: corrected once
    ([0.05, 0.08, 0.08, 0.08], 0.16, 0.08),  # never within 5%: the last check is kept
])
def test_calibrate_corrects_the_quota_while_the_check_misses_the_target(
        monkeypatch, times, fraction, checked):
    runs = iter(times)
    monkeypatch.setattr(timing, "seconds_per_frame", lambda *_args, **_kw: next(runs))
    found = timing.calibrate(["frames"], 0.1, probe_fraction=0.5)
    assert (found.fraction, found.check_seconds) == pytest.approx((fraction, checked))
    assert next(runs, None) is None  # every run used, none more


def test_without_cgroup_mounts_the_reason_says_so():
    cgroups, reasons = boards._detect_cgroups([])
    assert cgroups is None
    assert reasons["cpu"] == ("cgroup v2: no cgroup2 file system is mounted; cgroup v1: no cgroup "
                              "v1 hierarchy with the cpu and cpuacct controllers is mounted")


def test_a_second_board_of_the_same_name_is_refused_and_the_first_kept():
    cgroups = need("cpu")
    with boards.Board("t-twin", 0.3) as first:
        with pytest.raises(boards.BoardError, match="of that name already"), \
                boards.Board("t-twin", 0.4):
            pass
        assert first.quota() == (round(0.3 * first.period_us), first.period_us)
    assert not (cgroups.cpu_root / first.cgroup).exists()
