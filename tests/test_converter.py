"""Converter on the small test models: cut points, segments, manifest, CLI and verify."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from aiotedge_converter.cli import main as convert
from aiotedge_converter.verify import FLOAT_TOLERANCE

from aiotedge.contracts.manifest import Manifest, sha256_file
from aiotedge.media.image import decode_image, preprocess
from aiotedge.tflite.flatbuffer import BUFFER_ALIGNMENT, pack_model
from aiotedge.tflite.graph import load_graph, load_model
from aiotedge.tflite.runtime import Segment
from support.models import LABELS
from support.paths import REPO

KINDS = ("float", "int8")


def split(model: Path, out: Path, *args: str) -> Manifest:
    assert convert(["split", str(model), "--out", str(out), *args]) == 0
    return Manifest.load(out)


def inputs_for(manifest: Manifest, generated_photos: Path) -> list[np.ndarray]:
    """Stage-0 tensors of the test generated_photos, plus one random tensor of the input's dtype."""
    spec = manifest.source.input
    tensors = [
        preprocess(decode_image(path.read_bytes()), manifest.preprocessing, spec)
        for path in sorted(generated_photos.iterdir())
    ]
    rng = np.random.default_rng(0)
    if np.dtype(spec.dtype).kind == "f":
        tensors.append(rng.uniform(-1, 1, spec.shape).astype(spec.dtype))
    else:
        tensors.append(rng.integers(0, 256, spec.shape).astype(spec.dtype))
    return tensors


def assert_chain_matches_whole(manifest: Manifest, generated_photos: Path) -> None:
    whole = Segment(manifest.directory / manifest.source.file)
    chain = [Segment(manifest.check_segment(i)) for i in range(len(manifest.stages))]
    for tensor in inputs_for(manifest, generated_photos):
        expected = whole.run(tensor)
        actual = tensor
        for segment in chain:
            actual = segment.run(actual)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        if np.dtype(expected.dtype).kind == "f":
            np.testing.assert_allclose(actual, expected, rtol=0, atol=FLOAT_TOLERANCE)
        else:
            np.testing.assert_array_equal(actual, expected)


# --- cut points ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_cut_points_exclude_the_inside_of_residual_blocks(test_models, kind):
    graph = load_graph(test_models[kind])
    valid = {c.op_index for c in graph.cut_points}
    adds = [op.index for op in graph.ops if op.kind == "ADD"]
    assert len(adds) == 2
    for add in adds:
        assert add in valid  # after the add, only its output lives on
        assert add - 1 not in valid  # before it, the skip tensor and the branch both cross
        assert len(graph.crossing_tensors(add - 1)) == 2
    assert len(graph.ops) - 1 not in valid  # nothing to cut after the last operator
    for point in graph.cut_points:
        assert graph.crossing_tensors(point.op_index) == [point.tensor_index]
    shares = [c.share for c in graph.cut_points]
    assert shares == sorted(shares) and 0 < shares[-1] <= 1


def test_macs_count_convolutions_and_dense_layers(test_models):
    graph = load_graph(test_models["float"])
    by_kind = {}
    for op in graph.ops:
        by_kind.setdefault(op.kind, []).append(op.macs)
    # First conv: 3x3x3 filters, 16 channels, output 20x16 (stride 2 on 40x32).
    assert by_kind["CONV_2D"][0] == 20 * 16 * 16 * 3 * 3 * 3
    assert by_kind["DEPTHWISE_CONV_2D"] == [20 * 16 * 16 * 3 * 3]
    assert by_kind["FULLY_CONNECTED"] == [32 * 10]
    assert all(m == 0 for m in by_kind["ADD"])
    # Quantization adds QUANTIZE ops that cost nothing; the MACs are the same.
    assert load_graph(test_models["int8"]).total_macs == graph.total_macs


# --- split: segments equal the whole model -------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_planned_split_computes_the_whole_model(
    test_models, generated_photos, tmp_path, kind
):
    graph = load_graph(test_models[kind])
    for stages in range(2, len(graph.cut_points) + 2):
        manifest = split(test_models[kind], tmp_path / f"n{stages}", "--stages", str(stages))
        assert len(manifest.stages) == stages
        assert_chain_matches_whole(manifest, generated_photos)


