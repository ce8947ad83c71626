"""The emulated boards' self-test: what this machine permits, a busy loop's CPU rate on two
boards against their quotas, TCP rates over a board's link against tbf's, a calibration; then
nothing may be left.

    python -m bench.cluster.selftest             # show quotas and link rates as measured
    python -m bench.cluster.selftest --cleanup   # only remove what crashed runs left behind
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from bench.cluster.boards import NET_FEATURES, Board, Link, detect
from bench.cluster.leftovers import cleanup_leftovers, find_leftovers
from bench.cluster.timing import calibrate

# The self-test's workloads, run by the board's Python (`python -c CODE ARGS`).
_SPIN = "while True: pass"


_FRAMES = """import sys, time
def frame():
    total = 0
    for i in range(400_000):
        total += i
frame()
frames = int(sys.argv[1])
started = time.perf_counter()
for _ in range(frames):
    frame()
print((time.perf_counter() - started) / frames)
"""


_SEND = """import socket, sys, time
with socket.create_connection((sys.argv[1], int(sys.argv[2]))) as sock:
    chunk, end = bytes(1 << 16), time.monotonic() + float(sys.argv[3])
    while time.monotonic() < end:
        sock.sendall(chunk)
"""


_RECEIVE = """import socket, sys, time
with socket.create_connection((sys.argv[1], int(sys.argv[2]))) as sock:
    size, first = 0, None
    while data := sock.recv(1 << 16):
        first = first or time.monotonic()
        size += len(data)
print(size, time.monotonic() - first)
"""


_TARGET_SECONDS = 0.1  # the self-test's calibration target per frame


def selftest(seconds: float = 3.0) -> int:
    """Two boards (0.2 and 0.5 core, the second with a 100 Mbit/s link): CPU rate against the
    quota, TCP rate against tbf's, the cgroup counters, a calibration; then nothing may be left."""
    cleanup_leftovers()
    support = detect()
    cgroups = support.cgroups
    print("What this machine permits:")
    if cgroups:
        roots = dict.fromkeys([str(cgroups.cpu_root), str(cgroups.acct_root)])
        print(f"  cpu quotas: cgroup v{cgroups.version} ({', '.join(roots)})")
    for feature in ("cpu", "cgroup v2", *NET_FEATURES):
        if feature in support.missing:
            print(f"  {feature}: NOT permitted: {support.missing[feature]}")
        elif feature in NET_FEATURES:
            print(f"  {feature}: yes")
    if reason := support.why_not("cpu"):
        print(f"No board can be emulated: {reason}")
        return 1
    link = None if support.why_not(*NET_FEATURES) else Link(100)
    with Board("selftest-a", 0.2) as small, Board("selftest-b", 0.5, link) as large:
        _show_cpu([small, large], seconds)
        if large.netns:
            _show_link(large, seconds)
    found = calibrate([sys.executable, "-c", _FRAMES, "20"], _TARGET_SECONDS)
    print(f"\nCalibration of a 20-frame loop to {_TARGET_SECONDS * 1000:g} ms per frame: "
          f"{found.probe_seconds * 1000:.1f} ms at {found.probe_fraction:g} core -> "
          f"{found.fraction:.3f} core, checked: {found.check_seconds * 1000:.1f} ms per frame "
          f"({found.check_seconds / _TARGET_SECONDS:.2f} of the target)")
    left = [item for item in find_leftovers() if item.pid == os.getpid()]
    print("\nAfter the boards closed:",
          "nothing left" if not left else ", ".join(f"{i.kind} {i.name}" for i in left))
    return 1 if left else 0


def _show_cpu(boards: list[Board], seconds: float) -> None:
    procs = [board.popen([sys.executable, "-c", _SPIN]) for board in boards]
    time.sleep(0.5)  # past the interpreters' start
    before = [board.cpu_stats() for board in boards]
    started = time.monotonic()
    time.sleep(seconds)
    after = [board.cpu_stats() for board in boards]
    wall = time.monotonic() - started
    for proc in procs:
        proc.kill()
        proc.wait()
    load = os.getloadavg()[0]
    print(f"\nA busy loop on each board for {wall:.1f} s (load average {load:.1f} on "
          f"{os.cpu_count()} cores: a ratio under 1 with few throttled periods means other work "
          f"took the CPU, not the quota):")
    print(f"  {'board':<11} {'quota file':>12} {'core':>5} {'CPU s/s':>8} {'ratio':>6} "
          f"{'periods':>8} {'throttled':>9} {'throttled s':>11}")
    for board, first, last in zip(boards, before, after, strict=True):
        delta = last - first
        rate = delta.usage_usec / 1e6 / wall
        quota, period = board.quota()
        print(f"  {board.name:<11} {f'{quota} {period}':>12} {board.cpu:5.2f} {rate:8.3f} "
              f"{rate / board.cpu:6.2f} {delta.nr_periods:8d} {delta.nr_throttled:9d} "
              f"{delta.throttled_usec / 1e6:11.2f}")


def _show_link(board: Board, seconds: float) -> None:
    assert board.link and board.broker_address
    rate = board.link.rate_mbit
    print(f"\nTCP over {board.name}'s link ({board.address} <-> {board.broker_address}, "
          f"tbf {rate:g} Mbit/s each way), {seconds:g} s each way:")
    with socket.create_server((board.broker_address, 0)) as server:
        server.settimeout(10)
        for direction, transfer in (("board -> broker side", _upload),
                                    ("broker side -> board", _download)):
            before = board.link_bytes()
            size, elapsed = transfer(board, server, seconds)
            on_link = board.link_bytes() - before
            on_veth = on_link.from_board if transfer is _upload else on_link.to_board
            payload, frames = size * 8 / elapsed / 1e6, on_veth * 8 / elapsed / 1e6
            print(f"  {direction}: {payload:6.1f} Mbit/s of TCP payload ({payload / rate:.2f} of "
                  f"the rate), {frames:6.1f} Mbit/s of frames on the veth ({frames / rate:.2f})")


def _upload(board: Board, server: socket.socket, seconds: float) -> tuple[int, float]:
    """(bytes, seconds from the first to the last) the root side received from the board."""
    address, port = server.getsockname()[:2]
    sender = board.popen([sys.executable, "-c", _SEND, address, str(port), str(seconds)])
    conn, _ = server.accept()
    with conn:
        size, first = 0, time.monotonic()
        while data := conn.recv(1 << 16):
            first = first if size else time.monotonic()
            size += len(data)
        elapsed = time.monotonic() - first
    sender.wait(timeout=30)
    return size, elapsed


def _download(board: Board, server: socket.socket, seconds: float) -> tuple[int, float]:
    """(bytes, seconds from the first to the last) the board received from the root side."""
    address, port = server.getsockname()[:2]
    receiver = board.popen([sys.executable, "-c", _RECEIVE, address, str(port)],
                           stdout=subprocess.PIPE, text=True)
    conn, _ = server.accept()
    with conn:
        chunk, end = bytes(1 << 16), time.monotonic() + seconds
        while time.monotonic() < end:
            conn.sendall(chunk)
    output, _ = receiver.communicate(timeout=30)
    size, elapsed = output.split()
    return int(size), float(elapsed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cleanup", action="store_true",
                        help="only remove cgroups, netns and veths that crashed runs left")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cleanup:
        cleanup_leftovers()
        return 0
    return selftest()


if __name__ == "__main__":
    sys.exit(main())
