"""What a camera's owner acts on: an object of a tracked label appears, is still there, is gone.

A model answers every frame; a person standing at the door for a minute is 1,800 answers at
30 fps, but one thing to act on. Like Frigate's tracked objects, each label a camera follows
goes through appeared -> present -> gone: `appeared` on the first frame that shows it, `present`
at most once every `cooldown` seconds while it stays, `gone` after `gone_after` frames in a row
without it (a frame the model misses does not end it). Only objects of at least `min_score`
whose box covers at least `min_area` of the picture count. The number of them in the latest
frame that showed the label is its count, which drops to 0 when the label is gone.

Pure: predictions in, events and counts out (the camera publishes them: event_publisher.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from aiotedge.config.sections import EventsConfig
from aiotedge.contracts.events import Keypoint, Prediction
from aiotedge.contracts.geometry import Box

APPEARED, PRESENT, GONE = "appeared", "present", "gone"
#: the label a pose model's one body is counted under
POSE_LABEL = "person"


@dataclass(frozen=True)
class Sighting:
    """One object of a tracked label in a frame."""

    label: str
    score: float
    #: the share of the picture the model saw that it covers (0..1)
    area: float = 1.0
    #: normalised in the picture the model saw; None: the whole picture (a class, a share)
    box: Box | None = None
    #: in the camera frame's pixels, when the prediction said it
    box_px: Box | None = None
    keypoints: tuple[Keypoint, ...] = ()


def sightings(prediction: Prediction, options: EventsConfig) -> dict[str, list[Sighting]]:
    """The objects of the tracked labels a prediction shows that count (score and area), by
    label, for every kind of model: a detection's objects, a pose model's body, a segmented
    class (its share of the picture is its area), a classifier's top class (the whole
    picture)."""
    found: list[Sighting] = []
    if prediction.kind == "detection":
        found = [Sighting(o.name, o.score, _area(o.box), o.box, o.box_px)
                 for o in prediction.objects]
    elif prediction.kind == "pose" and prediction.keypoints:
        found = [_body(prediction.keypoints, options.min_score)]
    elif prediction.kind == "segmentation":
        found = [Sighting(c.name, 1.0, c.share)
                 for c in prediction.classes if c.share > 0]
    elif prediction.top:
        best = prediction.top[0]
        found = [Sighting(best.name, best.score)]
    by_label: dict[str, list[Sighting]] = {}
    for sighting in found:
        if (sighting.label in options.labels and sighting.score >= options.min_score
                and sighting.area >= options.min_area):
            by_label.setdefault(sighting.label, []).append(sighting)
    return by_label


def _area(box: Box) -> float:
    return round(max(0.0, box.width) * max(0.0, box.height), 6)


def _bounds(points: list[tuple[float, float]]) -> Box:
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return Box(min(xs), min(ys), max(xs), max(ys))


def _body(keypoints: list[Keypoint], min_score: float) -> Sighting:
    """A pose model's body: scored by its keypoints' mean score, boxed by the sure ones."""
    score = sum(k.score for k in keypoints) / len(keypoints)
    sure = [k for k in keypoints if k.score >= min_score] or keypoints
    box = _bounds([(k.x, k.y) for k in sure])
    pixels = [(k.x_px, k.y_px) for k in sure if k.x_px is not None and k.y_px is not None]
    box_px = _bounds(pixels) if len(pixels) == len(sure) else None
    return Sighting(POSE_LABEL, round(score, 6), _area(box), box, box_px, tuple(keypoints))


@dataclass(frozen=True)
class ObjectEvent:
    """One message on `<prefix>/<pipeline>/events` (docs/topics.md, Events)."""

    type: str
    camera: str
    label: str
    #: the same for the appeared, present and gone events of one stay: `<camera>-<label>-<n>`
    id: str
    #: objects of the label in the frame (gone: 0)
    count: int
    #: the best score in the frame (gone: in the last frame that showed it)
    score: float
    #: the frame the event is about (gone: the frame that made it gone)
    frame_id: str
    #: when that frame was captured, and when the stay's first frame was (Unix seconds)
    captured_at: float
    started_at: float
    #: the objects of the label in the frame (gone: none)
    objects: list[Sighting] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self)
        for sighting in data["objects"]:
            for key in ("box", "box_px"):
                if sighting[key] is None:
                    del sighting[key]
            if not sighting["keypoints"]:
                del sighting["keypoints"]
        return json.dumps(data, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class TrackerUpdate:
    """What a prediction changed: the events to publish, and the labels whose count changed."""

    events: list[ObjectEvent]
    counts: dict[str, int]


@dataclass
class _Stay:
    """A label's time in view: from its first frame to the last of `gone_after` without it."""

    id: str
    started_at: float
    count: int
    score: float
    #: when its last event was made (the tracker's clock), for the cool-down
    last_event_at: float
    missed: int = 0


class Tracker:
    """A camera's labels, each absent or in view, followed frame by frame (one camera: its own
    frames' predictions, in the order they come)."""

    def __init__(self, camera: str, options: EventsConfig) -> None:
        self.camera = camera
        self.options = options
        self._stays: dict[str, _Stay] = {}
        self._stays_begun = 0

    def counts(self) -> dict[str, int]:
        """Every tracked label's count now."""
        return {label: self._stays[label].count if label in self._stays else 0
                for label in self.options.labels}

    def update(self, prediction: Prediction, now: float) -> TrackerUpdate:
        """Take one frame's prediction; `now` is the tracker's clock (seconds) for the
        cool-down: the camera's monotonic clock, a test's own numbers."""
        seen = sightings(prediction, self.options)
        events: list[ObjectEvent] = []
        counts: dict[str, int] = {}
        for label in self.options.labels:
            stay, objects = self._stays.get(label), seen.get(label, [])
            if objects:
                best = max(o.score for o in objects)
                if stay is None:
                    self._stays_begun += 1
                    stay = _Stay(f"{self.camera}-{label}-{self._stays_begun}",
                                 prediction.captured_at, 0, best, now)
                    self._stays[label] = stay
                    kind = APPEARED
                elif now - stay.last_event_at >= self.options.cooldown:
                    kind = PRESENT
                else:
                    kind = ""
                if len(objects) != stay.count:
                    counts[label] = len(objects)
                stay.count, stay.score, stay.missed = len(objects), best, 0
                if kind:
                    stay.last_event_at = now
                    events.append(self._event(kind, label, stay, prediction, objects))
            elif stay is not None:
                stay.missed += 1
                if stay.missed >= self.options.gone_after:
                    del self._stays[label]
                    stay.count = 0
                    counts[label] = 0
                    events.append(self._event(GONE, label, stay, prediction, []))
        return TrackerUpdate(events, counts)

    def _event(self, kind: str, label: str, stay: _Stay, prediction: Prediction,
               objects: list[Sighting]) -> ObjectEvent:
        return ObjectEvent(kind, self.camera, label, stay.id, stay.count, stay.score,
                           prediction.frame_id, prediction.captured_at, stay.started_at,
                           objects)
