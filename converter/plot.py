"""The pictures of `split --plot` and `plan --plot` (matplotlib).

split: per-operator cost with the cuts marked and each stage's share, one panel per plan (the
chosen one, and the balanced one when it is shown for comparison).
With MACs, each operator is a bar. With a profile, only pieces between cut points were
timed, so each piece is one bar as wide as its operators, its time spread evenly over them (the
bar's area is the piece's time), costed on the board of its stage.

plan: the chosen plan's and the pure pipeline's stages (what one replica spends per frame, the
frames/s each stage allows) beside the frames/s of the three strategies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiotedge_converter.cluster import Cluster, ClusterPlan, Forecast
from aiotedge_converter.costs import CostBasis
from aiotedge_converter.planner import Plan
from aiotedge_converter.replicate import Strategies

from aiotedge.contracts.extras import import_extra
from aiotedge.tflite.graph import Graph

STAGE_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")


def _bars(graph: Graph, plan: Plan, basis: CostBasis) -> list[tuple[float, float, float]]:
    """(left edge, width, height) of each bar, in operator units."""
    if not basis.measured:
        return [(op.index - 0.4, 0.8, op.macs / 1e6) for op in graph.ops]
    bars = []
    for stage, profile in zip(plan.stages, basis.profiles, strict=True):
        for piece in profile.pieces:
            if stage.first_op <= piece.first_op and piece.last_op <= stage.last_op:
                width = piece.last_op - piece.first_op + 1
                bars.append((piece.first_op - 0.4, width - 0.2, piece.invoke_ms / width))
    return bars


def _pyplot() -> Any:
    import_extra("matplotlib", extra="converter", feature="--plot").use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_plans(
    graph: Graph, basis: CostBasis, plans: Sequence[tuple[str, Plan]], out: Path
) -> Path:
    """Draw each plan in its own panel and save a PNG."""
    plt = _pyplot()

    figure, axes = plt.subplots(
        len(plans), 1, figsize=(10, 2.9 * len(plans)), sharex=True, squeeze=False
    )
    unit = "measured ms per op" if basis.measured else "MMACs per op"
    boards = [p.label.split(",")[0] for p in basis.profiles]
    named = len(set(boards)) > 1
    for axis, (name, plan) in zip(axes[:, 0], plans, strict=True):
        bars = _bars(graph, plan, basis)
        top = max((height for _, _, height in bars), default=1.0) or 1.0
        total = sum(stage.cost for stage in plan.stages) or 1
        for index, stage in enumerate(plan.stages):
            colour = STAGE_COLOURS[index % len(STAGE_COLOURS)]
            axis.axvspan(stage.first_op - 0.5, stage.last_op + 0.5, color=colour, alpha=0.12)
            inside = [b for b in bars if stage.first_op - 0.5 <= b[0] <= stage.last_op]
            axis.bar(
                [b[0] for b in inside],
                [b[2] for b in inside],
                width=[b[1] for b in inside],
                align="edge",
                color=colour,
            )
            axis.text(
                (stage.first_op + stage.last_op) / 2,
                top * 1.33,
                f"stage {index}" + (f" ({boards[index]})" if named else "")
                + f"\n{100 * stage.cost / total:.0f}%",
                ha="center",
                va="top",
                fontsize=8,
            )
        for cut in plan.cuts:
            axis.axvline(cut + 0.5, color="black", linestyle="--", linewidth=0.9)
        axis.set_ylim(0, top * 1.36)
        axis.set_xlim(-0.5, len(graph.ops) - 0.5)
        axis.set_ylabel(unit, fontsize=8)
        axis.set_title(
            f"{name}: bottleneck/mean {plan.balance:.2f}, cuts after ops "
            f"{','.join(map(str, plan.cuts)) or '-'}",
            fontsize=9,
            loc="left",
        )
        axis.tick_params(labelsize=8)
    axes[-1, 0].set_xlabel("operator (execution order); dashed: cuts; shares of the stage cost")
    model = graph.path.name if graph.path else "model"
    figure.suptitle(f"{model}: {basis.describe()}", fontsize=10)
    figure.tight_layout()
    out = Path(out)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out


def _stage_bars(axis: Any, cluster: Cluster, plan: ClusterPlan, forecast: Forecast,
                name: str) -> None:
    """One bar per stage: what one replica spends per frame, its link time, the frames/s the
    stage allows with its replicas."""
    parts = (("segment", "compute_ms"), ("in (receive, decode)", "take_ms"),
             ("out (encode, publish)", "send_ms"))
    positions = range(len(plan.stages))
    worst = [max(costs.values(), key=lambda c: c.time_ms) for costs in forecast.stage_costs]
    bottom = [0.0] * len(plan.stages)
    for (label, field), colour in zip(parts, STAGE_COLOURS, strict=False):
        heights = [getattr(cost, field) for cost in worst]
        axis.bar(positions, heights, bottom=bottom, color=colour, label=label, width=0.6)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axis.scatter(positions, [cost.link_ms for cost in worst], marker="_", s=500,
                 color="black", label="link", zorder=3)
    for index, (stage, limit) in enumerate(zip(plan.stages, forecast.stage_limits,
                                               strict=True)):
        axis.text(index, max(bottom[index], worst[index].link_ms) * 1.02,
                  f"x{stage.boards}\n{limit:.0f}/s", ha="center", va="bottom", fontsize=7)
    chain = cluster.chain
    axis.set_xticks(list(positions), [
        f"{i}\n{chain.first_ops[s.first]}..{chain.last_ops[s.last]}"
        for i, s in enumerate(plan.stages)], fontsize=7)
    axis.set_xlim(-0.7, max(len(plan.stages), 2) - 0.3)
    axis.set_ylabel("ms per frame, one replica", fontsize=8)
    axis.set_ylim(0, max(*bottom, *(c.link_ms for c in worst)) * 1.35)
    axis.tick_params(labelsize=7)
    axis.set_title(f"{name}: {forecast.frames_per_s:.1f} frames/s\n(bottleneck "
                   f"{forecast.bottleneck}; stage: ops, boards, frames/s)", fontsize=8,
                   loc="left")


def plot_cluster(cluster: Cluster, strategies: Strategies, title: str, out: Path) -> Path:
    """The chosen plan's and the pure pipeline's stages, beside the three strategies'
    frames/s and the N x one board line."""
    plt = _pyplot()
    figure, (chosen_axis, pipeline_axis, totals_axis) = plt.subplots(
        1, 3, figsize=(12, 3.8), gridspec_kw={"width_ratios": [2, 3, 2]})
    _stage_bars(chosen_axis, cluster, *strategies.chosen, "chosen")
    _stage_bars(pipeline_axis, cluster, *strategies.pipeline, "pure pipeline")
    chosen_axis.legend(fontsize=6, loc="lower left")
    names = ["chosen", "pure\npipeline", "pure\nreplicas"]
    values = [strategies.chosen[1].frames_per_s, strategies.pipeline[1].frames_per_s,
              strategies.replicas[1].frames_per_s]
    totals_axis.bar(names, values, color=STAGE_COLOURS[:3], width=0.6)
    totals_axis.axhline(strategies.alone.frames_per_s * cluster.boards, color="black",
                        linestyle="--", linewidth=0.9, label=f"{cluster.boards} x one board")
    totals_axis.set_ylabel("predicted frames/s", fontsize=8)
    totals_axis.legend(fontsize=7, loc="lower right")
    totals_axis.tick_params(labelsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    out = Path(out)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out
