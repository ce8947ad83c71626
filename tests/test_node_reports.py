"""What nodes report: stats snapshots and Prometheus text (checked with promtool)."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import urllib.request

import pytest

from aiotedge.config.sections import StatsConfig
from aiotedge.nodes.mqtt.broker import free_port
from aiotedge.nodes.observe.metrics import (
    LatencyWindow,
    NodeStats,
    StatsReporter,
    Timing,
    camera_metrics,
    serve_prometheus,
    stage_metrics,
)
from aiotedge.nodes.observe.thermal import ThermalReading


def test_the_stats_published_at_stop_are_the_last_ones():
    callers: list[str] = []
    ticked = threading.Event()

    def publish() -> None:
        callers.append(threading.current_thread().name)
        ticked.set()

    reporter = StatsReporter(publish, interval=0.01)
    reporter.start()
    assert ticked.wait(10), "the reporter never published"
    reporter.stop()
    assert callers[-1] == threading.current_thread().name  # the final stats, from stop()
    assert set(callers[:-1]) == {"stats"}  # the periodic ones, from the reporter's thread


def test_without_an_interval_the_stats_are_published_at_stop_only():
    callers: list[str] = []
    reporter = StatsReporter(lambda: callers.append("published"), interval=0)
    reporter.start()
    reporter.stop()
    assert callers == ["published"]


def test_latency_percentiles_come_from_the_recent_window():
    window = LatencyWindow(size=100)
    assert window.percentiles() == {"p50": None, "p99": None}
    for value in range(1000):  # only the last 100 (900..999) count
        window.add(float(value))
    assert window.percentiles() == {"p50": 949.5, "p99": 998.01}


def test_a_snapshot_has_every_counter_even_before_any_frame():
    snapshot = NodeStats().snapshot(queue_depth=0)
    for name in ("frames_in", "frames_out", "rejected", "dropped", "duplicates"):
        assert snapshot[name] == 0
    assert snapshot["rss_mb"] > 0
    assert snapshot["fps"] == 0
    assert snapshot["inference_ms"] == {"p50": None, "p99": None}


def test_a_timing_feeds_both_its_window_and_its_histogram():
    timing = Timing(buckets=(0.01, 0.1))
    for seconds in (0.005, 0.01, 0.05, 2.0):
        timing.add(seconds)
    assert timing.window.percentiles()["p50"] == 30.0
    counts = timing.histogram()
    assert counts.buckets == ((0.01, 2), (0.1, 3), (float("inf"), 4))
    assert (counts.count, counts.total) == (4, pytest.approx(2.065))


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def promtool_problems(text: str) -> str:
    """What `promtool check metrics` says of an exposition (empty: nothing)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (sudo apt-get install prometheus; make test "
                    "installs it)")
    checked = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                             capture_output=True, timeout=60, check=False)
    return (checked.stdout + checked.stderr).strip()


@pytest.fixture
def stage_endpoint():
    """A stage's Prometheus endpoint on a free port, over NodeStats with a few frames."""
    pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
    stats = NodeStats()
    stats.counters.add("frames_in", 7)
    stats.counters.add("frames_out", 6)
    stats.inference.add(0.0125)
    stats.latency.add(0.2)
    port = free_port()
    info = {"version": "0.1.0", "model": "net.tflite", "manifest": "ab" * 32}
    serve_prometheus(
        StatsConfig(prometheus_port=port), "test",
        {"pipeline": "garden", "stage": "3", "node": "pi3"},
        lambda: stage_metrics(stats, info, queued=2, connected=True, refused=0, unrouted=1,
                              reconnects=4))
    return stats, port


def test_stage_metrics_follow_prometheus_conventions(stage_endpoint):
    _, port = stage_endpoint
    text = scrape(port)
    assert promtool_problems(text) == ""
    labels = 'node="pi3",pipeline="garden",stage="3"'
    assert f"aiotedge_stage_received_frames_total{{{labels}}} 7.0" in text
    assert f"aiotedge_stage_queued_frames{{{labels}}} 2.0" in text
    assert f'aiotedge_stage_inference_seconds_bucket{{le="0.025",{labels}}} 1.0' in text
    assert f"aiotedge_stage_latency_seconds_count{{{labels}}} 1.0" in text
    assert f"aiotedge_broker_reconnects_total{{{labels}}} 4.0" in text
    assert 'manifest="' + "ab" * 32 + '",model="net.tflite"' in text
    assert "process_resident_memory_bytes" in text  # prometheus_client's, not repeated by us
    for unit in ("_ms", "_mb", "percent", "uptime"):
        assert not re.search(rf"^aiotedge_\w*{unit}", text, re.MULTILINE), unit
    for line in text.splitlines():
        if line.startswith("# HELP aiotedge_"):
            assert len(line.split(" ", 3)[3]) > 20, line  # says what it counts


def test_scraping_leaves_the_stats_message_windows_alone(stage_endpoint):
    stats, port = stage_endpoint
    stats.snapshot()
    stats.counters.add("frames_out", 5)
    scrape(port)
    scrape(port)
    assert stats.snapshot()["fps"] > 0  # the 5 frames count since the previous message


def test_camera_metrics_follow_prometheus_conventions():
    pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
    counters = {"published": 5, "answered": 4, "resent": 1}
    port = free_port()
    serve_prometheus(StatsConfig(prometheus_port=port), "test",
                     {"pipeline": "garden", "node": "cam0"},
                     lambda: camera_metrics(counters, in_flight=1, connected=False,
                                            reconnects=0, thermal=ThermalReading(None, None)))
    text = scrape(port)
    assert promtool_problems(text) == ""
    assert 'aiotedge_camera_answered_frames_total{node="cam0",pipeline="garden"} 4.0' in text
    assert 'aiotedge_camera_unanswered_frames_total{node="cam0",pipeline="garden"} 0.0' in text
    assert 'aiotedge_broker_connected{node="cam0",pipeline="garden"} 0.0' in text
