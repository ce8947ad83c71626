"""The text reports `aiotedge-convert` prints: cut points, a plan, two plans side by side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiotedge_converter.cluster import Cluster, ClusterPlan, Forecast, PlannedStage
from aiotedge_converter.costs import CostBasis
from aiotedge_converter.keras_layers import LayerCut
from aiotedge_converter.metadata import KerasLayer
from aiotedge_converter.planner import Cost, Plan
from aiotedge_converter.replicate import Strategies

from aiotedge.tflite.graph import Graph


def human(count: float) -> str:
    """1234567 -> '1.23M': MAC counts span k to G between test models and real ones."""
    for factor, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= factor:
            return f"{count / factor:.2f}{unit}"
    return f"{count:g}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns; the last column is not padded (it may hold long names)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def plural(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def cost_text(basis: CostBasis, value: Cost) -> str:
    return f"{value:.2f} ms" if basis.measured else f"{human(value)} MACs"


@dataclass(frozen=True)
class LayerView:
    """The Keras layers of an imported model and how many are complete after each op."""

    layers: tuple[KerasLayer, ...]
    done: tuple[int, ...]

    def span(self, first_op: int, last_op: int) -> str:
        start = self.done[first_op - 1] + 1 if first_op else 1
        return f"{start}..{self.done[last_op]}"


def analyze_report(graph: Graph, layers: LayerView | None = None,
                   kind: str = "classification") -> str:
    points = graph.cut_points
    header = (
        f"{graph.path.name if graph.path else 'model'} ({kind}): {len(graph.ops)} operators, "
        f"{human(graph.total_macs)} MACs, {len(points)} valid cut points "
        "(cut after op; the tensor is all that crosses)"
    )
    if layers is not None:
        header += f"; {len(layers.layers)} Keras layers (layers<=: complete before the cut)"
    rows = []
    for c in points:
        row = [
            str(c.op_index),
            graph.ops[c.op_index].kind,
            shape_text(c.tensor.shape),
            c.tensor.dtype,
            str(c.tensor.nbytes),
            f"{100 * c.share:.1f}%",
        ]
        if layers is not None:
            done = layers.done[c.op_index]
            row.append(f"{done} {layers.layers[done - 1].name}" if done else "0")
        rows.append((*row, c.tensor.name))
    names = ["op", "kind", "shape", "dtype", "bytes", "MACs<="]
    if layers is not None:
        names.append("layers<=")
    return header + "\n" + table((*names, "tensor"), rows)


def layer_cut_notes(cuts: Sequence[LayerCut], layers: LayerView) -> str:
    """Where each requested Keras layer boundary landed, and whether it was clean."""
    lines = []
    for cut in cuts:
        asked = layers.layers[cut.requested - 1].name
        if cut.exact:
            lines.append(
                f"Keras layer {cut.requested} ({asked}): clean cut after op {cut.op_index}"
            )
        else:
            used = layers.layers[cut.layers - 1].name
            lines.append(
                f"Keras layer {cut.requested} ({asked}): not a clean cut; using the next "
                f"one, after op {cut.op_index} = after layer {cut.layers} ({used})"
            )
    return "\n".join(lines)


def _summary(basis: CostBasis, plan: Plan) -> str:
    return (
        f"bottleneck {cost_text(basis, plan.bottleneck)}, mean {cost_text(basis, plan.mean)}, "
        f"balance (bottleneck/mean) {plan.balance:.3f}"
    )


def plan_report(
    graph: Graph, plan: Plan, basis: CostBasis, layers: LayerView | None = None
) -> str:
    """Per stage: ops (and Keras layers), MACs and share, predicted time, output tensor."""
    total_macs = graph.total_macs
    total_cost = sum(stage.compute for stage in plan.stages)
    heterogeneous = len({p.label for p in basis.profiles}) > 1
    header = ["stage", "ops"]
    header += ["layers"] if layers is not None else []
    header += ["MACs", "MACs %"]
    if basis.measured:
        header += ["predicted", "time %"]
        header += ["send"] if basis.link_mbps is not None else []
        header += ["board"] if heterogeneous else []
    header += ["output", "bytes"]
    rows = []
    for index, stage in enumerate(plan.stages):
        macs = graph.macs_between(stage.first_op, stage.last_op)
        row = [str(index), f"{stage.first_op}..{stage.last_op}"]
        row += [layers.span(stage.first_op, stage.last_op)] if layers is not None else []
        row += [human(macs), f"{100 * macs / total_macs:.1f}%" if total_macs else "-"]
        if basis.measured:
            row += [f"{stage.compute:.2f} ms", f"{100 * stage.compute / total_cost:.1f}%"]
            row += [f"{stage.transfer:.2f} ms"] if basis.link_mbps is not None else []
            row += [basis.profiles[index].label] if heterogeneous else []
        last = stage.last_op == len(graph.ops) - 1
        tensor = graph.tensor(graph.boundary_tensor(stage.last_op))
        outputs = len(graph.boundary_tensors(stage.last_op))
        if outputs > 1:  # a detection model's last stage: its four outputs are the result
            row += [f"{outputs} outputs", "(result)"]
        else:
            row += [f"{shape_text(tensor.shape)} {tensor.dtype}",
                    str(tensor.nbytes) + (" (result)" if last else "")]
        rows.append(row)
    cuts = f"cuts after ops {','.join(map(str, plan.cuts))}" if plan.cuts else "no cut"
    return "\n".join(
        [
            f"{plural(len(plan.stages), 'stage')}, {cuts}; {basis.describe()}",
            table(header, rows),
            _summary(basis, plan),
        ]
    )


def compare_report(
    graph: Graph, basis: CostBasis, plans: Sequence[tuple[str, Plan]]
) -> str:
    """Plans with the same number of stages side by side: ops, cost and share per stage."""
    first = plans[0][1]
    unit = "ms" if basis.measured else "MACs"
    header = ["stage"] + ["ops", unit, "share"] * len(plans)
    rows = []
    for index in range(len(first.stages)):
        row = [str(index)]
        for _, plan in plans:
            stage = plan.stages[index]
            total = sum(s.cost for s in plan.stages)
            row += [
                f"{stage.first_op}..{stage.last_op}",
                cost_text(basis, stage.cost).removesuffix(f" {unit}"),
                f"{100 * stage.cost / total:.1f}%" if total else "-",
            ]
        rows.append(row)
    bottleneck = ["bottleneck"]
    for _, plan in plans:
        ratio = f"{plan.bottleneck / first.bottleneck:.2f}x" if first.bottleneck else "-"
        bottleneck += ["", cost_text(basis, plan.bottleneck).removesuffix(f" {unit}"), ratio]
    rows.append(bottleneck)
    rows.append(["balance"] + [cell for _, p in plans for cell in ("", f"{p.balance:.3f}", "")])
    # Every column padded (so the plan names can sit above their three columns).
    lines = table([*header, ""], [[*row, ""] for row in rows]).splitlines()
    starts = [lines[0].index("ops")]
    for _ in plans[1:]:
        starts.append(lines[0].index("ops", starts[-1] + 3))
    names = ""
    for start, (name, _) in zip(starts, plans, strict=True):
        names = names.ljust(start) + name + " "
    return "\n".join([names.rstrip(), *lines])


def _boards_text(stage: PlannedStage, cluster: Cluster) -> str:
    if len(cluster.kinds) == 1:
        return str(stage.boards)
    return "+".join(f"{count} {kind.name}"
                    for kind, count in zip(cluster.kinds, stage.replicas, strict=True) if count)


def strategies_report(cluster: Cluster, strategies: Strategies) -> str:
    """The chosen plan beside the pure pipeline and pure replicas, then the chosen one's
    stages and links."""
    alone = strategies.alone
    rows = []
    for name, (plan, forecast) in (("chosen", strategies.chosen),
                                   ("pure pipeline", strategies.pipeline),
                                   ("pure replicas", strategies.replicas)):
        rows.append([
            name, str(len(plan.stages)),
            ",".join(_boards_text(stage, cluster) for stage in plan.stages),
            f"{forecast.frames_per_s:.1f}",
            f"{forecast.frames_per_s / alone.frames_per_s:.2f}x",
            f"{forecast.latency_ms:.1f}", forecast.bottleneck,
        ])
    boards = ", ".join(f"{count} x {kind.name}"
                       for kind, count in zip(cluster.kinds, cluster.counts, strict=True))
    links = cluster.links
    link_text = "; ".join(
        [f"board links {links.board_mbps:g} Mbit/s"] if links.board_mbps else [])
    link_text += ("; " if link_text else "") + (
        f"broker link {links.broker_mbps:g} Mbit/s" if links.broker_mbps else
        "broker link not limited")
    lines = [
        f"{plural(cluster.boards, 'board')} ({boards}); stage 0 takes a "
        f"{cluster.chain.stage0_input}; {link_text}",
        f"one board alone: {alone.frames_per_s:.1f} frames/s, {alone.latency_ms:.1f} ms a frame",
        table(["plan", "stages", "boards", "frames/s", "vs 1 board", "latency ms",
               "bottleneck"], rows),
        "",
        stages_report(cluster, *strategies.chosen),
    ]
    return "\n".join(lines)


def stages_report(cluster: Cluster, plan: ClusterPlan, forecast: Forecast) -> str:
    """Per stage: operators, boards, CPU per frame (segment, taking in, sending on), link,
    the frames/s it allows, and its output message; then the broker's link."""
    chain = cluster.chain
    rows = []
    for index, (stage, limit, costs) in enumerate(
            zip(plan.stages, forecast.stage_limits, forecast.stage_costs, strict=True)):
        cost = max(costs.values(), key=lambda c: c.time_ms)
        last = stage.last == chain.pieces - 1
        rows.append([
            str(index), f"{chain.first_ops[stage.first]}..{chain.last_ops[stage.last]}",
            _boards_text(stage, cluster),
            f"{cost.compute_ms:.2f}", f"{cost.take_ms:.2f}", f"{cost.send_ms:.2f}",
            f"{cost.cpu_ms:.2f}", f"{cost.link_ms:.2f}", f"{limit:.1f}",
            "prediction" if last else (stage.codec or "raw"),
            str(cost.out_bytes),
        ])
    header = ["stage", "ops", "boards", "segment ms", "in ms", "out ms", "CPU ms", "link ms",
              "frames/s", "output", "bytes"]
    broker = cluster.links.broker_mbps
    broker_line = (
        f"broker link: {forecast.frame_bytes} bytes a frame each way (every message in and out "
        f"once) = {cluster.links.broker_ms(forecast.frame_bytes):.2f} ms at {broker:g} Mbit/s: "
        f"{forecast.broker_limit:.1f} frames/s" if broker else
        f"broker link: {forecast.frame_bytes} bytes a frame each way (not limited)")
    cuts = [chain.last_ops[s.last] for s in plan.stages[:-1]]
    return "\n".join([
        f"chosen: {plural(len(plan.stages), 'stage')}, "
        + (f"cuts after ops {','.join(map(str, cuts))}" if cuts else "no cut")
        + f"; {forecast.frames_per_s:.1f} frames/s, bottleneck {forecast.bottleneck}",
        table(header, rows),
        broker_line,
        "in: receive and decode its input (stage 0: the camera's frame); out: encode and "
        "publish its output; link: the busier direction of its board's link",
    ])
