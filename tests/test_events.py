"""A camera's events (nodes/observe/events.py): a tracked label appears, is still there at most
once per cool-down, is gone after some frames without it; what counts (score, area); and the
publisher's snapshot with the objects drawn (fakes for the session)."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from aiotedge.config.sections import EventsConfig
from aiotedge.contracts.events import ClassShare, DetectedObject, Keypoint, Prediction, Score
from aiotedge.contracts.geometry import Box, View
from aiotedge.contracts.topics import Topics
from aiotedge.media.draw import MARK_COLOUR
from aiotedge.media.sources.base import CapturedFrame
from aiotedge.nodes.observe.event_publisher import EventPublisher
from aiotedge.nodes.observe.events import APPEARED, GONE, PRESENT, Tracker, sightings

OPTIONS = EventsConfig(labels=["person", "cat"], min_score=0.5, min_area=0.01, cooldown=10,
                       gone_after=3)
PERSON = DetectedObject(0, "person", 0.9, Box(0.1, 0.2, 0.5, 0.9))


def detection(seq: int, *objects: DetectedObject) -> Prediction:
    return Prediction(f"cam0-x-{seq}", "cam0", seq, 1000.0 + seq, [], 10.0, [],
                      kind="detection", objects=list(objects))


def run(tracker: Tracker, frames: list[tuple[float, Prediction]]) -> list[tuple[int, str, int]]:
    """(seq, type, count) of every event the frames made, each frame at its own time."""
    made = []
    for now, prediction in frames:
        made += [(prediction.seq, e.type, e.count) for e in tracker.update(prediction, now).events]
    return made


def test_a_label_appears_once_is_still_there_once_per_cooldown_and_is_gone_after_n_frames():
    tracker = Tracker("cam0", OPTIONS)
    frames = [detection(0)] + [detection(seq, PERSON) for seq in range(1, 31)] + [
        detection(seq) for seq in range(31, 35)]
    # 30 frames of a person at 1 frame a second, with a cool-down of 10 s
    assert run(tracker, [(float(p.seq), p) for p in frames]) == [
        (1, APPEARED, 1), (11, PRESENT, 1), (21, PRESENT, 1), (33, GONE, 0)]


def test_a_frame_without_it_does_not_end_a_stay_and_counts_follow_the_latest_sighting():
    tracker = Tracker("cam0", OPTIONS)
    second = DetectedObject(0, "person", 0.6, Box(0.6, 0.2, 0.9, 0.9))
    assert tracker.counts() == {"person": 0, "cat": 0}
    changes = []
    for seq, objects in enumerate([[PERSON], [], [], [PERSON, second], [], [], []]):
        update = tracker.update(detection(seq, *objects), now=0.0)
        changes.append(update.counts)
        ids = {e.id for e in update.events}
    assert changes == [{"person": 1}, {}, {}, {"person": 2}, {}, {}, {"person": 0}]
    assert ids == {"cam0-person-1"}
    assert tracker.counts() == {"person": 0, "cat": 0}
    # the next stay is another one
    assert tracker.update(detection(9, PERSON), now=1.0).events[0].id == "cam0-person-2"


def test_what_counts_is_a_tracked_label_of_enough_score_and_area():
    tiny = DetectedObject(1, "person", 0.9, Box(0.5, 0.5, 0.55, 0.55))  # 0.25 % of the picture
    unsure = DetectedObject(2, "person", 0.4, Box(0.0, 0.0, 1.0, 1.0))
    dog = DetectedObject(3, "dog", 0.99, Box(0.0, 0.0, 1.0, 1.0))
    cat = DetectedObject(4, "cat, tabby", 0.7, Box(0.0, 0.0, 0.5, 0.5))
    found = sightings(detection(0, PERSON, tiny, unsure, dog, cat), OPTIONS)
    assert {label: [s.score for s in seen] for label, seen in found.items()} == {
        "person": [0.9], "cat": [0.7]}
    assert found["person"][0].area == 0.28
    tracker = Tracker("cam0", OPTIONS)
    assert run(tracker, [(0.0, detection(0, tiny, unsure, dog))]) == []


def test_every_kind_of_model_can_make_events():
    def prediction(kind: str, **results) -> Prediction:
        return Prediction("f", "cam0", 0, 1.0, results.pop("top", []), 1.0, [], kind=kind,
                          **results)

    body = [Keypoint("nose", 0.5, 0.2, 0.9), Keypoint("left_ankle", 0.4, 0.9, 0.8),
            Keypoint("right_ankle", 0.6, 0.95, 0.1)]
    pose = sightings(prediction("pose", keypoints=body), OPTIONS)["person"][0]
    assert pose.score == round((0.9 + 0.8 + 0.1) / 3, 6)
    assert pose.box == Box(0.4, 0.2, 0.5, 0.9)  # the sure keypoints' bounds
    assert "cat" in sightings(prediction("classification", top=[Score(281, "cat", 0.8)]),
                              OPTIONS)
    shares = [ClassShare(15, "person", 0.2), ClassShare(8, "cat", 0.001)]
    assert list(sightings(prediction("segmentation", classes=shares), OPTIONS)) == ["person"]


class FakeSession:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes | str, bool]] = []

    def publish(self, topic, payload, qos=0, retain=False):
        self.published.append((topic, payload, retain))

    def announce(self, topic, payload):
        self.published.append((topic, payload, True))


def test_the_publisher_sends_events_counts_and_a_snapshot_with_the_box_drawn_in_the_frame():
    topics = Topics("home")
    session = FakeSession()
    clock = iter(range(100))
    publisher = EventPublisher(session, topics, "cam0", OPTIONS, jpeg_quality=95,
                               clock=lambda: next(clock))
    publisher.start()
    frame = np.full((240, 320, 3), 60, np.uint8)
    picture = CapturedFrame(1.0, "f", pixels=lambda: frame)
    # the camera sent the right half, turned: the box comes back into the frame's pixels
    view = View(320, 240, crop=(160, 0, 160, 240), rotate=90)
    publisher.observe(detection(0, PERSON), picture, view)
    for seq in range(1, 4):
        publisher.observe(detection(seq), picture, view)
    counts = [(t, json.loads(p)) for t, p, retain in session.published if "/count/" in t]
    assert counts == [(topics.count("cam0", "person"), {"count": 0}),
                      (topics.count("cam0", "cat"), {"count": 0}),
                      (topics.count("cam0", "person"), {"count": 1}),
                      (topics.count("cam0", "person"), {"count": 0})]
    events = [json.loads(p) for t, p, _ in session.published if t == topics.events]
    assert [(e["type"], e["label"], e["camera"]) for e in events] == [
        (APPEARED, "person", "cam0"), (GONE, "person", "cam0")]
    assert events[0]["objects"][0]["box"] == {"xmin": 0.1, "ymin": 0.2, "xmax": 0.5, "ymax": 0.9}
    snapshots = [(t, p, retain) for t, p, retain in session.published if "snapshot" in t]
    assert [(t, retain) for t, _, retain in snapshots] == [
        (topics.event_snapshot("cam0", "person"), True)]
    drawn = np.asarray(Image.open(io.BytesIO(snapshots[0][1])).convert("RGB"), dtype=int)
    box = view.box_to_source(PERSON.box)
    marked = np.all(np.abs(drawn - MARK_COLOUR) < 60, axis=-1)
    rows, columns = np.nonzero(marked)
    # the box's outline where the view puts it (give or take the line and JPEG), the caption
    # above it
    assert abs(columns.min() - box.xmin) <= 4 and abs(columns.max() - box.xmax) <= 4
    assert abs(rows.max() - box.ymax) <= 4
    assert not marked[:, : int(box.xmin) - 4].any()
