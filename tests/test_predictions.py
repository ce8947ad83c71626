"""The prediction JSON per kind: what subscribers read (docs/topics.md)."""

from __future__ import annotations

import json

import pytest

from aiotedge.contracts.events import (
    ClassShare,
    DetectedObject,
    Keypoint,
    Prediction,
    Score,
)
from aiotedge.contracts.geometry import Box

RESULTS = {
    "classification": {"top": [Score(281, "tabby", 0.8)]},
    "detection": {"objects": [DetectedObject(17, "cat", 0.64, Box(0.05, 0.66, 0.37, 0.99),
                                             Box(54.0, 396.0, 447.0, 592.0))]},
    "pose": {"keypoints": [Keypoint("nose", 0.5, 0.2, 0.7, 96.0, 38.4)]},
    "segmentation": {"classes": [ClassShare(0, "background", 0.8), ClassShare(15, "person", 0.2)]},
}


@pytest.mark.parametrize("kind", RESULTS)
def test_a_prediction_carries_its_own_kind_of_result_and_reads_back_equal(kind):
    results = {"top": [], **RESULTS[kind]}
    prediction = Prediction("cam-1-0", "cam", 0, 1.0e9, latency_ms=40.0, stages=[], kind=kind,
                            **results)
    data = json.loads(prediction.to_json())
    assert (data["kind"], data["schema"]) == (kind, 2)
    carried = {"top", "objects", "keypoints", "classes"} & data.keys()
    assert carried == set(RESULTS[kind])
    assert Prediction.from_json(prediction.to_json()) == prediction


def test_a_first_version_prediction_reads_as_a_classification():
    old = {"frame_id": "f", "source": "c", "seq": 1, "captured_at": 1.0, "latency_ms": 2.0,
           "top": [{"index": 1, "label": "a", "score": 0.5}], "stages": []}
    prediction = Prediction.from_json(json.dumps(old))
    assert (prediction.kind, prediction.schema, prediction.top) == (
        "classification", 1, [Score(1, "a", 0.5)])


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown kind 'depth'"):
        Prediction("f", "c", 1, 1.0, [], 1.0, [], kind="depth")
