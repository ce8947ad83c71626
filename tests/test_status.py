"""`aiotedge status` and the pipeline's health: which model each node runs, a node on another
split flagged, fps, latency, queue, the bottleneck, nodes that have gone summed up with their
last-seen time, the exit status, `--watch`; and the pipeline's retained availability."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from aiotedge.contracts.events import NodeInfo
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.topics import OFFLINE, ONLINE, Topics
from aiotedge.nodes.daemons.status import (
    collect_status,
    format_status,
    read_pipeline,
    status_exit,
    watch_status,
)
from aiotedge.nodes.mqtt.session import MqttSession
from aiotedge.nodes.observe.health import PipelineView

TOPICS = Topics("shelf")
SPEC = TensorSpec("t", (1, 4), "uint8", 0.5, 0)
SPLIT = "a" * 64
OTHER_SPLIT = "b" * 64
NOW = 1_800_000_000.0


def info(node: str, stage: int, manifest: str = SPLIT, stages: int = 3) -> bytes:
    return NodeInfo(node, stage, stages, manifest, "net.tflite", SPEC, SPEC).to_json().encode()


def stats(stage: int, service_ms: float, *, seen: float = NOW, fps: float = 2.0) -> bytes:
    return json.dumps({
        "stage": stage, "fps": fps, "frames_in": 40, "frames_out": 40, "rejected": 0,
        "dropped": 0, "queue_depth": 1, "inference_ms": {"p50": service_ms * 0.8, "p99": 9.0},
        "service_ms": {"p50": service_ms, "p99": 9.0},
        "latency_ms": {"p50": 120.0, "p99": 180.0}, "timestamp": seen}).encode()


def node(name: str, state: str, stage: int, service_ms: float = 5.0, **kwargs) -> dict:
    """The retained messages one stage leaves on the broker."""
    seen = kwargs.pop("seen", NOW)
    return {TOPICS.availability(name): state.encode(),
            TOPICS.info(name): info(name, stage, **kwargs),
            TOPICS.stats(name): stats(stage, service_ms, seen=seen)}


def healthy() -> dict:
    """Three stages, stage 1 with two replicas (the slowest stage, shared), and a camera."""
    return {**node("s0", ONLINE, 0, 10.0), **node("s1a", ONLINE, 1, 50.0),
            **node("s1b", ONLINE, 1, 50.0), **node("s2", ONLINE, 2, 30.0),
            TOPICS.availability("cam0"): b"online"}


def test_a_healthy_pipeline_with_replicas_and_its_bottleneck():
    view = PipelineView.from_retained(healthy(), TOPICS)
    assert view.available and view.problems() == [] and status_exit(view) == 0
    stage, capacity = view.bottleneck
    assert (stage, round(capacity)) == (2, 33)  # stage 1's replicas serve 40 fps together
    text = format_status(view, "shelf", now=NOW + 5)
    summary, header, *rows, legend = text.splitlines()
    assert summary == ("pipeline shelf: available; 3 stages of net.tflite (manifest "
                       "aaaaaaaaaaaa); bottleneck: stage 2, 33.3 fps at most")
    assert header.split() == ["node", "state", "stage", "fps", "latency", "infer", "queue", "in",
                              "out", "rej", "drop", "age"]
    assert [row.split()[:3] for row in rows] == [
        ["s0", "online", "0"], ["s1a", "online", "1"], ["s1b", "online", "1"],
        ["s2", "online", "2"], ["cam0", "online"]]
    assert rows[0].split() == ["s0", "online", "0", "2.0", "120/180", "8.0", "1", "40", "40",
                               "0", "0", "5", "s"]  # the model is the summary's, once
    assert legend.startswith("latency p50/p99 and infer p50 in ms")


def test_nodes_that_have_gone_are_summed_up_with_when_they_were_last_seen():
    retained = {**healthy(), **node("s2-old", OFFLINE, 2, seen=NOW - 3 * 3600),
                TOPICS.availability("cam9"): b"offline"}
    view = PipelineView.from_retained(retained, TOPICS)
    assert status_exit(view) == 0  # replaced, not missing
    text = format_status(view, "shelf", now=NOW)
    assert "s2-old" not in "\n".join(text.splitlines()[:-1])
    assert text.splitlines()[-1] == "gone: s2-old (3 h ago), cam9 (never seen)"


def test_a_stage_nobody_serves_and_a_board_on_another_split_are_problems():
    retained = {**node("s0", ONLINE, 0), **node("s1", OFFLINE, 1, seen=NOW - 90),
                **node("s2", ONLINE, 2, manifest=OTHER_SPLIT)}
    retained |= node("s3", ONLINE, 0)  # a replica of stage 0 on the pipeline's split
    view = PipelineView.from_retained(retained, TOPICS)
    assert not view.available and status_exit(view) == 1
    text = format_status(view, "shelf", now=NOW)
    assert text.splitlines()[0].startswith("pipeline shelf: NOT available")
    s1 = next(line for line in text.splitlines() if line.startswith("s1 "))
    assert s1.split()[:3] == ["s1", "offline", "1"] and s1.endswith("2 min")
    s2 = next(line for line in text.splitlines() if line.startswith("s2 "))
    assert s2.startswith("s2 (OTHER SPLIT) online")
    assert text.splitlines()[-2:] == [
        "problem: stage 1 has no node online",
        "problem: s2 runs manifest bbbbbbbbbbbb, the others aaaaaaaaaaaa: a board with another "
        "split"]


def test_an_empty_pipeline_is_a_problem():
    view = PipelineView()
    assert status_exit(view) == 1
    assert format_status(view, "nobody").splitlines()[-1] == "no node has reported on this pipeline"


# -- against a real broker ----------------------------------------------------------------------


def publish_retained(broker, retained: dict[str, bytes]) -> None:
    session = MqttSession(broker.address, "retained-writer")
    session.start()
    assert session.wait_connected(10)
    for topic, payload in retained.items():
        session.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    session.stop()


def status_command(broker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiotedge", "status", "--broker", str(broker.address),
         "--pipeline", "shelf", *args], capture_output=True, text=True, timeout=60, check=False)


def test_status_reads_what_the_nodes_left_on_the_broker(broker):
    publish_retained(broker, healthy())
    view = read_pipeline(broker.address, TOPICS)
    assert sorted(view.nodes) == ["cam0", "s0", "s1a", "s1b", "s2"]
    nodes = collect_status(broker.address, TOPICS)
    assert nodes["s1a"]["info"]["manifest"] == SPLIT
    assert nodes["s1a"]["availability"] == "online"
    done = status_command(broker)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pipeline shelf: available; 3 stages of net.tflite")
    assert done.stderr == ""
    as_json = status_command(broker, "--json")
    assert json.loads(as_json.stdout)["s2"]["stats"]["fps"] == 2.0
    publish_retained(broker, {TOPICS.availability("s2"): b"offline"})
    done = status_command(broker)
    assert done.returncode == 1
    assert "problem: stage 2 has no node online" in done.stdout


def test_status_watch_draws_the_pipeline_and_exits_with_its_health(broker, capsys):
    pytest.importorskip("rich", reason="the status extra is not installed")
    publish_retained(broker, {**healthy(), TOPICS.availability("s0"): b"offline"})
    stop = threading.Event()
    stop.set()  # one screen, then Ctrl-C
    assert watch_status(broker.address, TOPICS, 1.0, stop) == 1
    screen = capsys.readouterr().out
    assert "pipeline shelf: NOT available" in screen
    assert "problem: stage 0 has no node online" in screen
    assert "s1b" in screen


def busy_board(name: str, state: str, stage: int, seen: float) -> dict:
    """A board that has run for days: counts in the millions, slow figures, a long name."""
    retained = node(name, state, stage, seen=seen)
    retained[TOPICS.stats(name)] = json.dumps({
        "stage": stage, "fps": 12.3, "frames_in": 1_234_567, "frames_out": 1_234_210,
        "rejected": 12, "dropped": 345, "queue_depth": 16,
        "inference_ms": {"p50": 123.4, "p99": 150.0}, "latency_ms": {"p50": 1234, "p99": 5678},
        "timestamp": seen}).encode()
    return retained


@pytest.mark.parametrize("width", [80, 140])
def test_status_watch_shows_every_figure_whole_at_80_and_140_columns(broker, capsys,
                                                                     monkeypatch, width):
    """rich's Console takes the terminal's width from COLUMNS when it is not a terminal."""
    pytest.importorskip("rich", reason="the status extra is not installed")
    import time

    seen = time.time() - 12 * 60
    retained = {**busy_board("stage0-pi4-a", ONLINE, 0, seen),
                **busy_board("stage1-pi4-b", "offline", 1, seen),
                **busy_board("stage2-pi4-c", ONLINE, 2, seen)}
    publish_retained(broker, retained)
    monkeypatch.setenv("COLUMNS", str(width))
    stop = threading.Event()
    stop.set()
    watch_status(broker.address, TOPICS, 1.0, stop)
    screen = capsys.readouterr().out
    table = [line.split() for line in screen.splitlines()]
    assert ["node", "state", "stage", "fps", "latency", "infer", "queue", "in", "out", "rej",
            "drop", "age"] in table
    for name, state in (("stage0-pi4-a", "online"), ("stage1-pi4-b", "offline"),
                        ("stage2-pi4-c", "online")):
        assert [name, state, name[5], "12.3", "1234/5678", "123.4", "16", "1.2M", "1.2M", "12",
                "345", "12", "min"] in table, screen
    assert "…" not in screen and max(len(line) for line in screen.splitlines()) <= width
    assert screen.count("net.tflite") == 1  # in the summary, not on every row
    plain = format_status(PipelineView.from_retained(retained, TOPICS), "shelf")
    table_and_legend = plain.splitlines()[1:6]  # the summary and the notes are sentences
    assert max(len(line) for line in table_and_legend) <= 80, plain
