"""Choosing where to cut: the exact min-max partition of a chain of operators.

The model is a chain of operators with a cost each (MACs by default; measured times later).
Cutting at N-1 of the valid cut points gives N stages; in a pipeline the throughput is set by
the slowest stage, so we minimise the largest stage cost. A stage that hands its output to the
next board also pays for the transfer; as in PipeEdge, compute and transfer of consecutive
items overlap, so a stage costs max(compute, transfer of its output), not their sum.

The optimum is found exactly by dynamic programming over the cut points. Among plans with the
same bottleneck we prefer the one whose stage costs have the smallest sum of squares (the most
even spread), then the lexicographically smallest cut tuple, so the answer is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise

from converter.errors import ConverterError

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
    def balance(self) -> float:
        """Bottleneck over mean stage cost: 1.0 is a perfect balance."""
        mean = sum(stage.cost for stage in self.stages) / len(self.stages)
        return float(self.bottleneck / mean) if mean else 1.0


class CostModel:
    """Stage costs from per-operator costs and an optional transfer cost per cut.

    `transfer_costs[p]` is the cost of sending the tensor that crosses the cut after op p
    (ignored for the last stage, whose output is the result).
    """

    def __init__(
        self, op_costs: Sequence[Cost], transfer_costs: Sequence[Cost] | None = None
    ) -> None:
        if transfer_costs is not None and len(transfer_costs) != len(op_costs):
            raise ValueError("transfer_costs needs one entry per operator")
        self.op_count = len(op_costs)
        self._prefix = [0, *accumulate(op_costs)]
        self._transfer = list(transfer_costs) if transfer_costs is not None else None

    def stage(self, first_op: int, last_op: int) -> Stage:
        compute = self._prefix[last_op + 1] - self._prefix[first_op]
        transfer: Cost = 0
        if self._transfer is not None and last_op < self.op_count - 1:
            transfer = self._transfer[last_op]
        return Stage(first_op, last_op, compute, transfer)

    def plan(self, cuts: Sequence[int]) -> Plan:
        """The stages (and their costs) that a given set of cuts produces."""
        bounds = [-1, *cuts, self.op_count - 1]
        stages = tuple(self.stage(a + 1, b) for a, b in pairwise(bounds))
        return Plan(tuple(cuts), stages)


def plan_stages(
    op_costs: Sequence[Cost],
    cut_points: Sequence[int],
    stages: int,
    transfer_costs: Sequence[Cost] | None = None,
) -> Plan:
    """The optimal plan for `stages` stages using only `cut_points` (ops to cut after)."""
    model = CostModel(op_costs, transfer_costs)
    last = model.op_count - 1
    points = sorted(set(cut_points))
    if any(not 0 <= p < last for p in points):
        raise ValueError("cut points must lie between the first and the last operator")
    if stages < 1:
        raise ConverterError(f"--stages must be at least 1, got {stages}")
    if stages - 1 > len(points):
        raise ConverterError(
            f"cannot make {stages} stages: the model has only {len(points)} valid cut points, "
            f"so at most {len(points) + 1} stages"
        )
    # Boundaries: -1 (before op 0), the cut points, then `last` (after the final op).
    bounds = [-1, *points, last]
    end = len(bounds) - 1

    def cost(i: int, j: int) -> Cost:
        return model.stage(bounds[i] + 1, bounds[j]).cost

    # best[k][i]: smallest bottleneck covering ops after bounds[i] to the end with k stages.
    best: list[dict[int, Cost]] = [{} for _ in range(stages + 1)]
    best[1] = {i: cost(i, end) for i in range(end)}
    for k in range(2, stages + 1):
        for i in range(end - k + 1):
            best[k][i] = min(max(cost(i, j), best[k - 1][j]) for j in range(i + 1, end - k + 2))
    bottleneck = best[stages][0]

    # Second pass: among plans within the bottleneck, least sum of squared stage costs.
    even: list[dict[int, Cost]] = [{} for _ in range(stages + 1)]
    even[1] = {i: cost(i, end) ** 2 for i in range(end) if cost(i, end) <= bottleneck}
    for k in range(2, stages + 1):
        for i in range(end - k + 1):
            options = [
                cost(i, j) ** 2 + even[k - 1][j]
                for j in range(i + 1, end - k + 2)
                if cost(i, j) <= bottleneck and j in even[k - 1]
            ]
            if options:
                even[k][i] = min(options)

    # Walk forward taking the first (smallest) cut that keeps the optimum.
    cuts: list[int] = []
    i = 0
    for k in range(stages, 1, -1):
        for j in range(i + 1, end - k + 2):
            if (
                cost(i, j) <= bottleneck
                and j in even[k - 1]
                and cost(i, j) ** 2 + even[k - 1][j] == even[k][i]
            ):
                cuts.append(bounds[j])
                i = j
                break
    return model.plan(cuts)


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
