"""The last stage's reading of a model's outputs: the results of its kind (docs/models.md).

Pure functions of the output tensors, the manifest (kind, labels, tensor specs), the frame's
view (where the picture lies in the camera's frame, contracts.geometry) and the last stage's
filter (a minimum score and a label allow-list, for every kind): the stage daemon calls them
and publishes what they give.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aiotedge.contracts.events import (
    ClassShare,
    DetectedObject,
    Keypoint,
    Score,
    results_text,
    top_k,
)
from aiotedge.contracts.geometry import Box, View
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.tensors import TensorSpec

#: the 17 keypoints of COCO, in the order MoveNet (and other COCO pose models) give them
COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
#: decimals of a normalised coordinate or score, and of a pixel coordinate, in the JSON
DIGITS = 6
PIXEL_DIGITS = 2


class UnusableOutputError(ValueError):
    """The segment ran but its output cannot be passed on (JSON has no NaN)."""


@dataclass(frozen=True)
class ResultFilter:
    """Which results a prediction keeps: a score of at least `min_score` (for segmentation: a
    share of the frame) and, when `labels` names some, only those (a label or its first name:
    `hotdog` for `hotdog, hot dog, red hot`; a keypoint's name for pose)."""

    min_score: float = -np.inf
    labels: frozenset[str] = frozenset()

    @classmethod
    def of(cls, min_score: float | None, labels: Sequence[str]) -> ResultFilter:
        """From the last stage's settings (None: no minimum)."""
        return cls(-np.inf if min_score is None else min_score, frozenset(labels))

    def keeps(self, label: str, score: float) -> bool:
        if score < self.min_score:
            return False
        return not self.labels or label in self.labels \
            or label.split(",", maxsplit=1)[0].strip() in self.labels


@dataclass(frozen=True)
class Results:
    """One frame's results: the field of its kind is filled (events.RESULT_FIELDS)."""

    kind: str
    top: list[Score] = field(default_factory=list)
    objects: list[DetectedObject] = field(default_factory=list)
    keypoints: list[Keypoint] = field(default_factory=list)
    classes: list[ClassShare] = field(default_factory=list)
    #: segmentation: the class index of each pixel (at the model's output size), else None
    mask: np.ndarray | None = None

    def summary(self) -> str:
        return results_text(self.kind, self.top, self.objects, self.keypoints, self.classes)


def read_results(outputs: Sequence[np.ndarray], specs: Sequence[TensorSpec],
                 manifest: Manifest, view: View | None, *, top: int,
                 keep: ResultFilter) -> Results:
    """The results of the model's kind from the last stage's outputs (of these specs).

    Raises UnusableOutputError for outputs that are not finite (no JSON holds them)."""
    values = [spec.dequantize(np.asarray(out)) for out, spec in zip(outputs, specs, strict=True)]
    if not all(np.isfinite(v).all() for v in values):
        raise UnusableOutputError("the model's output is not finite (NaN or infinity): no "
                                  "prediction can be made of it")
    if manifest.kind == "detection":
        return Results("detection", objects=detected_objects(values, manifest, view, keep))
    if manifest.kind == "pose":
        return Results("pose", keypoints=keypoints(values[0], view, keep))
    if manifest.kind == "segmentation":
        mask = class_mask(outputs[0], specs[0])
        return Results("segmentation", classes=class_shares(mask, manifest, keep), mask=mask)
    best = top_k(outputs[0], specs[0], manifest, top)
    return Results("classification", top=[s for s in best if keep.keeps(s.label, s.score)])


def detected_objects(values: Sequence[np.ndarray], manifest: Manifest, view: View | None,
                     keep: ResultFilter) -> list[DetectedObject]:
    """The post-processing op's detections (boxes ymin, xmin, ymax, xmax in 0..1; classes;
    scores; count), best first. Its class numbers count from the first real class, as the
    labels do (the converter drops a label map's background line)."""
    boxes, classes, scores, count = (v.reshape(-1) for v in values)
    boxes = boxes.reshape(-1, 4)
    found = []
    for i in range(min(int(count[0]), len(scores))):
        index, score = int(classes[i]), float(scores[i])
        label = manifest.label(index)
        if not keep.keeps(label, score):
            continue
        ymin, xmin, ymax, xmax = np.clip(boxes[i], 0.0, 1.0).tolist()
        box = Box(*(round(c, DIGITS) for c in (xmin, ymin, xmax, ymax)))
        found.append(DetectedObject(index=index, label=label, score=round(score, DIGITS),
                                    box=box, box_px=_box_px(box, view)))
    return sorted(found, key=lambda o: -o.score)


def keypoints(values: np.ndarray, view: View | None, keep: ResultFilter) -> list[Keypoint]:
    """Named keypoints from a [1,1,K,3] output of (y, x, score), in the model's order."""
    rows = values.reshape(-1, 3)
    names = COCO_KEYPOINTS if len(rows) == len(COCO_KEYPOINTS) else \
        tuple(f"keypoint{i}" for i in range(len(rows)))
    found = []
    for name, (y_raw, x_raw, score) in zip(names, rows.tolist(), strict=True):
        if not keep.keeps(name, score):
            continue
        x, y = min(max(x_raw, 0.0), 1.0), min(max(y_raw, 0.0), 1.0)
        x_px, y_px = view.point_to_source(x, y) if view is not None else (None, None)
        found.append(Keypoint(name=name, x=round(x, DIGITS), y=round(y, DIGITS),
                              score=round(score, DIGITS),
                              x_px=None if x_px is None else round(x_px, PIXEL_DIGITS),
                              y_px=None if y_px is None else round(y_px, PIXEL_DIGITS)))
    return found


def class_mask(output: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """The class of each pixel, [H, W]: the best score's index, or an ARG_MAX's own output.

    Scores are compared as stored: a quantized tensor's order is its real values' order."""
    if len(spec.shape) == 4 and spec.shape[3] > 1:
        mask = np.argmax(output[0], axis=-1)
    else:
        mask = output.reshape(spec.shape[1], spec.shape[2])
    return mask.astype(np.uint8 if mask.max(initial=0) <= np.iinfo(np.uint8).max else np.uint16)


def class_shares(mask: np.ndarray, manifest: Manifest, keep: ResultFilter) -> list[ClassShare]:
    """The share of the pixels each class has, largest first (classes with none left out)."""
    counts = np.bincount(mask.reshape(-1))
    shares = []
    for index in np.flatnonzero(counts):
        share, label = float(counts[index]) / mask.size, manifest.label(int(index))
        if keep.keeps(label, share):
            shares.append(ClassShare(index=int(index), label=label, share=round(share, DIGITS)))
    return sorted(shares, key=lambda c: -c.share)


def _box_px(box: Box, view: View | None) -> Box | None:
    if view is None:
        return None
    mapped = view.box_to_source(box)
    return Box(*(round(c, PIXEL_DIGITS) for c in (mapped.xmin, mapped.ymin, mapped.xmax,
                                                  mapped.ymax)))
