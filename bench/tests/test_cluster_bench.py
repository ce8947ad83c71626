"""The cluster bench's bookkeeping (bench/cluster): what a plan's folder says each board runs,
and ratios taken within a round. The emulated boards themselves are tested in test_boards."""

from __future__ import annotations

import json
import shutil

import pytest

from aiotedge.contracts.manifest import Manifest
from bench.cluster import __main__ as cluster_main
from bench.cluster import boards, layouts, report, steady_report
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


def test_a_model_that_does_not_classify_gets_a_section_and_a_folder_of_its_own(tmp_path):
    """A detection model's run must not replace the classifier's figures."""
    model = tmp_path / "ssd.tflite"
    assert cluster_main.titled("classification", model, None) == (
        cluster_main.HEADING, cluster_main.CLUSTER_DOCS)
    heading, out = cluster_main.titled("detection", model, None)
    assert heading != cluster_main.HEADING and "detection" in heading and "ssd.tflite" in heading
    assert out == cluster_main.CLUSTER_DOCS / "detection"
    assert cluster_main.titled("detection", model, tmp_path)[1] == tmp_path


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


def steady_run(kind: str, cpus: list[float], fps: float, dispatch: bool = True,
               idle: float = 0.0) -> dict:
    return {"kind": kind, "dispatch": dispatch, "cpus": cpus, "fps": fps,
            "frames_in_window": 0, "published": 10, "answered": 10, "duplicates": 0,
            "missing": 0, "top1_checked": 4, "top1_wrong": 0, "load": 0.0,
            "boards": [{"node": f"board{n}", "cpu": cpu, "idle": idle, "idle_over_time": [idle]}
                       for n, cpu in enumerate(cpus)]}


def steady_data(rounds: list[list[dict]]) -> dict:
    return {"header": {"command": "bench", "cpu": 0.2, "boards": 2, "warmup_s": 1.0,
                       "window_s": 2.0, "in_flight_per_board": 4, "minutes": 1.0, "machine": "m",
                       "sample_s": 1.0, "quick": False}, "rounds": rounds}


def test_the_steady_bench_holds_n_boards_to_n_times_one_and_mixed_ones_to_their_sum_alone():
    rounds = [[steady_run(steady_report.ONE, [0.2], 10.0),
               steady_run("2 boards", [0.2, 0.2], 15.0, dispatch=False, idle=0.25),
               steady_run("2 boards", [0.2, 0.2], 19.0),
               steady_run(steady_report.ALONE, [0.1], 4.0),
               steady_run(steady_report.MIXED, [0.2, 0.1], 12.0)],
              [steady_run(steady_report.ONE, [0.2], 5.0),  # a slow round: its own base
               steady_run("2 boards", [0.2, 0.2], 7.5, dispatch=False, idle=0.35),
               steady_run("2 boards", [0.2, 0.2], 9.5),
               steady_run(steady_report.ALONE, [0.1], 2.0),
               steady_run(steady_report.MIXED, [0.2, 0.1], 7.0)]]
    rows = {(row["kind"], row["dispatch"]): row
            for row in steady_report.summarise(steady_data(rounds))}
    assert rows[("2 boards", True)]["ratio"]["median"] == pytest.approx(0.95)
    assert rows[("2 boards", False)]["ratio"]["low"] == pytest.approx(0.75)
    assert rows[("2 boards", False)]["idle"] == [pytest.approx(0.3)] * 2
    mixed = rows[(steady_report.MIXED, True)]["ratio"]  # against 10 + 4, then 5 + 2
    assert (mixed["low"], mixed["high"]) == pytest.approx((12 / 14, 1.0))
    text = steady_report.markdown(steady_data(rounds), "idle.png")
    assert "0.950x" in text and "with the dispatch 14.25 frames/s" in text
    assert steady_report.checks(steady_data(rounds))["published"] == 100


def test_the_steady_bench_runs_quick_on_emulated_boards(shared_data, tmp_path):
    """The bench itself, with its --quick settings: every check it makes holds."""
    from bench.cluster import steady

    if reason := boards.detect().why_not("cpu"):
        pytest.skip(f"this machine does not permit it: {reason}")
    assert steady.main(["--quick", "--check", "5", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "steady-quick.json").read_text())
    assert steady_report.checks(data)["duplicates"] == 0
    assert steady_report.checks(data)["missing"] == 0
    assert steady_report.checks(data)["top1_wrong"] == 0
    assert steady_report.checks(data)["top1_checked"] > 0
    assert {(run["kind"], run["dispatch"]) for run in data["rounds"][0]} >= {
        ("2 boards", False), ("2 boards", True), ("mixed", False), ("mixed", True)}
    assert (tmp_path / "idle-quick.png").stat().st_size > 0
