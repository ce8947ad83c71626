"""`aiotedge-convert import`: Keras files and SavedModels to .tflite, then the one splitter.

Every import runs `python -m converter import ...` in a subprocess (TensorFlow never enters the
test process). Each source is converted once per session.
"""

from __future__ import annotations

import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from aiotedge_converter.cli import main as convert
from aiotedge_converter.metadata import read_import_info
from aiotedge_converter.verify import FLOAT_TOLERANCE, load_chain, run_chain

from aiotedge.contracts.manifest import Manifest
from aiotedge.media.image import decode_image, list_images, preprocess
from aiotedge.tflite.graph import load_graph
from aiotedge.tflite.runtime import Segment
from support.models import ARCH, HEIGHT, WIDTH, build_keras_sources, import_model
from support.reference import photo_inputs

#: The small CNN's flattened Keras layers (input, conv/bn/relu ..., add, pooling, dense).
SMALL_LAYERS = 20


def split(model: Path, out: Path, *args: str) -> Manifest:
    assert convert(["split", str(model), "--out", str(out), *args]) == 0
    return Manifest.load(out)


@pytest.fixture(scope="session")
def keras_sources(tmp_path_factory, generated_photos) -> dict[str, Path]:
    inputs = photo_inputs(generated_photos, HEIGHT, WIDTH)
    return build_keras_sources(tmp_path_factory.mktemp("keras"), inputs)


@pytest.fixture(scope="session")
def imported(tmp_path_factory, keras_sources, generated_photos) -> dict[str, Path]:
    """Each source kind through `import`, with each quantization once."""
    out = tmp_path_factory.mktemp("imported")
    jobs = {
        "float32": (keras_sources["keras"], ()),
        "int8": (
            keras_sources["h5"],
            ("--quantize", "int8", "--calibration", str(generated_photos)),
        ),
        "float16": (keras_sources["keras"], ("--quantize", "float16")),
        "dynamic": (keras_sources["saved_model"], ("--quantize", "dynamic")),
    }
    paths = {name: out / f"{name}.tflite" for name in jobs}
    # Two conversions at a time: each is mostly one busy core.
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {
            name: pool.submit(import_model, source, paths[name], *args)
            for name, (source, args) in jobs.items()
        }
        for name, run in runs.items():
            assert f"wrote {paths[name]}" in run.result()
    return paths


def test_float32_import_records_its_source_and_the_keras_layers(imported):
    graph = load_graph(imported["float32"])
    info = read_import_info(graph.model)
    assert info is not None
    assert (info.source, info.quantize, info.mean, info.std) == (
        "model.keras",
        "float32",
        127.5,
        127.5,
    )
    assert len(info.layers) == SMALL_LAYERS
    assert info.layers[0].kind == "InputLayer" and info.layers[-1].kind == "Dense"
    assert graph.tensor(graph.input_index).shape == (1, HEIGHT, WIDTH, 3)


def test_float32_chain_matches_keras(imported, keras_sources, generated_photos, tmp_path):
    manifest = split(imported["float32"], tmp_path, "--stages", "4")
    expected = np.load(keras_sources["outputs"])
    chain = load_chain(manifest)
    for index, path in enumerate(list_images(generated_photos)):
        tensor = preprocess(
            decode_image(path.read_bytes()), manifest.preprocessing, manifest.source.input
        )
        actual = run_chain(chain, tensor)
        np.testing.assert_allclose(actual[0], expected[index], rtol=0, atol=FLOAT_TOLERANCE)


