"""What nodes report: stats snapshots, Prometheus text, `aiotedge status`, Home Assistant."""

from __future__ import annotations

import json
import urllib.request

import pytest

from aiotedge.config.schema import StatsConfig
from aiotedge.contracts.manifest import Manifest, Preprocessing, SourceModel
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.broker import free_port
from aiotedge.nodes.homeassistant import discovery_message
from aiotedge.nodes.metrics import LatencyWindow, NodeStats, serve_prometheus
from aiotedge.nodes.session import MqttSession
from aiotedge.nodes.status import collect_status, format_status


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
    assert snapshot["inference_ms"] == {"p50": None, "p99": None}


def test_prometheus_endpoint_serves_the_snapshot():
    pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
    stats = NodeStats()
    stats.counters.add("frames_in", 7)
    stats.inference_ms.add(12.5)
    port = free_port()
    serve_prometheus(StatsConfig(prometheus_port=port), "pi3",
                     lambda: stats.snapshot(queue_depth=2), "test")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'aiotedge_frames_in_total{node="pi3"} 7.0' in text
    assert 'aiotedge_queue_depth{node="pi3"} 2.0' in text
    assert 'aiotedge_inference_ms_p50{node="pi3"} 12.5' in text


def test_status_reads_retained_availability_and_stats(broker):
    topics = Topics("shelf")
    node = MqttSession(broker.address, "stage2-pi", topics.availability("stage2-pi"))
    node.start()
    assert node.wait_connected(10)
    node.set_online()
    stats = NodeStats().snapshot(queue_depth=1, stage=2)
    info = node.publish(topics.stats("stage2-pi"), json.dumps(stats), qos=1, retain=True)
    info.wait_for_publish(10)
    nodes = collect_status(broker.address, topics)
    node.stop()
    assert nodes["stage2-pi"]["availability"] == "online"
    assert nodes["stage2-pi"]["stats"]["stage"] == 2
    table = format_status(nodes)
    assert table.splitlines()[1].split()[:3] == ["stage2-pi", "online", "2"]
    assert collect_status(broker.address, topics)["stage2-pi"]["availability"] == "offline"


def test_status_of_an_empty_pipeline_says_so(broker):
    assert collect_status(broker.address, Topics("nobody")) == {}
    assert "no nodes" in format_status({})


def test_home_assistant_discovery_announces_the_prediction_sensor():
    spec = TensorSpec("x", (1, 4), "uint8", 0.5, 0)
    manifest = Manifest(SourceModel("net.tflite", "0" * 64, spec, spec, 0),
                        Preprocessing(4, 4), stages=())
    topic, payload = discovery_message(Topics("garden"), manifest, "stage4-pi5")
    config = json.loads(payload)
    assert topic == "homeassistant/sensor/aiotedge_garden/prediction/config"
    assert config["state_topic"] == "aiotedge/garden/predictions"
    assert config["availability_topic"] == "aiotedge/garden/availability/stage4-pi5"
    assert config["value_template"] == "{{ value_json.top[0].label }}"
    assert config["unique_id"] == "aiotedge_garden_prediction"