@pytest.mark.parametrize("kind", KINDS)
def test_every_single_cut_point_splits_correctly(test_models, generated_photos, tmp_path, kind):
    graph = load_graph(test_models[kind])
    for point in graph.cut_points:
        out = tmp_path / f"cut{point.op_index}"
        manifest = split(test_models[kind], out, "--cuts", str(point.op_index))
        assert manifest.stages[0].output.shape == point.tensor.shape
        assert manifest.stages[0].output.dtype == point.tensor.dtype
        assert_chain_matches_whole(manifest, generated_photos)


def test_int8_activations_stay_one_byte_between_stages(test_models, tmp_path):
    manifest = split(test_models["int8"], tmp_path, "--stages", "4")
    for before, after in pairwise(manifest.stages):
        assert before.output == after.input
        assert before.output.dtype == "int8" and before.output.quantized
    assert manifest.source.input.dtype == manifest.source.output.dtype == "uint8"


# --- manifest ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_manifest_describes_the_split(test_models, test_labels, tmp_path, kind):
    model = test_models[kind]
    graph = load_graph(model)
    manifest = split(model, tmp_path, "--stages", "3", "--labels", str(test_labels))

    assert Manifest.load(tmp_path / "manifest.json") == manifest
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())), tmp_path) == manifest
    assert manifest.labels == LABELS
    assert manifest.label(3) == "cat"

    source = Segment(model)
    assert manifest.source.file == model.name
    assert manifest.source.sha256 == sha256_file(model) == sha256_file(tmp_path / model.name)
    assert (manifest.source.input, manifest.source.output) == (
        source.input_spec,
        source.output_spec,
    )
    assert manifest.source.macs == graph.total_macs == sum(s.macs for s in manifest.stages)

    prep = manifest.preprocessing
    assert (prep.width, prep.height) == (32, 40)  # input is NHWC 1x40x32x3
    if kind == "float":
        assert (prep.mean, prep.std) == (127.5, 127.5)
    else:
        spec = manifest.source.input
        assert (prep.mean, prep.std) == (spec.zero_point, 1 / spec.scale)

    assert manifest.stages[0].first_op == 0
    assert manifest.stages[-1].last_op == len(graph.ops) - 1
    for index, stage in enumerate(manifest.stages):
        assert stage.index == index and stage.file == f"stage{index}.tflite"
        assert manifest.check_segment(index) == tmp_path / stage.file
        assert stage.sha256 == sha256_file(tmp_path / stage.file)
        segment = Segment(tmp_path / stage.file)
        assert (segment.input_spec, segment.output_spec) == (stage.input, stage.output)
        assert stage.macs == graph.macs_between(stage.first_op, stage.last_op)
        if index:
            assert stage.first_op == manifest.stages[index - 1].last_op + 1


def test_mean_and_std_can_be_overridden(test_models, tmp_path):
    manifest = split(
        test_models["float"], tmp_path, "--stages", "2", "--mean", "0", "--std", "255"
    )
    assert (manifest.preprocessing.mean, manifest.preprocessing.std) == (0.0, 255.0)


def test_no_copy_source_leaves_only_segments_their_references_and_manifest(test_models,
                                                                           tmp_path):
    split(test_models["float"], tmp_path, "--stages", "2", "--no-copy-source")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json",
        "stage0.reference.npz",
        "stage0.tflite",
        "stage1.reference.npz",
        "stage1.tflite",
    ]


# --- segment files ------------------------------------------------------------------------


def test_segment_files_hold_only_what_their_ops_use(test_models, tmp_path):
    source = load_model(test_models["int8"])
    manifest = split(test_models["int8"], tmp_path, "--stages", "3")
    weight_bytes = 0
    for index in range(len(manifest.stages)):
        raw = manifest.segment_path(index).read_bytes()
        assert raw[4:8] == b"TFL3"
        model = schema.Model.GetRootAs(raw, 0)
        assert model.BuffersLength() >= 1 and model.Buffers(0).DataLength() == 0
        for b in range(1, model.BuffersLength()):
            buffer = model.Buffers(b)
            if buffer.DataLength():
                position = buffer._tab.Vector(buffer._tab.Offset(4))
                assert position % BUFFER_ALIGNMENT == 0
                weight_bytes += buffer.DataLength()
        assert model.SignatureDefsLength() == 0

        unpacked = load_model(manifest.segment_path(index))
        stage = manifest.stages[index]
        assert len(unpacked.subgraphs[0].operators) == stage.last_op - stage.first_op + 1
        used = {op.opcodeIndex for op in unpacked.subgraphs[0].operators}
        assert used == set(range(len(unpacked.operatorCodes)))
        used_buffers = {t.buffer for t in unpacked.subgraphs[0].tensors}
        used_buffers |= {m.buffer for m in unpacked.metadata or []}
        assert used_buffers | {0} == set(range(len(unpacked.buffers)))

    source_bytes = sum(len(b.data) for b in source.buffers if b.data is not None)
    # Every weight lands in exactly one segment (metadata buffers are dropped but small).
    assert 0.9 * source_bytes <= weight_bytes <= source_bytes


