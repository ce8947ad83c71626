"""What a Pi owner watches: the CPU's temperature and the firmware's throttling, in the stats,
Prometheus and `aiotedge status`; read from a fake sysfs tree (this machine has neither)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiotedge.config.sections import StatsConfig
from aiotedge.contracts.events import NodeInfo
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.daemons.status import format_status
from aiotedge.nodes.mqtt.broker import free_port
from aiotedge.nodes.observe.health import PipelineView
from aiotedge.nodes.observe.metrics import NodeStats, camera_metrics, serve_prometheus
from aiotedge.nodes.observe.thermal import FIRMWARE_THROTTLED, Thermal, ThermalReading
from tests.test_node_reports import promtool_problems, scrape


def fake_sysfs(root: Path, zones: dict[int, tuple[str, str]], throttled: str | None) -> Path:
    """/sys with thermal zones (number -> (type, temp)) and the Pi firmware's get_throttled."""
    for number, (kind, temp) in zones.items():
        zone = root / "class" / "thermal" / f"thermal_zone{number}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(temp + "\n")
    if throttled is not None:
        path = root / FIRMWARE_THROTTLED
        path.parent.mkdir(parents=True)
        path.write_text(throttled + "\n")
    return root


@pytest.fixture
def pi(tmp_path) -> Thermal:
    """A Raspberry Pi at 61.8 °C, under-voltage and throttled now, capped since boot too."""
    return Thermal(fake_sysfs(tmp_path, {0: ("cpu-thermal", "61812")}, "70005"))


def test_a_pi_says_its_cpu_temperature_and_its_throttling(pi):
    reading = pi.read()
    assert reading == ThermalReading(cpu_temp_c=61.8, throttled=0x70005)
    assert reading.stats() == {
        "cpu_temp_c": 61.8, "throttled": "0x70005",
        "throttled_now": ["under_voltage", "throttled"],
        "throttled_since_boot": ["under_voltage", "frequency_capped", "throttled"],
    }


def test_the_cpu_zone_is_found_by_its_type_in_zone_order(tmp_path):
    sysfs = fake_sysfs(tmp_path, {0: ("acpitz", "27800"), 10: ("cpu_thermal", "70000"),
                                  2: ("x86_pkg_temp", "45000")}, None)
    assert Thermal(sysfs).read() == ThermalReading(cpu_temp_c=45.0, throttled=None)


def test_a_machine_without_them_reports_nothing_and_no_error(tmp_path):
    nothing = Thermal(fake_sysfs(tmp_path, {0: ("acpitz", "27800")}, None))
    assert nothing.read() == ThermalReading(None, None)
    snapshot = NodeStats(thermal=nothing).snapshot()
    assert not {"cpu_temp_c", "throttled", "throttled_now"} & set(snapshot)
    assert Thermal(tmp_path / "absent").read().stats() == {}


def test_a_file_that_cannot_be_read_now_is_left_out(tmp_path):
    sysfs = fake_sysfs(tmp_path, {0: ("cpu-thermal", "")}, "not hex")
    assert Thermal(sysfs).read() == ThermalReading(None, None)


def test_the_stats_message_carries_them(pi):
    snapshot = NodeStats(thermal=pi).snapshot(queue_depth=0)
    assert snapshot["cpu_temp_c"] == 61.8
    assert snapshot["throttled"] == "0x70005"
    assert snapshot["throttled_now"] == ["under_voltage", "throttled"]
    json.dumps(snapshot)  # as it is published


def test_prometheus_has_the_temperature_and_a_gauge_per_condition(pi):
    pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
    port = free_port()
    serve_prometheus(StatsConfig(prometheus_port=port), "test",
                     {"pipeline": "garden", "node": "cam0"},
                     lambda: camera_metrics({}, in_flight=0, connected=True, reconnects=0,
                                            thermal=pi.read()))
    text = scrape(port)
    assert promtool_problems(text) == ""
    labels = 'node="cam0",pipeline="garden"'
    assert f"aiotedge_board_cpu_temperature_celsius{{{labels}}} 61.8" in text
    assert f'aiotedge_board_throttled{{condition="under_voltage",{labels}}} 1.0' in text
    assert f'aiotedge_board_throttled{{condition="frequency_capped",{labels}}} 0.0' in text
    assert (f'aiotedge_board_throttled_since_boot{{condition="frequency_capped",{labels}}} 1.0'
            in text)
    assert text.count("# HELP aiotedge_board_throttled ") == 1  # one family, four conditions


def test_prometheus_leaves_them_out_where_the_machine_has_none(tmp_path):
    metrics = camera_metrics({}, in_flight=0, connected=True, reconnects=0,
                             thermal=Thermal(tmp_path).read())
    assert not [m for m in metrics if m.name.startswith("aiotedge_board_")]


def test_status_says_each_boards_temperature_and_who_is_throttled(pi, tmp_path):
    topics = Topics("shelf")
    spec = TensorSpec("t", (1, 4), "uint8", 0.5, 0)
    cool = Thermal(fake_sysfs(tmp_path / "cool", {0: ("cpu-thermal", "48200")}, "0"))
    retained = {}
    for name, stage, thermal in (("s0", 0, pi), ("s1", 1, cool)):
        retained[topics.availability(name)] = b"online"
        retained[topics.info(name)] = NodeInfo(name, stage, 2, "a" * 64, "net.tflite", spec,
                                               spec).to_json().encode()
        retained[topics.stats(name)] = json.dumps(
            {"stage": stage, **NodeStats(thermal=thermal).snapshot()}).encode()
    text = format_status(PipelineView.from_retained(retained, topics), "shelf")
    assert text.splitlines()[-3:] == [
        "CPU temperature: s0 62 °C, s1 48 °C",
        "THROTTLED now: s0 (under_voltage, throttled)",
        "throttled since boot: s0 (under_voltage, frequency_capped, throttled)",
    ]