def test_int8_import_is_calibrated_and_verified_against_the_float_one(
    imported, generated_photos, tmp_path, capsys
):
    graph = load_graph(imported["int8"])
    info = read_import_info(graph.model)
    assert info is not None and info.calibration_images == 4 and len(info.layers) == SMALL_LAYERS
    assert graph.tensor(graph.input_index).dtype == "uint8"
    assert {c.tensor.dtype for c in graph.cut_points} == {"int8"}
    manifest = split(imported["int8"], tmp_path, "--stages", "3")
    # The recorded normalisation, not the raw-pixel default of a quantized input.
    assert (manifest.preprocessing.mean, manifest.preprocessing.std) == (127.5, 127.5)
    capsys.readouterr()
    code = convert(
        [
            "verify",
            str(tmp_path),
            "--images",
            str(generated_photos),
            "--reference",
            str(imported["float32"]),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "all 4 images match (tolerance 0)" in out
    summary = next(line for line in out.splitlines() if line.startswith("top-1 agreement"))
    agree = sum(" agrees " in line for line in out.splitlines())
    assert f"with float32.tflite: {agree}/4" in summary
    assert "max probability difference" in summary


@pytest.mark.parametrize("kind", ["float16", "dynamic"])
def test_float16_and_dynamic_imports_split_and_match_their_whole_model(
    imported, generated_photos, tmp_path, kind
):
    graph = load_graph(imported[kind])
    if kind == "float16":
        # Every weight is dequantized up front; those ops must not block the cuts.
        assert len(graph.weight_ops) > 5
        assert len(graph.cut_points) == len(load_graph(imported["float32"]).cut_points)
    manifest = split(imported[kind], tmp_path, "--stages", str(len(graph.cut_points) + 1))
    whole = Segment(imported[kind])
    chain = load_chain(manifest)
    for path in list_images(generated_photos):
        tensor = preprocess(
            decode_image(path.read_bytes()), manifest.preprocessing, whole.input_spec
        )
        np.testing.assert_allclose(
            run_chain(chain, tensor), whole.run(tensor), rtol=0, atol=FLOAT_TOLERANCE
        )


def test_layers_strategy_maps_counts_to_cuts_and_reports_unclean_ones(
    imported, tmp_path, capsys
):
    # 9 layers end with the first Add (a clean cut); 5 layers end inside a conv/bn/relu group.
    code = convert(
        [
            "split",
            str(imported["float32"]),
            "--out",
            str(tmp_path),
            "--strategy",
            f"layers:9,5,{SMALL_LAYERS - 14}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Keras layer 9 (add): clean cut after op" in out
    assert "Keras layer 14 " in out and "not a clean cut; using the next one" in out
    assert "beside the balanced plan for the same 3 stages" in out
    assert len(Manifest.load(tmp_path).stages) == 3


def test_layers_strategy_sees_through_float16_weight_ops(imported, tmp_path, capsys):
    """The same Keras boundaries as float32, though DEQUANTIZE ops come first, named by layer."""
    notes = {}
    for kind in ("float32", "float16"):
        args = ["split", str(imported[kind]), "--out", str(tmp_path / kind)]
        assert convert([*args, "--strategy", f"layers:9,5,{SMALL_LAYERS - 14}"]) == 0
        lines = capsys.readouterr().out.splitlines()
        notes[kind] = [re.sub(r"op \d+", "op N", line) for line in lines[:2]]
    assert notes["float16"] == notes["float32"]
    assert "clean cut" in notes["float16"][0] and "not a clean cut" in notes["float16"][1]


def test_builtin_architecture_with_a_weights_file_matches_keras(keras_sources, tmp_path):
    model = tmp_path / "arch.tflite"
    args = ["--arch", "mobilenet_v2", "--input-size", str(ARCH["input_size"])]
    args += ["--alpha", str(ARCH["alpha"]), "--classes", str(ARCH["classes"])]
    stdout = import_model(None, model, *args, "--weights", str(keras_sources["arch_weights"]))
    assert "weights=arch.weights.h5" in stdout and "157 Keras layers" in stdout
    manifest = split(model, tmp_path / "split", "--strategy", "layers:27,27,36,53,14")
    chain = load_chain(manifest)
    inputs, expected = np.load(keras_sources["arch_inputs"]), np.load(keras_sources["arch_outputs"])
    for tensor, output in zip(inputs, expected, strict=True):
        actual = run_chain(chain, tensor[None])
        np.testing.assert_allclose(actual[0], output, rtol=0, atol=FLOAT_TOLERANCE)


@pytest.mark.parametrize(
    "case",
    [
        ("float32", ["--strategy", "layers:5,5"], "add up to 10, the Keras model has 20"),
        ("dynamic", ["--strategy", "layers:10,10"], "needs the Keras layer list"),
        ("float32", ["--strategy", "layers:9,11", "--cuts", "2"], "both choose the cuts"),
        ("float32", ["--strategy", "fastest"], "unknown --strategy 'fastest'"),
    ],
)
def test_layers_strategy_errors(imported, tmp_path, capsys, case):
    model, args, message = case
    code = convert(["split", str(imported[model]), "--out", str(tmp_path), *args])
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["MODEL", "--quantize", "int8"], "--quantize int8 needs --calibration DIR"),
        (["MODEL", "--arch", "mobilenet_v2", "--input-size", "96", "--classes", "3"], "not both"),
        (["--arch", "mobilenet_v2"], "--arch needs --input-size S and --classes K"),
        (["MODEL"], "no such model file or directory"),
    ],
)
def test_import_refuses_bad_requests_before_loading_tensorflow(tmp_path, capsys, args, message):
    model = str(tmp_path / "missing.keras")
    args = [model if arg == "MODEL" else arg for arg in args]
    code = convert(["import", *args, "--out", str(tmp_path / "x.tflite")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.tflite").exists()
    assert "tensorflow" not in sys.modules
