"""What a node measures about itself: counters, durations, CPU and memory.

Two readers, which never disturb each other: the retained JSON on `.../stats/<node>` (what
`aiotedge status` and Home Assistant show: recent percentiles, frames per second and CPU since
the previous message) and the optional Prometheus endpoint (cumulative counters and histograms,
which a scrape only reads, so that any number of scrapers can compute their own rates).
"""

from __future__ import annotations

import bisect
import logging
import os
import resource
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from aiotedge.config.sections import StatsConfig
from aiotedge.contracts.errors import ConfigError
from aiotedge.contracts.extras import import_extra
from aiotedge.nodes.observe.thermal import Thermal, ThermalReading

log = logging.getLogger(__name__)

COUNTER_NAMES = (
    "frames_in", "frames_out", "rejected", "dropped", "duplicates", "bytes_in", "bytes_out",
    "chain_errors", "missed", "arrived_late",
)
#: histogram buckets (seconds): a 1 ms hop on a fast machine up to a minute behind a queue
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)


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


@dataclass(frozen=True)
class HistogramCounts:
    """A histogram as Prometheus exposes it: cumulative counts per upper bound, sum, count."""

    buckets: tuple[tuple[float, int], ...]
    total: float
    count: int


class Timing:
    """One duration per frame, kept twice: a recent window (p50/p99, in ms, for the stats
    message) and a cumulative histogram (seconds, for Prometheus, so that replicas aggregate).
    """

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.window = LatencyWindow()
        self._bounds = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last one: above every bound
        self._total = 0.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        self.window.add(seconds * 1000)
        slot = bisect.bisect_left(self._bounds, seconds)  # the first bound >= seconds
        with self._lock:
            self._counts[slot] += 1
            self._total += seconds

    def histogram(self) -> HistogramCounts:
        with self._lock:
            counts, total = list(self._counts), self._total
        cumulative, running = [], 0
        for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramCounts(tuple(cumulative), total, running)


