"""Sampling a daemon's resident memory, open file descriptors and threads from /proc.

A leak shows as growth from start to end over a long run; a burst (a decoded bomb) as a peak.
Processes come and go (a killed stage is started again): samples are kept per node name.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    rss_mb: float
    #: the kernel's high-water mark of RSS (VmHWM): catches a peak between two samples
    hwm_mb: float
    fds: int
    threads: int


@dataclass
class Usage:
    """First, last and peak sample of one node over a scenario."""

    start: Sample
    end: Sample
    peak: Sample

    @classmethod
    def first(cls, sample: Sample) -> Usage:
        usage = cls(sample, sample, sample)
        usage.add(sample)
        return usage

    def add(self, sample: Sample) -> None:
        self.end = sample
        self.peak = Sample(
            max(self.peak.rss_mb, sample.rss_mb, sample.hwm_mb),
            max(self.peak.hwm_mb, sample.hwm_mb),
            max(self.peak.fds, sample.fds),
            max(self.peak.threads, sample.threads),
        )


def sample(pid: int) -> Sample | None:
    """None when the process is gone (or not ours to read)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    def megabytes(name: str) -> float:
        return round(int(fields.get(name, "0 kB").split()[0]) / 1024, 1)

    return Sample(megabytes("VmRSS"), megabytes("VmHWM"), fds, int(fields["Threads"]))


@dataclass
class ProcSampler:
    """Samples every pid `pids()` names (node -> pid) until stopped, in its own thread."""

    pids: Callable[[], dict[str, int]]
    interval: float = 0.25
    usage: dict[str, Usage] = field(default_factory=dict)
    #: > 0: also keep every node's RSS this often (seconds), as a curve over time
    curve_every: float = 0.0
    #: node -> [(seconds since the sampler started, RSS MB)], when curve_every > 0
    curve: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="procfs", daemon=True)
        self._started = time.monotonic()
        self._curve_at = 0.0

    def start(self) -> ProcSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample_now()

    def sample_now(self) -> None:
        now = time.monotonic() - self._started
        keep = self.curve_every > 0 and now - self._curve_at >= self.curve_every
        if keep:
            self._curve_at = now
        for node, pid in self.pids().items():
            taken = sample(pid)
            if taken is None:
                continue
            with self._lock:
                if keep:
                    self.curve.setdefault(node, []).append((round(now, 1), taken.rss_mb))
                if node in self.usage:
                    self.usage[node].add(taken)
                else:
                    self.usage[node] = Usage.first(taken)

    def rebase(self, nodes: list[str]) -> None:
        """Start these nodes' growth from now (they just became ready); their peaks stay."""
        pids = self.pids()
        for node in nodes:
            taken = sample(pids[node]) if node in pids else None
            if taken is None:
                continue
            with self._lock:
                usage = self.usage.setdefault(node, Usage.first(taken))
                usage.start = taken
                usage.add(taken)

    def snapshot(self) -> dict[str, Usage]:
        with self._lock:
            return {node: Usage(u.start, u.end, u.peak) for node, u in self.usage.items()}

    def curve_snapshot(self) -> dict[str, list[tuple[float, float]]]:
        with self._lock:
            return {node: list(points) for node, points in self.curve.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample_now()
