"""Choosing stages, cuts and replicas: the plan that delivers the most frames/s on N boards.

A plan cuts the model into consecutive stages and gives each stage one or more boards
(replicas, which take turns). Its frames/s is the smallest of its stages' limits (replicas /
slowest replica's time) and the broker link's (which depends on every message a frame sends),
so it is a bottleneck over stages plus a sum over cuts; a lone frame's latency is a sum too.

The optimum is found exactly by dynamic programming over (first piece of the rest, codec of
the message coming into it, boards still free of each kind). For each such state we keep the
Pareto front of what the rest of the chain can do: its frames/s limit (higher is better), the
bytes its messages put on the broker's link, its latency, boards and stages (lower is
better). Every part of the final ranking is monotone in these, so nothing a dominated choice
could lead to is lost. Ranking: most frames/s, then the shortest lone-frame latency, then the
fewest boards, then the fewest stages.

A codec on a cut costs CPU at both ends and only pays when a link is the bottleneck: plans
are first made without codecs, and with them only when the best plan's bottleneck is a link.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from itertools import product

from aiotedge_converter.cluster import (
    Cluster,
    ClusterPlan,
    Codec,
    Forecast,
    PlannedStage,
    StageCost,
    predict,
    stage_limit,
)
from aiotedge_converter.errors import ConverterError


@dataclass(frozen=True)
class Limits:
    """What a plan may not exceed; None: no bound."""

    max_stages: int | None = None
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        if self.max_stages is not None and self.max_stages < 1:
            raise ConverterError(f"--max-stages must be at least 1, got {self.max_stages}")
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            raise ConverterError(f"--max-latency-ms must be positive, got {self.max_latency_ms}")


@dataclass(frozen=True)
class _Label:
    """What the rest of a chain can do, and how (its stages)."""

    frames_per_s: float
    broker_bytes: int
    latency_ms: float
    boards: int
    stages: tuple[PlannedStage, ...]

    def dominates(self, other: _Label) -> bool:
        return (self.frames_per_s >= other.frames_per_s
                and self.broker_bytes <= other.broker_bytes
                and self.latency_ms <= other.latency_ms
                and self.boards <= other.boards
                and len(self.stages) <= len(other.stages))


def _front(labels: list[_Label]) -> tuple[_Label, ...]:
    """The labels no other label dominates; of equal ones, the first."""
    kept: list[_Label] = []
    for label in labels:
        if any(k.dominates(label) for k in kept):
            continue
        kept = [k for k in kept if not label.dominates(k)]
        kept.append(label)
    return tuple(kept)


def rank(forecast: Forecast, plan: ClusterPlan) -> tuple[float, float, int, int]:
    """Smaller is better: most frames/s, shortest latency, fewest boards, fewest stages."""
    return (-forecast.frames_per_s, forecast.latency_ms, plan.boards, len(plan.stages))


def best_plan(cluster: Cluster, limits: Limits = Limits(),
              codecs: tuple[Codec, ...] = (None,), stages: int | None = None,
              replicas: bool = True) -> ClusterPlan:
    """The best plan; `stages` fixes their number, `replicas=False` gives each one board."""
    chain, kinds = cluster.chain, len(cluster.kinds)
    pieces = chain.pieces
    max_stages = min(x for x in (limits.max_stages, stages, pieces, cluster.boards) if x)
    fixed_latency = chain.edge_ms + cluster.hop_latency_ms(0, None)
    spare_latency = (limits.max_latency_ms - fixed_latency
                     if limits.max_latency_ms is not None else float("inf"))

    @cache
    def cost(kind: int, first: int, last: int, codec_in: Codec, codec_out: Codec) -> StageCost:
        return cluster.stage_cost(kind, first, last, codec_in, codec_out)

    def groups(free: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
        """Every choice of boards for one stage (at least one) among those free."""
        for counts in product(*(range(n + 1) for n in free)):
            if sum(counts) > 0 and (replicas or sum(counts) == 1):
                yield counts

    @cache
    def rest(first: int, codec_in: Codec, free: tuple[int, ...],
             exactly: int | None) -> tuple[_Label, ...]:
        """Every non-dominated way to serve pieces first.. with the boards `free` (in
        `exactly` stages when that is given)."""
        labels = []
        for last in range(first, pieces):
            final = last == pieces - 1
            if exactly is not None and final != (exactly == 1):
                continue
            for codec_out in (None,) if final else codecs:
                for group in groups(free):
                    costs = [cost(k, first, last, codec_in, codec_out)
                             for k in range(kinds) if group[k]]
                    limit = stage_limit(sum(group), costs)
                    latency = max(c.cpu_ms for c in costs) + \
                        cluster.hop_latency_ms(last + 1, codec_out)
                    stage = PlannedStage(first, last, group, codec_out)
                    if final:
                        tails = (_Label(float("inf"), 0, 0.0, 0, ()),)
                    else:
                        left = tuple(f - g for f, g in zip(free, group, strict=True))
                        more = None if exactly is None else exactly - 1
                        tails = rest(last + 1, codec_out, left, more) if sum(left) else ()
                    out_bytes = 0 if final else chain.message_bytes[codec_out][last + 1]
                    for tail in tails:
                        label = _Label(min(limit, tail.frames_per_s),
                                       tail.broker_bytes + out_bytes,
                                       tail.latency_ms + latency,
                                       tail.boards + sum(group),
                                       (stage, *tail.stages))
                        if len(label.stages) <= max_stages and label.latency_ms <= spare_latency:
                            labels.append(label)
        return _front(labels)

    options = [ClusterPlan(label.stages) for label in rest(0, None, cluster.counts, stages)]
    if not options:
        raise ConverterError(_nothing_fits(limits, stages))
    return min(options, key=lambda plan: rank(predict(plan, cluster), plan))


def _nothing_fits(limits: Limits, stages: int | None) -> str:
    if limits.max_latency_ms is not None:
        return f"no plan keeps a lone frame within --max-latency-ms {limits.max_latency_ms:g}"
    return f"no plan of {stages} stages fits these boards and cut points"


@dataclass(frozen=True)
class Strategies:
    """The chosen plan beside the two pure ones, each with its forecast."""

    chosen: tuple[ClusterPlan, Forecast]
    pipeline: tuple[ClusterPlan, Forecast]
    replicas: tuple[ClusterPlan, Forecast]
    #: the whole model on one board (of the first kind): what "N x one board" is measured by
    alone: Forecast


def plan_cluster(cluster: Cluster, limits: Limits = Limits()) -> Strategies:
    """The best plan (a codec only where a link is its bottleneck), the best pure pipeline
    (one board per stage, as many stages as boards and cut points allow) and pure replicas
    (the whole model on every board)."""
    def forecast(plan: ClusterPlan) -> tuple[ClusterPlan, Forecast]:
        return plan, predict(plan, cluster)

    chosen = forecast(best_plan(cluster, limits))
    coded = cluster.chain.codecs
    if chosen[1].link_bound and len(coded) > 1:
        with_codecs = forecast(best_plan(cluster, limits, coded))
        if rank(with_codecs[1], with_codecs[0]) < rank(chosen[1], chosen[0]):
            chosen = with_codecs
    stages = min(cluster.boards, cluster.chain.pieces)
    pipeline = forecast(best_plan(cluster, stages=stages, replicas=False))
    whole = cluster.chain.pieces - 1
    replicas = forecast(ClusterPlan((PlannedStage(0, whole, cluster.counts),)))
    one = (1, *[0] * (len(cluster.kinds) - 1))
    alone = predict(ClusterPlan((PlannedStage(0, whole, one),)), cluster)
    return Strategies(chosen, pipeline, replicas, alone)