class RateMeter:
    """Events per second since the previous reading (frames per second in the stats message)."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), 0)

    def rate(self, total: int) -> float:
        now = time.monotonic()
        elapsed, done = now - self._last[0], total - self._last[1]
        self._last = (now, total)
        return round(done / elapsed, 3) if elapsed > 0 else 0.0


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
    """Everything a node reports (a stage's counters by default, a camera its own)."""

    def __init__(self, counter_names: tuple[str, ...] = COUNTER_NAMES,
                 thermal: Thermal | None = None) -> None:
        self.counters = Counters(counter_names)
        #: the board's CPU temperature and throttling, where it says them
        self.thermal = thermal or Thermal()
        #: the segment's interpreter, per frame
        self.inference = Timing()
        #: the inference worker's whole time per frame (decode, inference, encode, publish):
        #: what limits the frames per second this stage can serve
        self.service = Timing()
        #: from capture at the camera to this node's output (a camera: to the prediction)
        self.latency = Timing()
        self._usage = ProcessUsage()
        self._fps = RateMeter()
        self._started = time.time()

    def snapshot(self, **gauges: Any) -> dict[str, Any]:
        """The stats message. Starts new CPU and fps windows: for the stats publisher only."""
        counters = self.counters.snapshot()
        return {
            **counters,
            "fps": self._fps.rate(counters.get("frames_out", 0)),
            **gauges,  # a node's own figures (a camera's fps) before the defaults
            "inference_ms": self.inference.window.percentiles(),
            "service_ms": self.service.window.percentiles(),
            "latency_ms": self.latency.window.percentiles(),
            **self._usage.sample(),
            **self.thermal.read().stats(),
            "uptime_s": round(time.time() - self._started, 1),
            "timestamp": time.time(),
        }


# -- Prometheus ---------------------------------------------------------------------------------

#: stage counters: key in Counters -> (metric name without `_total`, HELP)
STAGE_COUNTERS = {
    "frames_in": ("aiotedge_stage_received_frames",
                  "Frames (photos or activations) the stage took from the broker, refused ones "
                  "included."),
    "frames_out": ("aiotedge_stage_sent_frames",
                   "Results the stage passed on: activations for the next stage, or "
                   "predictions."),
    "rejected": ("aiotedge_stage_rejected_frames",
                 "Frames refused as unusable, each reported on the pipeline's errors topic."),
    "dropped": ("aiotedge_stage_dropped_frames",
                "Frames dropped unprocessed because the queue was full (QoS 0 only)."),
    "duplicates": ("aiotedge_stage_duplicate_frames",
                   "Repeats of a frame attempt already handled (broker redeliveries), dropped."),
    "bytes_in": ("aiotedge_stage_received_bytes", "Bytes of the frames the stage took."),
    "bytes_out": ("aiotedge_stage_sent_bytes", "Bytes of the results the stage published."),
    "chain_errors": ("aiotedge_stage_chain_errors",
                     "Online neighbours found not to fit this stage (segments of another split, "
                     "or a copy of the stage outside its share group), each reported on the "
                     "pipeline's errors topic."),
    "missed": ("aiotedge_stage_missed_frames",
               "Stage 0: frame numbers of a source that never came (a gap in its seq: lost "
               "before stage 0, at the broker's queue limit say), counted when a later one "
               "came; minus arrived_late, the frames lost."),
    "arrived_late": ("aiotedge_stage_late_frames",
                     "Stage 0: frames counted missed that came after all (a camera's resend)."),
}
#: the stage's histograms: NodeStats attribute -> (metric name, HELP)
STAGE_TIMINGS = {
    "inference": ("aiotedge_stage_inference_seconds",
                  "Time the stage's segment took to run, per frame."),
    "service": ("aiotedge_stage_service_seconds",
                "Time the inference worker spent per frame (decoding, inference, encoding, "
                "publishing): its inverse is the most frames per second the stage can serve."),
    "latency": ("aiotedge_stage_latency_seconds",
                "From capture at the camera to this stage's output (compares the boards' clocks: "
                "keep them in sync)."),
}
#: what a camera counts itself (Camera.counters; what its source read and dropped comes from
#: the source's reader): key -> (metric name without `_total`, HELP)
CAMERA_COUNTERS = {
    "published": ("aiotedge_camera_published_frames",
                  "Frames the camera published into stage 0 (not counting resends)."),
    "answered": ("aiotedge_camera_answered_frames", "Frames whose prediction came back."),
    "rejected": ("aiotedge_camera_rejected_frames",
                 "Frames a stage refused (an error event came back)."),
    "unanswered": ("aiotedge_camera_unanswered_frames",
                   "Frames given up without a result after every attempt."),
    "resent": ("aiotedge_camera_resent_frames",
               "Frames sent again because no result came within frame_timeout."),
    "refused_by_broker": ("aiotedge_camera_refused_frames",
                          "Frames the broker refused (its ACL)."),
    "unusable": ("aiotedge_camera_unusable_frames",
                 "Pictures the camera could not prepare (not sent; each logged)."),
}


class StatsReporter:
    """Publishes a node's retained stats every `interval` seconds (0: never) on a thread of its
    own, and once more at `stop`, after any publish the thread had begun: the broker retains
    the last stats it gets, so an older snapshot must never follow the final one."""

    def __init__(self, publish: Callable[[], object], interval: float) -> None:
        self._publish = publish
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats", daemon=True)

    def start(self) -> None:
        if self._interval > 0:
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._publish()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self._publish()


@dataclass(frozen=True)
class Metric:
    """One metric family to expose, free of prometheus_client (an optional extra)."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    value: float | HistogramCounts
    #: labels of this metric only, besides the node's (pipeline, stage, node)
    labels: tuple[tuple[str, str], ...] = ()


def counter_metrics(counters: Mapping[str, int],
                    names: Mapping[str, tuple[str, str]]) -> Iterator[Metric]:
    for key, (name, text) in names.items():
        yield Metric(name, "counter", text, counters.get(key, 0))


def stage_metrics(stats: NodeStats, info: Mapping[str, str], *, queued: int, connected: bool,
                  refused: int, unrouted: int, reconnects: int,
                  broker_dropped: int | None = None) -> list[Metric]:
    """A stage's metric families; reads only (no window of the stats message moves).

    `info`: what the stage runs (version, model, manifest), as labels of a constant 1.
    `broker_dropped`: the broker's own count of dropped messages, where the stage follows it.
    """
    metrics = list(counter_metrics(stats.counters.snapshot(), STAGE_COUNTERS))
    metrics += [
        Metric("aiotedge_stage_info", "gauge",
               "What the stage runs: aiotedge version, model file, manifest sha256 (always 1).",
               1, tuple(info.items())),
        Metric("aiotedge_stage_refused_publishes", "counter",
               "Results the broker refused (its ACL); their input is acknowledged all the same.",
               refused),
        Metric("aiotedge_stage_unrouted_publishes", "counter",
               "QoS 1 results no subscriber took (PUBACK 0x10).", unrouted),
        Metric("aiotedge_stage_queued_frames", "gauge",
               "Frames received and waiting for the inference worker.", queued),
    ]
    metrics += [Metric(name, "histogram", text, getattr(stats, attribute).histogram())
                for attribute, (name, text) in STAGE_TIMINGS.items()]
    return (metrics + broker_metrics(connected, reconnects, broker_dropped)
            + thermal_metrics(stats.thermal.read()))


def camera_metrics(counters: Mapping[str, int], *, in_flight: int, connected: bool,
                   reconnects: int, thermal: ThermalReading) -> list[Metric]:
    """A camera's metric families, from its Camera.counters."""
    return [
        *counter_metrics(counters, CAMERA_COUNTERS),
        Metric("aiotedge_camera_in_flight_frames", "gauge",
               "Frames published and still waiting for their result.", in_flight),
        *broker_metrics(connected, reconnects),
        *thermal_metrics(thermal),
    ]


def thermal_metrics(reading: ThermalReading) -> list[Metric]:
    """The board's CPU temperature and the firmware's throttling, those this machine has."""
    metrics = []
    if reading.cpu_temp_c is not None:
        metrics.append(Metric("aiotedge_board_cpu_temperature_celsius", "gauge",
                              "The CPU's temperature (the kernel's thermal zone of the CPU).",
                              reading.cpu_temp_c))
    for since_boot, name, text in (
        (False, "aiotedge_board_throttled", "1 while the firmware reports the condition now "
                                             "(Raspberry Pi: get_throttled), else 0."),
        (True, "aiotedge_board_throttled_since_boot",
         "1 when the firmware has reported the condition since the board booted, else 0."),
    ):
        metrics += [Metric(name, "gauge", text, int(on), (("condition", condition),))
                    for condition, on in reading.conditions(since_boot).items()]
    return metrics


def broker_metrics(connected: bool, reconnects: int,
                   dropped: int | None = None) -> list[Metric]:
    metrics = [
        Metric("aiotedge_broker_connected", "gauge",
               "1 while the node is connected to the broker, else 0.", int(connected)),
        Metric("aiotedge_broker_reconnects", "counter",
               "Connections to the broker after the first one (broker restarts, network loss).",
               reconnects),
    ]
    if dropped is not None:
        metrics.append(Metric(
            "aiotedge_broker_dropped_messages", "counter",
            "Messages the broker dropped at its queue limits since it started, QoS 1 ones too "
            "($SYS/broker/publish/messages/dropped, as mosquitto publishes it).", dropped))
    return metrics


def serve_prometheus(stats: StatsConfig, source: str, labels: Mapping[str, str],
                     collect: Callable[[], Iterable[Metric]]) -> None:
    """Expose `collect()`'s metrics at http://address:port/metrics (needs the `metrics` extra),
    each labelled with `labels` (pipeline, stage, node), beside prometheus_client's own
    process metrics (CPU seconds, resident memory, start time: not repeated here).

    Called before the node connects, so that a port in use stops it with the keys to fix.
    """
    import_extra("prometheus_client", extra="metrics",
                 feature=f"{source}: key 'stats.prometheus_port'")
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    class _Collector:
        def collect(self):
            families = {}  # metrics of one name (a label apart) are one family
            for metric in collect():
                names = [*labels, *(name for name, _ in metric.labels)]
                values = [*labels.values(), *(value for _, value in metric.labels)]
                if isinstance(metric.value, HistogramCounts):
                    family = HistogramMetricFamily(metric.name, metric.help, labels=names)
                    family.add_metric(
                        values, [(_bound(b), c) for b, c in metric.value.buckets],
                        metric.value.total)
                else:
                    kind = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
                    family = families.get(metric.name) or kind(metric.name, metric.help,
                                                               labels=names)
                    family.add_metric(values, metric.value)
                families[metric.name] = family
            yield from families.values()

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(_Collector())
    address, port = stats.prometheus_address, stats.prometheus_port
    try:
        start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"{source}: keys 'stats.prometheus_address' and 'stats.prometheus_port': "
            f"cannot listen on {address}:{port}: {exc.strerror}"
        ) from exc
    log.info("Prometheus metrics on http://%s:%d/metrics", address, port)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
