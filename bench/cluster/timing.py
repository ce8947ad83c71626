"""Timing on a board: the CPU quota at which a command takes a target time per frame, and how
late a process on a board wakes from a sleep."""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from bench.cluster.boards import Board, BoardError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """The quota at which a command takes the target time per frame, and the runs that found it."""

    fraction: float
    target_seconds: float
    probe_fraction: float
    probe_seconds: float
    check_seconds: float


def calibrate(argv: Sequence[str], target_seconds: float, *, probe_fraction: float = 0.5,
              period_us: int | None = None, timeout: float = 600.0, tolerance: float = 0.05,
              checks: int = 3) -> Calibration:
    """The quota at which argv takes target_seconds per frame. argv prints its seconds per frame
    as the last word of its output. CPU-bound work slows in proportion to the quota, so one run
    at probe_fraction gives the fraction; a run at that fraction checks it, and while the check
    is more than `tolerance` off (the shared machine's speed moved between the runs) the
    fraction is corrected by it and checked again, up to `checks` runs in all."""
    probe = seconds_per_frame(argv, probe_fraction, period_us=period_us, timeout=timeout)
    fraction = probe_fraction * probe / target_seconds
    check = seconds_per_frame(argv, fraction, period_us=period_us, timeout=timeout)
    for _ in range(checks - 1):
        if abs(check / target_seconds - 1) <= tolerance:
            break
        log.info("calibration: %.1f ms per frame at %.3f core, %.0f%% off the target; "
                 "correcting", check * 1000, fraction, (check / target_seconds - 1) * 100)
        fraction *= check / target_seconds
        check = seconds_per_frame(argv, fraction, period_us=period_us, timeout=timeout)
    return Calibration(fraction, target_seconds, probe_fraction, probe, check)


def seconds_per_frame(argv: Sequence[str], fraction: float, *,
                      period_us: int | None = None, timeout: float = 600.0) -> float:
    """Run argv on a board of `fraction` core; the last word it prints, as seconds per frame."""
    with Board("calibrate", fraction, period_us=period_us) as board:
        return float(output_of(board, argv, timeout).split()[-1])


def wake_lateness(board: Board, samples: int = 200, *, timeout: float = 60.0) -> list[float]:
    """How late (ms) a process on the board wakes from a sleep, with whatever else runs there
    (its idle loop): the wait a frame's message meets at every hop, besides the board's pace."""
    output = output_of(board, [sys.executable, "-c", _WAKE, str(samples)], timeout)
    return [float(word) for word in output.split()]


def output_of(board: Board, argv: Sequence[str], timeout: float) -> str:
    """What argv, run on the board to its end, printed; BoardError if it failed."""
    proc = board.popen(argv, stdout=subprocess.PIPE, text=True)
    output, _ = proc.communicate(timeout=timeout)
    if proc.returncode:
        raise BoardError(f"`{shlex.join(argv)}` on {board.name} exited with status "
                         f"{proc.returncode}")
    return output


# How late a sleeper wakes: sleeps of 5 to 30 ms at random, each one's oversleep in ms.
_WAKE = """import random, sys, time
late = []
for _ in range(int(sys.argv[1])):
    wanted = random.uniform(0.005, 0.03)
    started = time.perf_counter()
    time.sleep(wanted)
    late.append((time.perf_counter() - started - wanted) * 1000)
print(*late)
"""
