"""`aiotedge profile` on the small models, and the planner fed with its measurements."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
from aiotedge_converter.cli import main as convert
from aiotedge_converter.costs import cost_basis
from aiotedge_converter.planner import plan_pipeline

from aiotedge.cli import build_parser
from aiotedge.contracts.errors import ProfileError
from aiotedge.contracts.manifest import Manifest, sha256_file
from aiotedge.contracts.profile import Profile, Transport, TransportSample
from aiotedge.nodes.daemons.lifecycle import exit_status
from aiotedge.tflite.graph import load_graph
from support.paths import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def profile_command(*args: str) -> int:
    """`aiotedge profile ARGS` through the CLI's parser, without its logging setup."""
    parsed = build_parser().parse_args(["profile", *args])
    return exit_status(lambda: parsed.handler(parsed))


@pytest.fixture(scope="module")
def profiles(test_models, tmp_path_factory) -> dict[str, Path]:
    """A measured profile of each small model (few runs: only the structure is tested)."""
    out = tmp_path_factory.mktemp("profiles")
    paths = {}
    for kind in ("float", "int8"):
        paths[kind] = out / f"{kind}.json"
        args = ["profile", str(test_models[kind]), "--out", str(paths[kind]), "--threads", "1"]
        mqtt = [] if kind == "int8" else ["--no-mqtt"]  # one measures it, one spares the time
        assert profile_command(*args[1:], "--runs", "3", "--warmup", "1", "--rounds", "2",
                               "--photo-size", "320x240", *mqtt) == 0
    return paths


def slower_copy(path: Path, factor: float, machine: str) -> Path:
    """The same profile as if measured on a board `factor` times slower."""
    data = json.loads(path.read_text())
    data["machine"] = machine
    for piece in data["pieces"]:
        piece["invoke_ms"] *= factor
    target = path.with_name(f"{machine}.json")
    target.write_text(json.dumps(data))
    return target


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_profile_has_one_piece_per_span_between_cut_points(test_models, profiles, kind):
    graph = load_graph(test_models[kind])
    profile = Profile.load(profiles[kind])
    assert Profile.from_dict(profile.to_dict()) == profile
    assert profile.model_sha256 == sha256_file(test_models[kind])
    assert (profile.threads, profile.runs, profile.warmup, profile.rounds) == (1, 3, 1, 2)
    assert profile.op_count == len(graph.ops)
    assert profile.cut_points == tuple(c.op_index for c in graph.cut_points)
    bounds = [-1, *profile.cut_points, len(graph.ops) - 1]
    assert [(p.first_op, p.last_op) for p in profile.pieces] == [
        (a + 1, b) for a, b in pairwise(bounds)
    ]
    for piece, point in zip(profile.pieces, graph.cut_points, strict=False):
        assert piece.output_bytes == point.tensor.nbytes
    for before, after in pairwise(profile.pieces):
        assert after.input_bytes == before.output_bytes
    for piece in profile.pieces:
        assert min(piece.invoke_ms, piece.set_input_ms, piece.get_output_ms) >= 0
    assert profile.whole_ms > 0


def test_planner_stage_costs_are_the_profile_stage_times(test_models, profiles):
    graph = load_graph(test_models["int8"])
    profile = Profile.load(profiles["int8"])
    basis = cost_basis(graph, 3, [("int8.json", profile)])
    plan = plan_pipeline(basis.boards, [c.op_index for c in graph.cut_points])
    for stage in plan.stages:
        assert stage.compute == pytest.approx(profile.stage_ms(stage.first_op, stage.last_op))


