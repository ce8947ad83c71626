"""Converter on the real ImageNet MobileNetV2 (uint8) and photos in ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest
from aiotedge_converter.cli import main as convert
from aiotedge_converter.split import default_preprocessing

from aiotedge.contracts.manifest import Manifest
from aiotedge.media.image import decode_image, list_images, preprocess
from aiotedge.tflite.graph import load_graph
from aiotedge.tflite.runtime import Segment
from support.paths import SHARED_IMAGES, SHARED_LABELS, SHARED_MODEL

pytestmark = pytest.mark.shared_data

EXPECTED_TOP1 = {
    "parrot.jpg": "macaw",
    "cat.bmp": "Egyptian cat",
    "dog.bmp": "golden retriever",
    "grace_hopper.bmp": "military uniform",
    "hot_dog.jpg": "hotdog",
}


@pytest.fixture(scope="module")
def whole_model_outputs(shared_data) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Photo name -> (stage-0 input tensor, whole-model output), computed once."""
    whole = Segment(SHARED_MODEL)
    prep = default_preprocessing(whole.input_spec, None, None)
    results = {}
    for path in list_images(SHARED_IMAGES):
        tensor = preprocess(decode_image(path.read_bytes()), prep, whole.input_spec)
        results[path.name] = (tensor, whole.run(tensor))
    assert len(results) == 10
    return results


def test_mobilenet_has_35_cut_points(shared_data):
    graph = load_graph(SHARED_MODEL)
    assert len(graph.ops) == 66
    assert len(graph.cut_points) == 35
    assert all(c.tensor.dtype == "uint8" for c in graph.cut_points)
    # MobileNetV2 1.0/224 is about 300 M multiply-accumulates.
    assert 290e6 < graph.total_macs < 310e6


@pytest.mark.parametrize("stages", [2, 3, 4, 5, 6])
def test_chain_is_bit_identical_to_the_whole_model(
    shared_data, whole_model_outputs, tmp_path, stages
):
    assert (
        convert(
            [
                "split",
                str(SHARED_MODEL),
                "--stages",
                str(stages),
                "--out",
                str(tmp_path),
                "--labels",
                str(SHARED_LABELS),
            ]
        )
        == 0
    )
    manifest = Manifest.load(tmp_path)
    assert len(manifest.stages) == stages
    assert (manifest.preprocessing.mean, manifest.preprocessing.std) == (128.0, 128.0)
    for before in manifest.stages[:-1]:
        assert before.output.dtype == "uint8"
    chain = [Segment(manifest.check_segment(i)) for i in range(stages)]
    for name, (tensor, expected) in whole_model_outputs.items():
        actual = tensor
        for segment in chain:
            actual = segment.run(actual)
        np.testing.assert_array_equal(actual, expected, err_msg=name)
        label = manifest.label(int(np.argmax(actual)))
        if name in EXPECTED_TOP1:
            assert label.split(",")[0] == EXPECTED_TOP1[name], name


def test_verify_cli_on_the_real_model(shared_data, tmp_path, capsys):
    assert (
        convert(
            [
                "split",
                str(SHARED_MODEL),
                "--stages",
                "3",
                "--out",
                str(tmp_path),
                "--labels",
                str(SHARED_LABELS),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert convert(["verify", str(tmp_path), "--images", str(SHARED_IMAGES)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line}
    for name, label in EXPECTED_TOP1.items():
        assert "identical" in lines[name] and f": {label}" in lines[name]
    assert "all 10 images match (tolerance 0)" in out
