"""Detection, pose and segmentation through the live pipeline: stage processes, a real
mosquitto, the shared models and photos, checked against what TensorFlow Lite Support's own
tests expect of them (../shared/README.md)."""

from __future__ import annotations

import io
import queue

import numpy as np
import pytest
from aiotedge_converter.cli import main as convert
from PIL import Image

from aiotedge.config.sections import StageConfig
from aiotedge.contracts.manifest import Manifest
from aiotedge.media.image import read_photo
from aiotedge.nodes.daemons.local import LocalPipeline
from aiotedge.nodes.mqtt.session import MqttSession
from tests.conftest import SHARED_DATA

#: tflite-support's expected detections of cats_and_dogs.jpg: label, score, (x, y, w, h) px
EXPECTED_OBJECTS = [("cat", 0.64, (54, 396, 393, 196)), ("cat", 0.61, (602, 157, 394, 447)),
                    ("cat", 0.56, (260, 394, 180, 209)), ("dog", 0.50, (389, 197, 278, 409))]
#: how far our boxes may lie from theirs, in pixels of the 1200x600 photo: their ±3 px, plus
#: what JPEG decoding adds (Pillow's libjpeg and their decoder differ in the last bits of the
#: pixels, which moves two of the four boxes by up to 7 px; docs/models.md)
BOX_TOLERANCE_PX = 8
SCORE_TOLERANCE = 0.02
DEFAULT_STAGE = StageConfig()


def shared(path: str):
    if not (SHARED_DATA / path).exists():
        pytest.skip(f"{SHARED_DATA / path} not found (set AIOTEDGE_SHARED_DATA)")
    return SHARED_DATA / path


def split(model, out, *args: str) -> Manifest:
    assert convert(["split", str(model), "--out", str(out), "--stages", "3", *args]) == 0
    return Manifest.load(out)


def predict_one(manifest: Manifest, broker, photo, stage: StageConfig = DEFAULT_STAGE):
    with LocalPipeline(manifest, broker=broker.address, stage=stage) as pipeline:
        [(name, prediction)] = list(pipeline.predict([(photo.name, read_photo(photo))]))
    assert name == photo.name
    assert prediction.kind == manifest.kind
    return prediction


def test_the_cats_and_the_dog_are_found_where_tflite_support_finds_them(broker, tmp_path):
    model = shared("detection/coco_ssd_mobilenet_v1_1.0_quant.tflite")
    manifest = split(model, tmp_path, "--labels", str(shared("detection/coco_labels.txt")),
                     "--resize", "sampled")
    prediction = predict_one(manifest, broker, shared("detection/cats_and_dogs.jpg"),
                             StageConfig(min_score=0.45, labels=("cat", "dog")))
    found = [(o.label, o.score, o.box_px) for o in prediction.objects]
    assert len(found) == len(EXPECTED_OBJECTS), found
    for (label, score, box), (want_label, want_score, (x, y, w, h)) in zip(
            found, EXPECTED_OBJECTS, strict=True):
        assert label == want_label
        assert score == pytest.approx(want_score, abs=SCORE_TOLERANCE)
        assert box is not None
        got = (box.xmin, box.ymin, box.width, box.height)
        assert got == pytest.approx((x, y, w, h), abs=BOX_TOLERANCE_PX), (label, got)
    assert prediction.summary().startswith("local#0 4 objects: cat 0.6")


def test_movenet_finds_the_girl_s_keypoints(broker, tmp_path):
    manifest = split(shared("pose/movenet_singlepose_lightning_int8.tflite"), tmp_path)
    assert (manifest.preprocessing.mean, manifest.preprocessing.std) == (0.0, 1.0)
    prediction = predict_one(manifest, broker, shared("pose/girl.jpg"))
    assert len(prediction.keypoints) == 17
    assert prediction.keypoints[0].name == "nose"
    confident = [k for k in prediction.keypoints if k.score > 0.3]
    assert len(confident) >= 12, prediction.keypoints
    assert all(0 <= k.x_px <= 192 and 0 <= k.y_px <= 192 for k in prediction.keypoints)


def test_deeplab_s_mask_matches_the_expected_one(broker, tmp_path):
    manifest = split(shared("segmentation/deeplabv3_257.tflite"), tmp_path, "--labels",
                     str(shared("segmentation/pascal_labels.txt")))
    masks: queue.Queue[bytes] = queue.Queue()
    watcher = MqttSession(broker.address, "mask-watcher")
    watcher.subscribe("aiotedge-frames/local/mask/local", lambda m: masks.put(m.payload))
    watcher.start()
    assert watcher.wait_connected(10)
    try:
        prediction = predict_one(manifest, broker, shared("segmentation/segmentation_input.jpg"))
        png = Image.open(io.BytesIO(masks.get(timeout=30)))
    finally:
        watcher.stop()
    assert png.text["frame_id"] == prediction.frame_id
    mask = np.asarray(png).astype(np.int32)
    golden = np.asarray(Image.open(shared("segmentation/segmentation_golden.png")))
    assert mask.shape == golden.shape
    assert np.mean(mask * 10 != golden) <= 0.01
    shares = {c.label: c.share for c in prediction.classes}
    assert set(shares) == {"background", "person", "horse"}
    assert sum(shares.values()) == pytest.approx(1.0)
