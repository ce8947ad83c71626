"""The planner is exact: it agrees with brute force over every combination of cuts."""

from __future__ import annotations

from itertools import combinations, pairwise

import numpy as np
import pytest
from aiotedge_converter.errors import ConverterError
from aiotedge_converter.planner import CostModel, check_cuts, plan_stages


def brute_force(op_costs, cut_points, stages, transfer_costs=None) -> tuple[int, ...]:
    """Every combination, ranked by the planner's documented order, written independently."""
    last = len(op_costs) - 1
    best = None
    for cuts in combinations(sorted(cut_points), stages - 1):
        bounds = [-1, *cuts, last]
        costs = []
        for a, b in pairwise(bounds):
            compute = sum(op_costs[a + 1 : b + 1])
            transfer = transfer_costs[b] if transfer_costs is not None and b != last else 0
            costs.append(max(compute, transfer))
        key = (max(costs), sum(c * c for c in costs), cuts)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[2]


def random_cases(count: int, with_transfer: bool):
    rng = np.random.default_rng(2024 + with_transfer)
    for _ in range(count):
        ops = int(rng.integers(2, 11))
        costs = [int(c) for c in rng.integers(0, 20, ops)]
        points = sorted(int(p) for p in rng.choice(ops - 1, int(rng.integers(1, ops)), False))
        transfer = [int(t) for t in rng.integers(0, 25, ops)] if with_transfer else None
        for stages in range(1, len(points) + 2):
            yield costs, points, stages, transfer


@pytest.mark.parametrize("with_transfer", [False, True], ids=["compute", "compute+transfer"])
def test_planner_matches_brute_force(with_transfer):
    checked = 0
    for costs, points, stages, transfer in random_cases(300, with_transfer):
        plan = plan_stages(costs, points, stages, transfer)
        expected = brute_force(costs, points, stages, transfer)
        assert plan.cuts == expected, (costs, points, stages, transfer)
        assert plan.bottleneck == CostModel(costs, transfer).plan(expected).bottleneck
        checked += 1
    assert checked > 500


def test_plan_covers_every_operator_once():
    plan = plan_stages([5, 1, 1, 5, 1, 1, 5], [0, 1, 2, 3, 4, 5], 3)
    assert [(s.first_op, s.last_op) for s in plan.stages] == [(0, 1), (2, 3), (4, 6)]
    assert plan.bottleneck == 7
    assert [s.compute for s in plan.stages] == [6, 6, 7]


def test_ties_are_broken_towards_even_stages_then_earliest_cuts():
    # Op 0 alone is the bottleneck (10) in every optimal plan; of the rest (1,3), (2,2) and
    # (3,1) all fit under it, and (2,2) spreads the work most evenly.
    assert plan_stages([10, 1, 1, 1, 1], [0, 1, 2, 3], 3).cuts == (0, 2)
    # Cuts 0, 1 and 2 all give stage costs (2, 2): the earliest wins.
    assert plan_stages([2, 0, 0, 2], [0, 1, 2], 2).cuts == (0,)


def test_transfer_cost_moves_the_cut_away_from_a_large_tensor():
    costs = [4, 4, 4, 4]
    assert plan_stages(costs, [0, 1, 2], 2).cuts == (1,)
    transfer = [0, 100, 0, 0]  # the tensor after op 1 is huge
    plan = plan_stages(costs, [0, 1, 2], 2, transfer)
    assert plan.cuts in {(0,), (2,)}
    assert plan.bottleneck == 12


def test_one_stage_needs_no_cut_and_too_many_stages_are_refused():
    assert plan_stages([1, 2, 3], [0, 1], 1).cuts == ()
    with pytest.raises(ConverterError, match="at most 3 stages"):
        plan_stages([1, 2, 3], [0, 1], 4)
    with pytest.raises(ConverterError, match="at least 1"):
        plan_stages([1, 2, 3], [0, 1], 0)


def test_check_cuts_refuses_invalid_and_repeated_cuts():
    assert check_cuts([5, 2], [2, 5, 7]) == (2, 5)
    with pytest.raises(ConverterError, match=r"not valid cut point\(s\): 3 \(valid: 2,5,7"):
        check_cuts([2, 3], [2, 5, 7])
    with pytest.raises(ConverterError, match="repeated"):
        check_cuts([2, 2], [2, 5, 7])
