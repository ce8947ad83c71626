"""The last stage's results per kind (aiotedge.tflite.results), from output tensors alone."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from aiotedge.contracts.events import Prediction, StageTiming
from aiotedge.contracts.geometry import Box, View
from aiotedge.contracts.manifest import Manifest, Preprocessing, SourceModel, StageSpec
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.media.image import mask_png
from aiotedge.tflite.results import (
    COCO_KEYPOINTS,
    ResultFilter,
    UnusableOutputError,
    read_results,
)

PHOTO = TensorSpec("photo", (1, 8, 8, 3), "uint8", 1 / 128, 128)
DETECTION = (TensorSpec("boxes", (), "float32"), TensorSpec("classes", (), "float32"),
             TensorSpec("scores", (), "float32"), TensorSpec("count", (), "float32"))
EVERYTHING = ResultFilter()


def manifest(kind: str, outputs: tuple[TensorSpec, ...], labels: tuple[str, ...] | None) \
        -> Manifest:
    stage = StageSpec(0, "s0.tflite", "0" * 64, PHOTO, outputs[0], 1, 0, 1,
                      extra_outputs=outputs[1:])
    return Manifest(SourceModel("m.tflite", "1" * 64, PHOTO, outputs[0], 1, outputs[1:]),
                    Preprocessing(8, 8), (stage,), labels=labels, kind=kind)


def read(kind: str, outputs: list[np.ndarray], specs: tuple[TensorSpec, ...],
         labels: tuple[str, ...] | None = None, view: View | None = None, *,
         keep: ResultFilter = EVERYTHING):
    return read_results(outputs, specs, manifest(kind, specs, labels), view, top=5, keep=keep)


def ssd_outputs() -> list[np.ndarray]:
    """Three detections as the post-processing op gives them: ymin, xmin, ymax, xmax."""
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, -0.1, 1.2, 0.5], [0.5, 0.5, 0.6, 0.6],
                       [0, 0, 0, 0]]], dtype=np.float32)
    return [boxes, np.array([[1, 0, 2, 0]], dtype=np.float32),
            np.array([[0.5, 0.9, 0.2, 0.0]], dtype=np.float32), np.array([3], dtype=np.float32)]


def test_detections_are_labelled_best_first_clipped_and_mapped_to_the_frame():
    results = read("detection", ssd_outputs(), DETECTION, ("cat", "dog", "person"),
                   view=View(200, 100))
    assert [(o.label, o.score) for o in results.objects] == [("cat", 0.9), ("dog", 0.5),
                                                             ("person", 0.2)]
    cat, dog = results.objects[:2]
    assert cat.box == Box(0.0, 0.0, 0.5, 1.0)  # clipped to the picture
    assert dog.box == Box(0.2, 0.1, 0.6, 0.5)
    assert dog.box_px == Box(40.0, 10.0, 120.0, 50.0)


def test_a_box_in_a_turned_crop_comes_back_in_the_camera_s_pixels():
    view = View(640, 480, crop=(100, 50, 200, 100), rotate=90)
    dog = read("detection", ssd_outputs(), DETECTION, ("cat", "dog", "person"), view).objects[1]
    assert dog.box_px == view.box_to_source(dog.box)
    assert dog.box_px is not None and dog.box_px.xmin >= 100 and dog.box_px.ymax <= 150


def test_a_minimum_score_and_a_label_allow_list_filter_detections():
    labels = ("cat", "dog", "person")
    kept = read("detection", ssd_outputs(), DETECTION, labels,
                keep=ResultFilter(0.3, frozenset({"dog", "person"})))
    assert [o.label for o in kept.objects] == ["dog"]


def test_classification_keeps_the_allowed_labels_above_the_minimum_by_their_first_name():
    scores = TensorSpec("scores", (1, 3), "uint8", 1 / 256, 0)
    labels = ("hotdog, hot dog, red hot", "cat", "dog")
    results = read("classification", [np.array([[200, 100, 10]], dtype=np.uint8)], (scores,),
                   labels, keep=ResultFilter(0.1, frozenset({"hotdog", "dog"})))
    assert [(s.label, s.score) for s in results.top] == [("hotdog, hot dog, red hot", 0.78125)]


def test_pose_keypoints_carry_coco_names_and_frame_pixels():
    rows = np.zeros((1, 1, 17, 3), dtype=np.float32)
    rows[0, 0, :, 2] = np.linspace(0.0, 0.8, 17)
    rows[0, 0, 0] = (0.25, 0.5, 0.9)  # the nose: y, x, score
    spec = TensorSpec("keypoints", (1, 1, 17, 3), "float32")
    results = read("pose", [rows], (spec,), view=View(400, 200), keep=ResultFilter(0.4))
    names = [k.name for k in results.keypoints]
    assert names[0] == "nose" and set(names) <= set(COCO_KEYPOINTS)
    assert all(k.score >= 0.4 for k in results.keypoints)
    nose = results.keypoints[0]
    assert (nose.x, nose.y, nose.x_px, nose.y_px) == (0.5, 0.25, 200.0, 50.0)


def test_segmentation_gives_class_shares_and_the_mask_of_the_best_class_per_pixel():
    scores = np.zeros((1, 2, 4, 3), dtype=np.float32)
    scores[0, :, :, 0] = 1.0  # background everywhere ...
    scores[0, 0, :3, 2] = 2.0  # ... but 3 of 8 pixels are a person
    spec = TensorSpec("scores", (1, 2, 4, 3), "float32")
    results = read("segmentation", [scores], (spec,), ("background", "cat", "person"))
    assert [(c.label, c.share) for c in results.classes] == [("background", 0.625),
                                                             ("person", 0.375)]
    assert results.mask is not None
    np.testing.assert_array_equal(results.mask, [[2, 2, 2, 0], [0, 0, 0, 0]])
    kept = read("segmentation", [scores], (spec,), ("background", "cat", "person"),
                keep=ResultFilter(0.0, frozenset({"person"})))
    assert [c.label for c in kept.classes] == ["person"]


def test_an_argmax_output_is_the_mask_itself():
    spec = TensorSpec("ArgMax", (1, 2, 2), "int64")
    results = read("segmentation", [np.array([[[0, 1], [1, 1]]], dtype=np.int64)], (spec,))
    assert [(c.index, c.label, c.share) for c in results.classes] == [(1, "1", 0.75),
                                                                      (0, "0", 0.25)]


def test_the_mask_png_holds_the_class_indices_and_the_frame_id():
    mask = np.array([[0, 15], [20, 3]], dtype=np.uint8)
    image = Image.open(io.BytesIO(mask_png(mask, "cam0-7")))
    assert image.mode == "L" and image.text["frame_id"] == "cam0-7"
    np.testing.assert_array_equal(np.asarray(image), mask)


def test_a_non_finite_output_is_refused():
    spec = TensorSpec("keypoints", (1, 1, 2, 3), "float32")
    with pytest.raises(UnusableOutputError, match="not finite"):
        read("pose", [np.full((1, 1, 2, 3), np.nan, dtype=np.float32)], (spec,))


@pytest.mark.parametrize(("kind", "text"), [
    ("classification", "cam#1 no class 3.0 ms"),
    ("detection", "cam#1 2 objects: cat 0.90, dog 0.50 3.0 ms"),
    ("pose", "cam#1 17 keypoints (mean score 0.40) 3.0 ms"),
    ("segmentation", "cam#1 background 0.62, person 0.38 3.0 ms"),
])
def test_every_kind_has_a_one_line_summary(kind, text):
    labels = ("cat", "dog", "person")
    results = {
        "classification": read("classification", [np.zeros((1, 3), np.float32)],
                               (TensorSpec("s", (1, 3), "float32"),), keep=ResultFilter(0.5)),
        "detection": read("detection", ssd_outputs(), DETECTION, labels,
                          keep=ResultFilter(0.3)),
        "pose": read("pose", [np.full((1, 1, 17, 3), 0.4, np.float32)],
                     (TensorSpec("k", (1, 1, 17, 3), "float32"),)),
        "segmentation": read("segmentation", [np.array([[[2, 2, 2, 0], [0, 0, 0, 0]]])],
                             (TensorSpec("m", (1, 2, 4), "int64"),), ("background", "x",
                                                                      "person")),
    }[kind]
    prediction = Prediction("f", "cam", 1, 0.0, results.top, 3.0, [StageTiming(0, 1.0, 2.0)],
                            kind=kind, objects=results.objects, keypoints=results.keypoints,
                            classes=results.classes)
    assert prediction.summary() == text
    assert Prediction.from_json(prediction.to_json()) == prediction
