"""The cluster bench's bookkeeping (bench/cluster): what a plan's folder says each board runs,
and ratios taken within a round. The emulated boards themselves are tested in test_boards."""

from __future__ import annotations

import json
import shutil

import pytest

from aiotedge.contracts.manifest import Manifest
from bench.cluster import layouts, report
from bench.cluster.measure import RunResult


def plan_folder(tmp_path, split3, boards: dict[str, str], predicted: float | None = None):
    """A split's folder with one node config per board (`name -> [stage] TOML`)."""
    folder = tmp_path / "plan"
    shutil.copytree(split3.directory, folder)
    for name, stage in boards.items():
        (folder / "boards").mkdir(exist_ok=True)
        (folder / "boards" / f"{name}.toml").write_text(f"[stage]\n{stage}\n")
    if predicted is not None:
        (folder / "plan.json").write_text(json.dumps({"chosen": {"frames_per_s": predicted}}))
    return folder


def test_a_plans_folder_says_what_each_board_runs_and_what_was_predicted(tmp_path, split3):
    folder = plan_folder(tmp_path, split3, {
        "a": 'index = 0\nshare_group = "s0"', "b": 'index = 0\nshare_group = "s0"',
        "c": "index = 1", "d": "index = 2"}, predicted=12.5)
    layout = layouts.from_plan("plan", folder)
    assert layout.roles == (layouts.Role(0, "s0"), layouts.Role(0, "s0"), layouts.Role(1),
                            layouts.Role(2))
    assert (layout.name, layout.predicted_fps) == ("plan-4", 12.5)
    assert layout.describe() == "3 stages, boards per stage 2+1+1"


def test_a_plan_that_leaves_a_stage_without_a_board_is_refused(tmp_path, split3):
    folder = plan_folder(tmp_path, split3, {"a": "index = 0", "b": "index = 2"})
    with pytest.raises(layouts.LayoutError, match="do not serve each of its 3 stages"):
        layouts.from_plan("plan", folder)


def test_boards_per_stage_given_by_hand_share_a_group_where_there_are_several(split3):
    name, folder, counts = layouts.parse_given(f"mix={split3.directory}:2,1,1")
    layout = layouts.with_replicas(name, folder, counts)
    assert [role.share_group for role in layout.roles] == ["stage0", "stage0", "", ""]
    with pytest.raises(layouts.LayoutError, match="3 stages need"):
        layouts.with_replicas(name, folder, [2, 1])


def run(layout: str, strategy: str, boards: int, fps: float, lone: float) -> RunResult:
    return RunResult(layout=layout, strategy=strategy, boards=boards, describe="",
                     predicted_fps=None, fps=fps, lone_latency_ms=lone,
                     lone_transfer_ms=[lone / 10], lone_compute_ms=[lone - lone / 10],
                     frames=100, seconds=1.0, broker_bytes_per_frame=0.0,
                     broker_cpu_ms_per_frame=0.0, camera_cpu_ms_per_frame=0.0,
                     machine_busy=0.5, load_before=0.0, load_after=0.0, seed=0)


def test_ratios_are_to_one_board_in_the_same_round():
    # a slow round slows both; its ratio is as good as the fast round's
    rounds = [[run(layouts.ONE_BOARD, layouts.ONE_BOARD, 1, 10.0, 100.0),
               run("replicas-2", "replicas", 2, 19.0, 110.0)],
              [run(layouts.ONE_BOARD, layouts.ONE_BOARD, 1, 5.0, 200.0),
               run("replicas-2", "replicas", 2, 9.5, 220.0)]]
    replicas = next(s for s in report.summarise(rounds) if s.layout == "replicas-2")
    assert (replicas.ratio.low, replicas.ratio.high) == pytest.approx((1.9, 1.9))
    assert replicas.lone_ratio.median == pytest.approx(1.1)
    assert replicas.lone_transfer_ms == pytest.approx([16.5])  # median of 11 and 22 ms
    assert (replicas.fps.low, replicas.fps.high) == (9.5, 19.0)


def test_the_planners_pipeline_and_replicas_are_run_at_its_cuts_with_its_forecasts(
        test_models, tmp_path):
    from aiotedge.nodes.daemons.profiling import measure_profile

    profile = tmp_path / "board.json"
    profile.write_text(json.dumps(measure_profile(
        test_models["int8"], threads=1, runs=2, warmup=0, rounds=1,
        photo_size=(64, 48)).to_dict()))
    model = test_models["int8"]
    plan = layouts.plan_folder(model, 3, tmp_path, ["--profile", str(profile)])
    record = json.loads((plan / "plan.json").read_text())

    pipeline = layouts.pipeline(model, 3, tmp_path, plan)
    cuts = [stage["last_op"] for stage in record["pipeline"]["stages"]]
    manifest = Manifest.load(pipeline.split)
    assert [stage.last_op for stage in manifest.stages] == cuts
    assert pipeline.describe() == "3 stages, boards per stage 1+1+1"
    assert pipeline.predicted_fps == record["pipeline"]["frames_per_s"]

    replicas = layouts.replicas(model, 3, tmp_path, plan)
    assert replicas.describe() == "1 stage, boards per stage 3"
    assert replicas.predicted_fps == record["replicas"]["frames_per_s"]
    assert layouts.from_plan(layouts.PLAN, plan).predicted_fps == record["chosen"]["frames_per_s"]