def test_repacking_the_whole_model_keeps_it_runnable(test_models, tmp_path):
    """pack_model is the flatbuffer writer every segment goes through."""
    path = tmp_path / "repacked.tflite"
    path.write_bytes(pack_model(load_model(test_models["int8"])))
    original, repacked = Segment(test_models["int8"]), Segment(path)
    tensor = np.arange(np.prod(original.input_spec.shape), dtype=np.uint8)
    tensor = tensor.reshape(original.input_spec.shape)
    np.testing.assert_array_equal(original.run(tensor), repacked.run(tensor))


# --- CLI ----------------------------------------------------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = convert([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_prints_one_row_per_cut_point(test_models, capsys):
    code, out, _ = run_cli(capsys, "analyze", test_models["int8"])
    graph = load_graph(test_models["int8"])
    assert code == 0
    assert f"{len(graph.cut_points)} valid cut points" in out
    rows = out.splitlines()[2:]
    assert [int(row.split()[0]) for row in rows] == [c.op_index for c in graph.cut_points]
    assert all(" int8 " in row for row in rows[1:])


def test_split_prints_the_plan(test_models, tmp_path, capsys):
    code, out, _ = run_cli(
        capsys, "split", test_models["float"], "--stages", "3", "--out", tmp_path
    )
    assert code == 0
    manifest = Manifest.load(tmp_path)
    for stage in manifest.stages:
        assert f"{stage.first_op}..{stage.last_op}" in out
    assert "(result)" in out and "balance (bottleneck/mean)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cuts", "1,2"], "not valid cut point(s): 2"),
        (["--cuts", "x"], "expected comma-separated op indices"),
        (["--stages", "99"], "cannot make 99 stages"),
        (["--stages", "3", "--cuts", "1"], "--stages 3 needs 2 cuts"),
        ([], "give --stages N, --cuts"),
    ],
)
def test_split_refuses_bad_requests_in_one_line(test_models, tmp_path, capsys, args, message):
    graph = load_graph(test_models["int8"])
    assert 1 in {c.op_index for c in graph.cut_points}
    assert 2 not in {c.op_index for c in graph.cut_points}
    try:
        code, _, err = run_cli(capsys, "split", test_models["int8"], "--out", tmp_path, *args)
    except SystemExit as exc:  # argparse's own type errors
        code, err = exc.code, capsys.readouterr().err
    assert code == 2
    assert message in err
    assert not (tmp_path / "manifest.json").exists()
    if "aiotedge-convert: error:" in err and "usage" not in err:
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("two_inputs", "has 2 inputs and 1 outputs"),
        ("missing", "cannot read model"),
        ("not_tflite", "not a TFLite flatbuffer"),
    ],
)
def test_split_refuses_unusable_models(test_models, tmp_path, capsys, model, message):
    paths = dict(test_models, missing=tmp_path / "missing.tflite")
    paths["not_tflite"] = tmp_path / "labels.tflite"
    paths["not_tflite"].write_text("\n".join(LABELS))
    code, out, err = run_cli(capsys, "split", paths[model], "--stages", "2", "--out", tmp_path)
    assert code == 2 and not out
    assert err.startswith("aiotedge-convert: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("lines", [LABELS[:-1], ("background", *LABELS)], ids=["short", "long"])
def test_split_refuses_labels_that_do_not_match_the_models_classes(
    test_models, tmp_path, capsys, lines
):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, "split", test_models["int8"], "--stages", "2",
                             "--out", tmp_path / "split", "--labels", labels)
    assert code == 2 and not out
    assert err.strip() == (
        f"aiotedge-convert: error: {labels} has {len(lines)} lines, but the model has "
        f"{len(LABELS)} classes (its output is 1x{len(LABELS)}): give one label a line, in "
        "class order")
    assert not (tmp_path / "split").exists()


