"""Delivery guarantees against a real mosquitto: replicas, crashes, restarts, broker loss."""

from __future__ import annotations

import json

import pytest

from aiotedge.config.schema import StatsConfig
from aiotedge.nodes.local import LocalPipeline
from aiotedge.nodes.status import collect_status
from tests.conftest import wait_all_online, whole_model_top

FRAMES = 24


@pytest.fixture(scope="module")
def photos(generated_frames) -> list[tuple[str, bytes]]:
    return generated_frames


@pytest.fixture(scope="module")
def expected(split3, photos):
    return {name: whole_model_top(split3, data) for name, data in photos}


def test_two_replicas_share_a_stage_and_no_frame_is_processed_twice(
    broker, split3, photos, expected
):
    with LocalPipeline(split3, broker=broker.address, replicas={1: 2}) as pipeline:
        results = list(pipeline.predict(photos, frames=FRAMES, in_flight=6))
    # stopping publishes each node's final stats (retained)
    stats = {node: info["stats"] for node, info in
             collect_status(broker.address, pipeline.topics).items()}
    assert sorted({p.seq for _, p in results}) == list(range(FRAMES))
    assert all(p.top == expected[name] for name, p in results)
    replicas = [stats["local-stage1-r0"], stats["local-stage1-r1"]]
    assert all(r["frames_out"] > 0 for r in replicas), replicas
    assert sum(r["frames_out"] for r in replicas) == FRAMES
    assert sum(r["duplicates"] for r in replicas) == 0
    assert stats["local-stage2"]["frames_in"] == FRAMES


@pytest.mark.parametrize("kill", [True, False], ids=["SIGKILL", "SIGTERM"])
def test_a_stopped_stage_loses_no_qos1_frame(broker, split3, photos, expected, kill):
    seqs = set()
    with LocalPipeline(split3, broker=broker.address) as pipeline:
        for count, (name, prediction) in enumerate(
            pipeline.predict(photos, frames=FRAMES, in_flight=8), start=1
        ):
            assert prediction.top == expected[name]
            seqs.add(prediction.seq)
            if count == 3:  # frames are queued at and in front of stage 1 now
                pipeline.restart_stage("local-stage1", kill=kill)
    assert seqs == set(range(FRAMES))


def test_stages_reconnect_after_the_broker_restarts(broker, split3, photos, expected):
    with LocalPipeline(split3, broker=broker.address) as pipeline:
        before = dict(pipeline.predict(photos))
        broker.stop(kill=True)
        broker.start()
        wait_all_online(broker, pipeline.nodes)
        after = dict(pipeline.predict(photos))
    assert {n: p.top for n, p in before.items()} == expected
    assert {n: p.top for n, p in after.items()} == expected


def test_stats_are_retained_per_node(broker, split3, photos):
    with LocalPipeline(split3, broker=broker.address, stats=StatsConfig(interval=0.2)
                       ) as pipeline:
        list(pipeline.predict(photos))
    status = collect_status(broker.address, pipeline.topics)
    assert set(status) == {"local-stage0", "local-stage1", "local-stage2"}
    for node, info in status.items():
        assert info["availability"] == "offline", node
        stats = info["stats"]
        assert stats["frames_in"] == stats["frames_out"] == len(photos), f"{node}: {stats}"
        assert stats["inference_ms"]["p50"] > 0
        assert stats["rss_mb"] > 0
        json.dumps(stats)
