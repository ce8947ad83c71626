"""What a node measures about itself: counters, latency percentiles, CPU and memory.

The same snapshot feeds the retained `.../stats/<node>` topic, `aiotedge status` and the
optional Prometheus endpoint, so all three always agree.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from aiotedge.config.schema import StatsConfig
from aiotedge.contracts.errors import ConfigError

log = logging.getLogger(__name__)

COUNTER_NAMES = (
    "frames_in", "frames_out", "rejected", "dropped", "duplicates", "bytes_in", "bytes_out",
)


class Counters:
    """Thread-safe named counters (frames_in, frames_out, rejected, dropped, ...).

    `names` are always in a snapshot, 0 until counted; others from their first count.
    """

    def __init__(self, names: tuple[str, ...] = COUNTER_NAMES) -> None:
        self._names = names
        self._lock = threading.Lock()
        self._values: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {name: self._values[name] for name in (*self._names, *self._values)}


class LatencyWindow:
    """The last `size` samples of a duration, for p50/p99 without unbounded memory."""

    def __init__(self, size: int = 1000) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, milliseconds: float) -> None:
        with self._lock:
            self._samples.append(milliseconds)

    def percentiles(self) -> dict[str, float | None]:
        with self._lock:
            samples = np.fromiter(self._samples, dtype=np.float64)
        if samples.size == 0:
            return {"p50": None, "p99": None}
        p50, p99 = np.percentile(samples, [50, 99])
        return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}


class ProcessUsage:
    """CPU % since the previous sample (100 = one core busy) and resident memory."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), time.process_time())

    def sample(self) -> dict[str, float]:
        now, cpu = time.monotonic(), time.process_time()
        wall = now - self._last[0]
        percent = 100.0 * (cpu - self._last[1]) / wall if wall > 0 else 0.0
        self._last = (now, cpu)
        return {"cpu_percent": round(percent, 1), "rss_mb": round(resident_bytes() / 2**20, 1)}


def resident_bytes() -> int:
    """Current RSS from /proc (Linux); the peak from getrusage elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class NodeStats:
    """Everything a node reports, gathered in one snapshot."""

    def __init__(self, counter_names: tuple[str, ...] = COUNTER_NAMES) -> None:
        self.counters = Counters(counter_names)
        self.inference_ms = LatencyWindow()
        self.latency_ms = LatencyWindow()
        self._usage = ProcessUsage()
        self._started = time.time()

    def snapshot(self, **gauges: Any) -> dict[str, Any]:
        return {
            **self.counters.snapshot(),
            **gauges,
            "inference_ms": self.inference_ms.percentiles(),
            "latency_ms": self.latency_ms.percentiles(),
            **self._usage.sample(),
            "uptime_s": round(time.time() - self._started, 1),
            "timestamp": time.time(),
        }


def prometheus_lines(snapshot: dict[str, Any]) -> Iterator[tuple[str, str, float]]:
    """(metric name, type, value) triples for the Prometheus text format."""
    for name in COUNTER_NAMES:
        yield f"aiotedge_{name}_total", "counter", snapshot.get(name, 0)
    for name in ("queue_depth", "cpu_percent", "rss_mb", "uptime_s"):
        if name in snapshot:
            yield f"aiotedge_{name}", "gauge", snapshot[name]
    for window in ("inference_ms", "latency_ms"):
        for quantile, value in snapshot[window].items():
            if value is not None:
                yield f"aiotedge_{window}_{quantile}", "gauge", value


def serve_prometheus(
    stats: StatsConfig, node: str, snapshot: Callable[[], dict[str, Any]], source: str
) -> None:
    """Expose the node's stats at http://address:port/metrics (needs the `metrics` extra).

    Called before the node connects, so that a port in use stops it with the keys to fix.
    """
    from prometheus_client import REGISTRY, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self):
            for name, kind, value in prometheus_lines(snapshot()):
                family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                metric_name = name.removesuffix("_total") if kind == "counter" else name
                metric = family(metric_name, f"aiotedge {name}", labels=["node"])
                metric.add_metric([node], value)
                yield metric

    address, port = stats.prometheus_address, stats.prometheus_port
    try:
        start_http_server(port, addr=address)
    except OSError as exc:
        raise ConfigError(
            f"{source}: keys 'stats.prometheus_address' and 'stats.prometheus_port': "
            f"cannot listen on {address}:{port}: {exc.strerror}"
        ) from exc
    REGISTRY.register(_Collector())
    log.info("Prometheus metrics on http://%s:%d/metrics", address, port)