def test_import_says_a_tflite_model_needs_none(test_models, tmp_path, capsys):
    model = test_models["int8"]
    code, out, err = run_cli(capsys, "import", model, "--out", tmp_path / "again.tflite")
    assert code == 2 and not out
    assert err.strip() == (f"aiotedge-convert: error: {model} is a .tflite model already: it "
                           f"needs no import; split it as it is: aiotedge-convert split {model} "
                           "--stages N --out DIR")


def test_console_entry_point_runs_as_a_module(test_models):
    done = subprocess.run(
        [sys.executable, "-m", "aiotedge_converter", "analyze", str(test_models["float"])],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "valid cut points" in done.stdout


# --- verify -------------------------------------------------------------------------------


@pytest.fixture
def int8_split(test_models, test_labels, tmp_path) -> Manifest:
    out = tmp_path / "split"
    return split(test_models["int8"], out, "--stages", "3", "--labels", str(test_labels))


def test_verify_passes_a_good_split(int8_split, generated_photos, capsys):
    code, out, _ = run_cli(capsys, "verify", int8_split.directory, "--images", generated_photos)
    assert code == 0
    lines = out.splitlines()
    for name in ("gradient.png", "noise.jpg", "checker.bmp", "tall.png"):
        line = next(line for line in lines if line.startswith(name))
        assert "identical" in line and "top-1" in line
        assert any(label in line for label in LABELS)
    assert "all 4 images match (tolerance 0)" in out


def test_verify_passes_a_float_split_within_tolerance(
    test_models, generated_photos, tmp_path, capsys
):
    split(test_models["float"], tmp_path, "--stages", "4")
    code, out, _ = run_cli(capsys, "verify", tmp_path, "--images", generated_photos)
    assert code == 0 and "tolerance 1e-05" in out


def test_verify_finds_a_segment_whose_weights_changed(int8_split, generated_photos, capsys):
    path = int8_split.segment_path(1)
    model = load_model(path)
    weights = max((b for b in model.buffers if b.data is not None), key=lambda b: len(b.data))
    weights.data = (np.asarray(weights.data, dtype=np.uint8) ^ 0x55).astype(np.uint8)
    path.write_bytes(pack_model(model))
    # Re-seal the manifest, as a careless edit would: the sha256 check alone cannot catch it.
    data = json.loads((int8_split.directory / "manifest.json").read_text())
    data["stages"][1]["sha256"] = sha256_file(path)
    (int8_split.directory / "manifest.json").write_text(json.dumps(data))

    code, out, _ = run_cli(capsys, "verify", int8_split.directory, "--images", generated_photos)
    assert code == 1
    assert "DIFFERENT" in out and "max abs diff" in out
    assert "differ beyond tolerance 0" in out


def test_verify_refuses_a_segment_that_does_not_match_its_sha256(
    int8_split, generated_photos, capsys
):
    path = int8_split.segment_path(2)
    path.write_bytes(path.read_bytes() + b"\0")
    code, _, err = run_cli(capsys, "verify", int8_split.directory, "--images", generated_photos)
    assert code == 2 and "the manifest expects" in err


def test_verify_refuses_the_wrong_source_model(test_models, int8_split, generated_photos, capsys):
    code, _, err = run_cli(
        capsys,
        "verify",
        int8_split.directory,
        "--images",
        generated_photos,
        "--model",
        test_models["float"],
    )
    assert code == 2 and "wrong source model" in err


def test_verify_finds_the_source_with_model_when_not_copied(
    test_models, generated_photos, tmp_path, capsys
):
    split(test_models["int8"], tmp_path, "--stages", "2", "--no-copy-source")
    code, _, err = run_cli(capsys, "verify", tmp_path, "--images", generated_photos)
    assert code == 2 and "pass --model with int8.tflite" in err
    code, out, _ = run_cli(
        capsys, "verify", tmp_path, "--images", generated_photos, "--model", test_models["int8"]
    )
    assert code == 0 and "all 4 images match" in out


def test_verify_needs_images(int8_split, tmp_path, capsys):
    code, _, err = run_cli(capsys, "verify", int8_split.directory, "--images", tmp_path / "none")
    assert code == 2 and "not a folder of images" in err
