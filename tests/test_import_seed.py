"""The seed paper's hand split of MobileNetV2 (27/27/36/53/14 Keras layers) against the planner.

The built-in `--arch mobilenet_v2` is the paper's model shape (MobileNetV2 features, pooling,
dropout and a softmax dense: 157 layers), here at 224x224 with random weights and 10 classes
(the PlantVillage tomato classes).
"""

from __future__ import annotations

import re

import pytest
from aiotedge_converter.cli import main as convert
from aiotedge_converter.metadata import read_import_info

from aiotedge.contracts.manifest import Manifest
from aiotedge.tflite.graph import load_graph
from support.models import import_model

SEED_SPLIT = "layers:27,27,36,53,14"
#: The Add layers that end each of the seed paper's first four parts.
SEED_CUT_LAYERS = ("block_2_add", "block_5_add", "block_9_add", "block_15_add")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    out = tmp_path_factory.mktemp("mobilenet") / "mobilenet_v2_224.tflite"
    args = ["--arch", "mobilenet_v2", "--input-size", "224", "--classes", "10"]
    stdout = import_model(None, out, *args)
    assert "157 Keras layers" in stdout
    return out


def test_builtin_mobilenet_is_the_seed_papers_157_layer_model(mobilenet):
    graph = load_graph(mobilenet)
    info = read_import_info(graph.model)
    assert info is not None and len(info.layers) == 157
    assert info.source.startswith("mobilenet_v2(input_size=224, alpha=1, classes=10")
    assert graph.tensor(graph.output_index).shape == (1, 10)
    # MobileNetV2 1.0/224 features are about 300 M MACs.
    assert 290e6 < graph.total_macs < 310e6


def test_seed_split_beside_the_balanced_one(mobilenet, tmp_path, capsys):
    code = convert(
        [
            "split",
            str(mobilenet),
            "--strategy",
            SEED_SPLIT,
            "--out",
            str(tmp_path / "seed"),
            "--plot",
            str(tmp_path / "plan.png"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    for count, layer in zip((27, 54, 90, 143), SEED_CUT_LAYERS, strict=True):
        assert f"Keras layer {count} ({layer}): clean cut after op" in out
    manifest = Manifest.load(tmp_path / "seed")
    assert len(manifest.stages) == 5
    assert f"{SEED_SPLIT} beside the balanced plan for the same 5 stages" in out
    # The side-by-side table's bottleneck row: seed (1.00x), then balanced relative to it.
    row = [line for line in out.splitlines() if line.startswith("bottleneck ")][-1]
    ratios = [float(r) for r in re.findall(r"([0-9.]+)x", row)]
    assert ratios[0] == 1.0 and ratios[1] <= 0.75, row
    assert (tmp_path / "plan.png").read_bytes().startswith(PNG_MAGIC)
