"""The replicating planner is exact: brute force over every plan is the judge.

Costs are small integers (in ms and kB on an 8 Mbit/s link, so transfers are whole ms too):
sums are then exact, and the planner's best plan must rank exactly as the best of all plans.
"""

from __future__ import annotations

from itertools import combinations, product

import numpy as np
import pytest
from aiotedge_converter.cluster import (
    BoardKind,
    Chain,
    Cluster,
    ClusterPlan,
    Links,
    PlannedStage,
    predict,
)
from aiotedge_converter.errors import ConverterError
from aiotedge_converter.replicate import Limits, best_plan, plan_cluster, rank

CODECS = (None, "zstd")


def integers(rng: np.random.Generator, low: int, high: int, count: int) -> tuple[float, ...]:
    return tuple(float(v) for v in rng.integers(low, high, count))


def random_kind(rng: np.random.Generator, name: str, pieces: int, speed: int) -> BoardKind:
    return BoardKind(
        name=name,
        invoke=tuple(speed * v for v in integers(rng, 1, 30, pieces)),
        set_input=integers(rng, 0, 3, pieces),
        get_output=integers(rng, 0, 3, pieces),
        take={codec: integers(rng, 0, 4 + 3 * bool(codec), pieces + 1) for codec in CODECS},
        send={codec: integers(rng, 0, 4 + 3 * bool(codec), pieces + 1) for codec in CODECS},
    )


def random_cluster(rng: np.random.Generator, kinds: int) -> Cluster:
    pieces = int(rng.integers(1, 6))
    raw = tuple(1000 * int(v) for v in rng.integers(1, 40, pieces + 1))
    packed = tuple(min(r, 1000 * int(v)) for r, v in zip(raw, rng.integers(1, 30, pieces + 1),
                                                          strict=True))
    chain = Chain(
        first_ops=tuple(range(pieces)),
        last_ops=tuple(range(pieces)),
        message_bytes={None: raw, "zstd": (raw[0], *packed[1:-1], raw[-1])},
        forward_ms={codec: integers(rng, 0, 3, pieces + 1) for codec in CODECS},
        edge_ms=float(rng.integers(0, 3)),
    )
    counts = tuple(int(c) for c in rng.integers(1, 3 if kinds > 1 else 5, kinds))
    links = Links(*(rng.choice([None, 8.0, 16.0]) for _ in range(2)))
    return Cluster(chain, tuple(random_kind(rng, f"k{k}", pieces, k + 1) for k in range(kinds)),
                   counts, links)


def all_plans(cluster: Cluster, codecs=CODECS, replicas: bool = True):
    """Every plan there is: cuts, a group of boards per stage, a codec per cut."""
    pieces, counts = cluster.chain.pieces, cluster.counts
    groups = [g for g in product(*(range(n + 1) for n in counts))
              if sum(g) > 0 and (replicas or sum(g) == 1)]
    for cut_count in range(pieces):
        for cuts in combinations(range(pieces - 1), cut_count):
            spans = list(zip((0, *(c + 1 for c in cuts)), (*cuts, pieces - 1), strict=True))
            for chosen in product(groups, repeat=len(spans)):
                used = [sum(g[k] for g in chosen) for k in range(len(counts))]
                if any(u > n for u, n in zip(used, counts, strict=True)):
                    continue
                for coded in product(codecs, repeat=len(cuts)):
                    yield ClusterPlan(tuple(
                        PlannedStage(first, last, group, codec)
                        for (first, last), group, codec
                        in zip(spans, chosen, (*coded, None), strict=True)))


def brute_force(cluster: Cluster, limits: Limits | None = None, codecs=CODECS,
                stages: int | None = None, replicas: bool = True):
    limits = limits or Limits()
    best = None
    for plan in all_plans(cluster, codecs, replicas):
        forecast = predict(plan, cluster)
        if limits.max_stages is not None and len(plan.stages) > limits.max_stages:
            continue
        if limits.max_latency_ms is not None and forecast.latency_ms > limits.max_latency_ms:
            continue
        if stages is not None and len(plan.stages) != stages:
            continue
        key = rank(forecast, plan)
        best = key if best is None or key < best else best
    return best


@pytest.mark.parametrize("kinds", [1, 2], ids=["identical boards", "two kinds of board"])
def test_the_plan_is_the_best_of_all_plans(kinds):
    rng = np.random.default_rng(100 + kinds)
    checked = 0
    for _ in range(60):
        cluster = random_cluster(rng, kinds)
        limits = Limits(
            max_stages=int(rng.integers(1, 4)) if rng.random() < 0.3 else None,
            max_latency_ms=float(rng.integers(40, 200)) if rng.random() < 0.3 else None,
        )
        expected = brute_force(cluster, limits)
        if expected is None:
            with pytest.raises(ConverterError, match="no plan"):
                best_plan(cluster, limits, CODECS)
            continue
        plan = best_plan(cluster, limits, CODECS)
        assert rank(predict(plan, cluster), plan) == expected, (cluster, limits)
        checked += 1
    assert checked > 40


