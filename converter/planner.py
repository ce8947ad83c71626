"""Choosing where to cut: the exact min-max partition of a chain of operators.

The model is a chain of operators with a cost each (MACs by default, or times measured on the
boards by `aiotedge profile`). Cutting at N-1 of the valid cut points gives N stages; in a
pipeline the throughput is set by the slowest stage, so we minimise the largest stage cost. A
stage that hands its output to the next board also pays for the transfer; as in PipeEdge,
compute and transfer of consecutive items overlap, so a stage costs max(compute, transfer of
its output), not their sum.

Boards may differ (a Pi 3 beside a Pi 4): each stage then has its own cost model, stage k
running on board k. The optimum is still found exactly by dynamic programming over (stage,
cut point). Among plans with the same bottleneck we prefer the one whose stage costs have the
smallest sum of squares (the most even spread), then the lexicographically smallest cut tuple,
so the answer is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise

from aiotedge_converter.errors import ConverterError

Cost = float | int


@dataclass(frozen=True)
class Stage:
    first_op: int
    last_op: int
    compute: Cost
    transfer: Cost

    @property
    def cost(self) -> Cost:
        return max(self.compute, self.transfer)


@dataclass(frozen=True)
class Plan:
    cuts: tuple[int, ...]
    stages: tuple[Stage, ...]

    @property
    def bottleneck(self) -> Cost:
        return max(stage.cost for stage in self.stages)

    @property
    def mean(self) -> float:
        return sum(stage.cost for stage in self.stages) / len(self.stages)

    @property
    def balance(self) -> float:
        """Bottleneck over mean stage cost: 1.0 is a perfect balance."""
        mean = self.mean
        return float(self.bottleneck / mean) if mean else 1.0


class CostModel:
    """Stage costs on one board: per-operator costs plus what crossing a boundary costs.

    `transfer_costs[p]` is the cost of sending the tensor that crosses the cut after op p
    (ignored for the last stage, whose output is the result). `input_costs[f]` is what a stage
    starting at op f pays to take in its input tensor and `output_costs[l]` what a stage ending
    at op l pays to hand out its output (a measured profile's set/get tensor copies; MACs have
    none). Each sequence has one entry per operator.
    """

    def __init__(
        self,
        op_costs: Sequence[Cost],
        transfer_costs: Sequence[Cost] | None = None,
        input_costs: Sequence[Cost] | None = None,
        output_costs: Sequence[Cost] | None = None,
    ) -> None:
        for name, costs in (
            ("transfer_costs", transfer_costs),
            ("input_costs", input_costs),
            ("output_costs", output_costs),
        ):
            if costs is not None and len(costs) != len(op_costs):
                raise ValueError(f"{name} needs one entry per operator")
        self.op_count = len(op_costs)
        self._prefix = [0, *accumulate(op_costs)]
        self._transfer = list(transfer_costs) if transfer_costs is not None else None
        self._input = list(input_costs) if input_costs is not None else None
        self._output = list(output_costs) if output_costs is not None else None

    def stage(self, first_op: int, last_op: int) -> Stage:
        compute = self._prefix[last_op + 1] - self._prefix[first_op]
        if self._input is not None:
            compute += self._input[first_op]
        if self._output is not None:
            compute += self._output[last_op]
        transfer: Cost = 0
        if self._transfer is not None and last_op < self.op_count - 1:
            transfer = self._transfer[last_op]
        return Stage(first_op, last_op, compute, transfer)

    def plan(self, cuts: Sequence[int]) -> Plan:
        """The stages (and their costs) that a given set of cuts produces on this board."""
        return evaluate_plan([self] * (len(cuts) + 1), cuts)


def evaluate_plan(boards: Sequence[CostModel], cuts: Sequence[int]) -> Plan:
    """The stages that `cuts` produce, stage k costed on `boards[k]`."""
    if len(boards) != len(cuts) + 1:
        raise ValueError(f"{len(cuts)} cuts make {len(cuts) + 1} stages, not {len(boards)}")
    bounds = [-1, *cuts, boards[0].op_count - 1]
    spans = pairwise(bounds)
    stages = tuple(board.stage(a + 1, b) for board, (a, b) in zip(boards, spans, strict=True))
    return Plan(tuple(cuts), stages)


def plan_stages(
    op_costs: Sequence[Cost],
    cut_points: Sequence[int],
    stages: int,
    transfer_costs: Sequence[Cost] | None = None,
) -> Plan:
    """The optimal plan for `stages` stages of identical boards, cutting only at `cut_points`."""
    if stages < 1:
        raise ConverterError(f"--stages must be at least 1, got {stages}")
    return plan_pipeline([CostModel(op_costs, transfer_costs)] * stages, cut_points)


def plan_pipeline(boards: Sequence[CostModel], cut_points: Sequence[int]) -> Plan:
    """The optimal plan with stage k on `boards[k]`, cutting only at `cut_points`."""
    stages = len(boards)
    if stages < 1:
        raise ConverterError("a pipeline needs at least 1 stage")
    if len({board.op_count for board in boards}) != 1:
        raise ValueError("every board's cost model must cover the same operators")
    last = boards[0].op_count - 1
    points = sorted(set(cut_points))
    if any(not 0 <= p < last for p in points):
        raise ValueError("cut points must lie between the first and the last operator")
    if stages - 1 > len(points):
        raise ConverterError(
            f"cannot make {stages} stages: the model has only {len(points)} valid cut points, "
            f"so at most {len(points) + 1} stages"
        )
    # Boundaries: -1 (before op 0), the cut points, then `last` (after the final op).
    bounds = [-1, *points, last]
    end = len(bounds) - 1

    def cost(k: int, i: int, j: int) -> Cost:
        """Cost of stages-k's stage (k stages left, counting it) covering bounds i..j."""
        return boards[stages - k].stage(bounds[i] + 1, bounds[j]).cost

    # best[k][i]: smallest bottleneck covering ops after bounds[i] to the end with the last k
    # stages.
    best: list[dict[int, Cost]] = [{} for _ in range(stages + 1)]
    best[1] = {i: cost(1, i, end) for i in range(end)}
    for k in range(2, stages + 1):
        for i in range(end - k + 1):
            best[k][i] = min(
                max(cost(k, i, j), best[k - 1][j]) for j in range(i + 1, end - k + 2)
            )
    bottleneck = best[stages][0]

    # Second pass: among plans within the bottleneck, least sum of squared stage costs.
    even: list[dict[int, Cost]] = [{} for _ in range(stages + 1)]
    even[1] = {i: cost(1, i, end) ** 2 for i in range(end) if cost(1, i, end) <= bottleneck}
    for k in range(2, stages + 1):
        for i in range(end - k + 1):
            options = [
                cost(k, i, j) ** 2 + even[k - 1][j]
                for j in range(i + 1, end - k + 2)
                if cost(k, i, j) <= bottleneck and j in even[k - 1]
            ]
            if options:
                even[k][i] = min(options)

    # Walk forward taking the first (smallest) cut that keeps the optimum.
    cuts: list[int] = []
    i = 0
    for k in range(stages, 1, -1):
        for j in range(i + 1, end - k + 2):
            if (
                cost(k, i, j) <= bottleneck
                and j in even[k - 1]
                and cost(k, i, j) ** 2 + even[k - 1][j] == even[k][i]
            ):
                cuts.append(bounds[j])
                i = j
                break
    return evaluate_plan(boards, cuts)


def check_cuts(cuts: Sequence[int], cut_points: Sequence[int]) -> tuple[int, ...]:
    """User-given cuts, sorted, after checking each is a valid cut point and unique."""
    valid = set(cut_points)
    wrong = [c for c in cuts if c not in valid]
    if wrong:
        raise ConverterError(
            f"not valid cut point(s): {','.join(map(str, wrong))} "
            f"(valid: {','.join(map(str, sorted(valid)))}; see `aiotedge-convert analyze`)"
        )
    if len(set(cuts)) != len(cuts):
        raise ConverterError(f"cut points repeated in {','.join(map(str, cuts))}")
    return tuple(sorted(cuts))