def test_split_with_a_profile_reports_predicted_times(test_models, profiles, tmp_path, capsys):
    code = convert(
        [
            "split",
            str(test_models["int8"]),
            "--stages",
            "3",
            "--profile",
            str(profiles["int8"]),
            "--out",
            str(tmp_path / "split"),
            "--plot",
            str(tmp_path / "plan.png"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "predicted" in out and "costs: ms measured on" in out and "bottleneck" in out
    assert len(Manifest.load(tmp_path / "split").stages) == 3
    assert (tmp_path / "plan.png").read_bytes().startswith(PNG_MAGIC)


def test_heterogeneous_boards_get_the_exact_optimum(test_models, profiles, tmp_path, capsys):
    fast = profiles["int8"]
    slow = slower_copy(fast, 3.0, "pi3")
    graph = load_graph(test_models["int8"])
    last = len(graph.ops) - 1
    fast_profile, slow_profile = Profile.load(fast), Profile.load(slow)
    best = min(
        max(fast_profile.stage_ms(0, c), slow_profile.stage_ms(c + 1, last))
        for c in fast_profile.cut_points
    )
    code = convert(
        ["split", str(test_models["int8"]), "--profile", f"{fast},{slow}", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "board" in out and "pi3, 1 thread" in out
    basis = cost_basis(graph, 2, [("fast", fast_profile), ("slow", slow_profile)])
    plan = plan_pipeline(basis.boards, fast_profile.cut_points)
    assert plan.bottleneck == pytest.approx(best)
    manifest = Manifest.load(tmp_path)
    assert [s.last_op for s in manifest.stages[:-1]] == list(plan.cuts)


def test_a_slow_link_moves_the_cut_to_the_smallest_tensor(
    test_models, profiles, tmp_path, capsys
):
    graph = load_graph(test_models["int8"])
    args = ["split", str(test_models["int8"]), "--stages", "2", "--profile", str(profiles["int8"])]
    assert convert([*args, "--out", str(tmp_path), "--link-mbps", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "send" in out and "link 0.001 Mbit/s" in out
    cut = Manifest.load(tmp_path).stages[0].last_op
    smallest = min(c.tensor.nbytes for c in graph.cut_points)
    assert graph.cut_point(cut).tensor.nbytes == smallest


@pytest.mark.parametrize(
    "case",
    [
        (["--profile", "FLOAT", "--stages", "2"], "was measured on float.tflite"),
        (["--stages", "2", "--link-mbps", "100"], "--link-mbps needs measured stage times"),
        (["--profile", "INT8,INT8,INT8", "--stages", "2"], "disagree on the number of stages"),
        (["--profile", "MISSING", "--stages", "2"], "cannot read profile"),
        (["--profile", "INT8", "--stages", "2", "--link-mbps", "0"], "must be positive"),
    ],
)
def test_split_refuses_unusable_profiles(test_models, profiles, tmp_path, capsys, case):
    args, message = case
    names = {
        "FLOAT": str(profiles["float"]),
        "INT8": str(profiles["int8"]),
        "MISSING": str(tmp_path / "none.json"),
    }
    args = [",".join(names.get(p, p) for p in arg.split(",")) for arg in args]
    code = convert(["split", str(test_models["int8"]), "--out", str(tmp_path / "o"), *args])
    assert code == 2 and message in capsys.readouterr().err


def test_profile_command_refuses_what_is_not_a_model(tmp_path):
    path = tmp_path / "labels.tflite"
    path.write_text("cat\ndog\n")
    done = subprocess.run(
        [sys.executable, "-m", "aiotedge", "profile", str(path), "--out", str(tmp_path / "p.json")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "not a TFLite flatbuffer" in done.stderr
    assert not (tmp_path / "p.json").exists()


def test_profiling_never_loads_tensorflow(test_models):
    """The board side: interpreter and flatbuffers only, even with TensorFlow installed."""
    code = (
        "import sys\n"
        "from aiotedge.nodes.daemons.profiling import measure_profile\n"
        f"measure_profile({str(test_models['int8'])!r}, runs=1, warmup=0, rounds=1)\n"
        "loaded = [m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules]\n"
        "sys.exit(f'loaded {loaded}' if loaded else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr


def test_profile_v2_says_what_a_frame_costs_besides_the_segments(test_models, profiles):
    profile = Profile.load(profiles["int8"])
    assert profile.format_version == 2 and profile.hop_costs
    assert profile.sample == "synthetic 320x240 photo"
    photo, jpeg, tensor = (profile.input_cost(kind) for kind in ("photo", "jpeg", "tensor"))
    graph = load_graph(test_models["int8"])
    height, width = graph.tensor(graph.input_index).shape[1:3]
    assert (photo.width, photo.height) == (320, 240)
    assert (jpeg.width, jpeg.height) == (tensor.width, tensor.height) == (width, height)
    assert tensor.message_bytes > graph.tensor(graph.input_index).nbytes
    assert min(photo.decode_ms, jpeg.decode_ms, tensor.decode_ms) > 0
    for piece in profile.pieces[:-1]:
        raw, zstd = piece.send(None), piece.send("zstd")
        assert raw.message_bytes > piece.output_bytes  # the frame's header comes on top
        assert min(raw.encode_ms, raw.decode_ms, zstd.encode_ms, zstd.decode_ms) > 0
    assert profile.pieces[-1].codecs == {}  # the last piece's output is the prediction
    samples = profile.transport.samples
    assert [s.message_bytes for s in samples] == sorted({s.message_bytes for s in samples})
    sizes = [c.message_bytes for p in profile.pieces for c in p.codecs.values()]
    assert samples[-1].message_bytes == max(sizes + [c.message_bytes for c in profile.inputs])
    assert all(min(s.publish_ms, s.receive_ms, s.one_way_ms) > 0 for s in samples)
    assert Profile.load(profiles["float"]).transport is None  # --no-mqtt


def test_a_version_1_profile_still_loads_and_costs_its_segments_only(profiles, tmp_path):
    data = json.loads(profiles["int8"].read_text())
    for key in ("inputs", "transport", "sample"):
        del data[key]
    for piece in data["pieces"]:
        del piece["codecs"]
    data["format_version"] = 1
    (tmp_path / "v1.json").write_text(json.dumps(data))
    old = Profile.load(tmp_path / "v1.json")
    assert old.format_version == 1 and not old.hop_costs and old.transport is None
    assert old.pieces == tuple(
        dataclasses.replace(p, codecs={}) for p in Profile.load(profiles["int8"]).pieces)
    data["format_version"] = 3
    (tmp_path / "v3.json").write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="format_version 3 is not supported"):
        Profile.load(tmp_path / "v3.json")


def test_transport_costs_between_samples_are_interpolated():
    transport = Transport("t", (TransportSample(1000, 1.0, 2.0, 3.0),
                                TransportSample(3000, 2.0, 2.0, 5.0)))
    assert transport.at(2000) == TransportSample(2000, 1.5, 2.0, 4.0)
    assert transport.at(5000) == TransportSample(5000, 3.0, 2.0, 7.0)  # the line goes on
    assert transport.at(0).publish_ms == 0.5