def test_the_pure_pipeline_is_the_best_with_one_board_a_stage():
    rng = np.random.default_rng(7)
    for _ in range(40):
        cluster = random_cluster(rng, 1)
        stages = min(cluster.boards, cluster.chain.pieces)
        plan = best_plan(cluster, stages=stages, replicas=False)
        assert len(plan.stages) == stages and all(s.boards == 1 for s in plan.stages)
        expected = brute_force(cluster, codecs=(None,), stages=stages, replicas=False)
        assert rank(predict(plan, cluster), plan) == expected


def two_piece_cluster(board_mbps: float | None, broker_mbps: float | None) -> Cluster:
    """Two pieces and two boards, each 10 ms at one piece and 100 ms at the other (an
    accelerator suits one kind of layer): a pipeline beats replicas. The cut's tensor is 40 kB,
    10 kB in zstd, which costs 1 ms more at each end."""
    def kind(name: str, invoke: tuple[float, float]) -> BoardKind:
        return BoardKind(name, invoke, (0.0, 0.0), (0.0, 0.0),
                         take={None: (0.0, 1.0, 0.0), "zstd": (0.0, 2.0, 0.0)},
                         send={None: (0.0, 1.0, 0.0), "zstd": (0.0, 2.0, 0.0)})

    chain = Chain((0, 1), (0, 1), {None: (1000, 40_000, 1000), "zstd": (1000, 10_000, 1000)})
    return Cluster(chain, (kind("a", (10.0, 100.0)), kind("b", (100.0, 10.0))), (1, 1),
                   Links(board_mbps, broker_mbps))


def test_a_codec_is_chosen_only_when_a_link_is_the_bottleneck():
    # No link limit: the CPU is the bottleneck (11 ms a stage), a codec would only add to it.
    fast = plan_cluster(two_piece_cluster(None, None))
    assert [(s.replicas, s.codec) for s in fast.chosen[0].stages] == [((1, 0), None),
                                                                      ((0, 1), None)]
    assert fast.chosen[1].frames_per_s == pytest.approx(1000 / 11)
    # An 8 Mbit/s broker link takes 42 ms per frame raw, 12 ms with zstd on the cut.
    slow = plan_cluster(two_piece_cluster(None, 8.0))
    plan, forecast = slow.chosen
    assert [s.codec for s in plan.stages] == ["zstd", None]
    assert forecast.frames_per_s == pytest.approx(1000 / 12)
    assert slow.pipeline[1].frames_per_s == pytest.approx(1000 / 42)  # raw: the broker link
    assert slow.pipeline[1].bottleneck == "broker link"
    assert slow.replicas[1].frames_per_s == pytest.approx(2 * 1000 / 110)


def test_replicas_take_turns_so_the_slowest_sets_the_pace():
    fast = BoardKind("pi4", (10.0,), (0.0,), (0.0,), {None: (0.0, 0.0)}, {None: (0.0, 0.0)})
    slow = BoardKind("pi3", (30.0,), (0.0,), (0.0,), {None: (0.0, 0.0)}, {None: (0.0, 0.0)})
    cluster = Cluster(Chain((0,), (0,), {None: (1000, 1000)}), (fast, slow), (2, 1))
    both = predict(ClusterPlan((PlannedStage(0, 0, (2, 1)),)), cluster)
    assert both.frames_per_s == pytest.approx(3 * 1000 / 30)
    assert both.latency_ms == 30
    fast_only = predict(ClusterPlan((PlannedStage(0, 0, (2, 0)),)), cluster)
    assert fast_only.frames_per_s == pytest.approx(2 * 1000 / 10)
    chosen = plan_cluster(cluster).chosen[0]
    assert chosen.stages[0].replicas == (2, 0)  # the Pi 3 would slow the stage down


def test_the_broker_link_carries_every_message_of_a_frame_once_each_way():
    cluster = two_piece_cluster(None, 8.0)
    forecast = predict(ClusterPlan((PlannedStage(0, 0, (1, 0)), PlannedStage(1, 1, (0, 1)))),
                       cluster)
    assert forecast.frame_bytes == 1000 + 40_000 + 1000
    assert forecast.broker_limit == pytest.approx(1000 / 42)
    assert forecast.bottleneck == "broker link"
