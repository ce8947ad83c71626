"""`aiotedge-convert plan`: what it prints and writes, and the plan run on one machine
(`aiotedge run --plan`) computing exactly what the whole model computes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiotedge_converter.cli import main as convert
from aiotedge_converter.cluster import (
    ClusterPlan,
    Links,
    PlannedStage,
    cluster_from_profiles,
    predict,
)
from aiotedge_converter.deploy import load_plan, write_deployment
from aiotedge_converter.replicate import Strategies
from aiotedge_converter.split import SplitOptions

from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import BrokerConfig
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.profile import Profile
from aiotedge.nodes.daemons.local import LocalPipeline, plan_replicas
from aiotedge.nodes.daemons.profiling import measure_profile
from aiotedge.tflite.graph import load_graph
from support.reference import whole_model_top

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def boards(test_models, tmp_path_factory) -> dict[str, Path]:
    """Two kinds of board for the int8 test model: `front` runs the first half of its pieces
    8 times faster than the second, `back` the other way round (as an accelerator might)."""
    out = tmp_path_factory.mktemp("boards")
    profile = measure_profile(test_models["int8"], threads=1, runs=2, warmup=0, rounds=1,
                              photo_size=(64, 48))
    data = profile.to_dict()
    half = len(data["pieces"]) // 2
    paths = {}
    for name, slow in (("front", slice(half, None)), ("back", slice(0, half))):
        copy = json.loads(json.dumps(data))
        for piece in copy["pieces"][slow]:
            piece["invoke_ms"] = 8 * piece["invoke_ms"] + 1.0
        copy["machine"] = name
        paths[name] = out / f"{name}.json"
        paths[name].write_text(json.dumps(copy))
    return paths


def test_plan_prints_three_strategies_and_writes_what_deploying_needs(
        test_models, boards, tmp_path, capsys):
    front, back = boards["front"], boards["back"]
    args = ["plan", str(test_models["int8"]), "--boards", "4",
            "--profile", f"{front},{front},{back},{back}", "--broker-link-mbps", "1000",
            "--out", str(tmp_path), "--plot", str(tmp_path / "plan.png"),
            "--pipeline", "lab", "--broker", "mqtt.lan"]
    assert convert(args) == 0
    out = capsys.readouterr().out
    assert "pure pipeline" in out and "pure replicas" in out and "broker link" in out
    assert (tmp_path / "plan.png").read_bytes().startswith(PNG_MAGIC)
    record = json.loads((tmp_path / "plan.json").read_text())
    chosen = record["chosen"]
    assert chosen["frames_per_s"] >= max(record["pipeline"]["frames_per_s"],
                                         record["replicas"]["frames_per_s"])
    manifest = Manifest.load(tmp_path)
    assert len(manifest.stages) == len(chosen["stages"]) > 1  # the halves go apart
    configs = {path.stem: NodeConfig.load(path) for path in (tmp_path / "boards").glob("*.toml")}
    for index, stage in enumerate(chosen["stages"]):
        serving = {name: c for name, c in configs.items() if c.stage.index == index}
        assert len(serving) == sum(stage["replicas"]) == len(record["nodes"][index])
        assert set(serving) == set(record["nodes"][index])
        groups = {c.stage.share_group for c in serving.values()}
        assert groups == ({f"stage{index}"} if len(serving) > 1 else {""})
        assert (stage["first_op"], stage["last_op"]) == (manifest.stages[index].first_op,
                                                         manifest.stages[index].last_op)
    for name, config in configs.items():
        assert (config.broker.host, config.broker.username, config.stage.node) == (
            "mqtt.lan", name, name)
        assert config.pipeline.name == "lab" and config.stage.manifest.endswith("/lab")
    assert plan_replicas(tmp_path) == {
        i: sum(s["replicas"]) for i, s in enumerate(chosen["stages"])}
    # what the benchmark recomputes from the files: the same forecast
    graph = load_graph(test_models["int8"])
    cluster = cluster_from_profiles(
        graph, [(p.name, Profile.load(p)) for p in (front, front, back, back)], 4,
        Links(None, 1000))
    forecast = predict(load_plan(tmp_path), cluster)
    assert forecast.frames_per_s == pytest.approx(chosen["frames_per_s"])
    assert forecast.latency_ms == pytest.approx(chosen["latency_ms"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--boards", "0"], "--boards must be at least 1"),
     (["--boards", "3", "--max-latency-ms", "0.001"], "no plan keeps a lone frame within"),
     (["--boards", "3", "--link-mbps", "-1"], "--link-mbps must be positive")],
)
def test_plan_refuses_what_it_cannot_do(test_models, boards, capsys, extra, message):
    args = ["plan", str(test_models["int8"]), "--profile", str(boards["front"]), *extra]
    assert convert(args) == 2
    assert message in capsys.readouterr().err


def test_a_plan_with_replicas_and_a_codec_runs_as_the_whole_model(
        test_models, boards, tmp_path, broker, generated_frames):
    """Two boards on stage 0, its output in zstd, one board on the rest: `aiotedge run --plan`
    starts three stage processes, and every prediction is the whole model's."""
    graph = load_graph(test_models["int8"])
    cluster = cluster_from_profiles(graph, [("front", Profile.load(boards["front"]))], 3,
                                    Links())
    pieces = cluster.chain.pieces
    plan = ClusterPlan((PlannedStage(0, pieces // 2 - 1, (2,), "zstd"),
                        PlannedStage(pieces // 2, pieces - 1, (1,))))
    forecast = predict(plan, cluster)
    strategies = Strategies((plan, forecast), (plan, forecast), (plan, forecast), forecast)
    write_deployment(graph, strategies, cluster, tmp_path, options=SplitOptions(),
                     pipeline="local", broker=BrokerConfig())
    manifest = Manifest.load(tmp_path)
    assert [s.output_codec for s in manifest.stages] == ["zstd", None]
    assert plan_replicas(tmp_path) == {0: 2, 1: 1}
    expected = {name: whole_model_top(manifest, data) for name, data in generated_frames}
    with LocalPipeline(manifest, broker=broker.address,
                       replicas=plan_replicas(tmp_path)) as pipeline:
        assert len(pipeline.nodes) == 3
        results = dict(pipeline.predict(generated_frames, frames=2 * len(generated_frames)))
    assert set(results) == set(expected)
    for name, prediction in results.items():
        assert prediction.top == expected[name], name


def test_run_plan_needs_a_plan_folder(test_models, split_into, generated_photos):
    """A split's folder has no board configs: one line says where they should be."""
    split = split_into(test_models["int8"], 3)
    done = subprocess.run(
        [sys.executable, "-m", "aiotedge", "run", "--plan", str(split.directory), "--images",
         str(generated_photos)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].endswith(f"{split.directory}: no board configs in boards/ (written by "
                             "aiotedge-convert plan --out)")


def test_the_deploy_guides_plan_command_writes_labels_and_home_assistant_discovery(
        test_models, test_labels, tmp_path, capsys):
    """docs/deploy-pi-cluster.md section 2, word for word but the file names: a profile from
    `aiotedge profile`, then `plan ... --labels ... --out`. The labels reach the manifest, and
    the last stage's boards announce the pipeline to Home Assistant as configs/cluster/ does."""
    profile = tmp_path / "pi4.json"
    subprocess.run([sys.executable, "-m", "aiotedge", "profile", str(test_models["int8"]),
                    "--out", str(profile), "--no-mqtt", "--runs", "1", "--rounds", "1",
                    "--warmup", "0"], check=True, capture_output=True, timeout=120)
    out = tmp_path / "greenhouse-v1"
    assert convert(["plan", str(test_models["int8"]), "--boards", "5", "--profile", str(profile),
                    "--link-mbps", "1000", "--broker-link-mbps", "1000", "--pipeline",
                    "greenhouse", "--broker", "broker.lan:8883", "--labels", str(test_labels),
                    "--out", f"{out}/"]) == 0, capsys.readouterr().err
    manifest = Manifest.load(out)
    assert list(manifest.labels) == test_labels.read_text().splitlines()
    configs = {path.stem: NodeConfig.load(path) for path in (out / "boards").glob("*.toml")}
    last = len(manifest.stages) - 1
    assert configs and {name: c.homeassistant.discovery for name, c in configs.items()} == {
        name: c.stage.index == last for name, c in configs.items()}
    assert convert(["plan", str(test_models["int8"]), "--boards", "2", "--profile", str(profile),
                    "--no-homeassistant", "--out", str(out)]) == 0
    assert not any(NodeConfig.load(path).homeassistant.discovery
                   for path in (out / "boards").glob("*.toml"))


def test_plan_out_without_the_converter_extra_says_which_to_install(test_models, boards,
                                                                    tmp_path, capsys,
                                                                    monkeypatch):
    """tomli_w writes the board configs; without it (a board's plain install) plan --out stops
    in one line before it plans or writes anything."""
    monkeypatch.setitem(sys.modules, "tomli_w", None)  # what `import tomli_w` then refuses
    args = ["plan", str(test_models["int8"]), "--boards", "2", "--profile",
            str(boards["front"]), "--out", str(tmp_path / "out")]
    assert convert(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.endswith("pip install 'aiotedge[converter]'") and "plan --out" in err
    assert not (tmp_path / "out").exists()
