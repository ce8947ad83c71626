"""The planner on heterogeneous boards: still exact, brute force being the judge."""

from __future__ import annotations

from itertools import combinations, pairwise

import numpy as np
import pytest
from aiotedge_converter.errors import ConverterError
from aiotedge_converter.planner import CostModel, evaluate_plan, plan_pipeline


def stage_cost(board: dict, first: int, last: int, last_op: int) -> float:
    """A stage's cost written out from the documented formula, independently of CostModel."""
    compute = sum(board["ops"][first : last + 1]) + board["in"][first] + board["out"][last]
    transfer = board["transfer"][last] if last != last_op else 0
    return max(compute, transfer)


def brute_force(boards: list[dict], cut_points: list[int]) -> tuple[int, ...]:
    last = len(boards[0]["ops"]) - 1
    best = None
    for cuts in combinations(sorted(cut_points), len(boards) - 1):
        bounds = [-1, *cuts, last]
        costs = [
            stage_cost(board, a + 1, b, last)
            for board, (a, b) in zip(boards, pairwise(bounds), strict=True)
        ]
        key = (max(costs), sum(c * c for c in costs), cuts)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[2]


def random_board(rng: np.random.Generator, ops: int, speed: int) -> dict:
    """Integer costs (exact comparisons); a slower board multiplies its op costs by `speed`."""
    base = [int(c) for c in rng.integers(0, 12, ops)]
    return {
        "ops": [c * speed for c in base],
        "in": [int(c) for c in rng.integers(0, 3, ops)],
        "out": [int(c) for c in rng.integers(0, 3, ops)],
        "transfer": [int(c) for c in rng.integers(0, 30, ops)],
    }


def cost_model(board: dict) -> CostModel:
    return CostModel(board["ops"], board["transfer"], board["in"], board["out"])


def test_per_stage_boards_match_brute_force():
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(200):
        ops = int(rng.integers(3, 10))
        points = sorted(int(p) for p in rng.choice(ops - 1, int(rng.integers(1, ops)), False))
        for stages in range(1, len(points) + 2):
            boards = [random_board(rng, ops, int(rng.integers(1, 4))) for _ in range(stages)]
            plan = plan_pipeline([cost_model(b) for b in boards], points)
            expected = brute_force(boards, points)
            assert plan.cuts == expected, (boards, points)
            last = ops - 1
            bounds = [-1, *expected, last]
            assert [s.cost for s in plan.stages] == [
                stage_cost(board, a + 1, b, last)
                for board, (a, b) in zip(boards, pairwise(bounds), strict=True)
            ]
            checked += 1
    assert checked > 400


def test_a_slower_board_gets_less_work():
    ops = [1] * 12
    points = list(range(11))
    fast, slow = CostModel(ops), CostModel([3 * c for c in ops])
    assert plan_pipeline([fast, fast], points).cuts == (5,)
    # 3x slower second board: it should take a quarter of the ops (3 of 12 -> 9 vs 9).
    plan = plan_pipeline([fast, slow], points)
    assert plan.cuts == (8,)
    assert [s.cost for s in plan.stages] == [9, 9]
    # The same boards in the other order.
    assert plan_pipeline([slow, fast], points).cuts == (2,)


def test_boundary_costs_are_paid_once_per_stage_end():
    model = CostModel([5, 5, 5], input_costs=[1, 2, 3], output_costs=[10, 20, 30])
    assert model.stage(0, 2).compute == 15 + 1 + 30
    assert [s.compute for s in model.plan([0]).stages] == [5 + 1 + 10, 10 + 2 + 30]


def test_evaluate_plan_needs_one_board_per_stage():
    model = CostModel([1, 1, 1])
    with pytest.raises(ValueError, match="2 cuts make 3 stages, not 2"):
        evaluate_plan([model, model], [0, 1])
    with pytest.raises(ConverterError, match="cannot make 4 stages"):
        plan_pipeline([model] * 4, [0, 1])
