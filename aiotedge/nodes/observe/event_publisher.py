"""A camera's events on MQTT: its tracker (events.py) run on the results of its own frames, and
what it says published: each event, each label's count (retained, said again after a broker
restart), and the frame of a label's latest event with its objects drawn (retained), which is
what Home Assistant shows (homeassistant.py)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from aiotedge.config.sections import EventsConfig
from aiotedge.contracts.errors import ImageError
from aiotedge.contracts.events import Prediction
from aiotedge.contracts.geometry import Box, View
from aiotedge.contracts.topics import Topics
from aiotedge.media.draw import Mark, draw_marks
from aiotedge.media.prepare import SUBSAMPLING_444, encode_jpeg
from aiotedge.media.sources.base import CapturedFrame
from aiotedge.nodes.mqtt.transport import Messaging
from aiotedge.nodes.observe.events import GONE, ObjectEvent, Sighting, Tracker

log = logging.getLogger(__name__)


def count_state(count: int) -> str:
    """What `.../count/<camera>/<label>` says."""
    return json.dumps({"count": count})


class EventPublisher:
    """Follows one camera's labels through its frames' predictions (called in the order the
    predictions come, from one thread: the session's)."""

    def __init__(self, session: Messaging, topics: Topics, camera: str, options: EventsConfig,
                 *, jpeg_quality: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._session = session
        self._topics = topics
        self._camera = camera
        self._quality = jpeg_quality
        self._clock = clock
        self.tracker = Tracker(camera, options)

    def start(self) -> None:
        """Every tracked label's count, 0 until a frame shows it (a dashboard shows 0, not
        unknown)."""
        for label, count in self.tracker.counts().items():
            self._session.announce(self._topics.count(self._camera, label), count_state(count))

    def observe(self, prediction: Prediction, picture: CapturedFrame | None,
                view: View | None) -> list[ObjectEvent]:
        """Take a frame's prediction (its picture and view for the snapshots); the events made."""
        update = self.tracker.update(prediction, self._clock())
        for label, count in update.counts.items():
            self._session.announce(self._topics.count(self._camera, label), count_state(count))
        for event in update.events:
            log.info("%s: %s %s (%d, %.2f)", self._camera, event.label, event.type, event.count,
                     event.score)
            self._session.publish(self._topics.events, event.to_json(), qos=1)
            if event.type != GONE and picture is not None:
                self._publish_snapshot(event, picture, view)
        return update.events

    def _publish_snapshot(self, event: ObjectEvent, picture: CapturedFrame,
                          view: View | None) -> None:
        try:
            image = picture.picture()
        except ImageError as exc:  # it got a prediction, so this is unlikely: say it all the same
            log.warning("no snapshot of %s: %s", picture.name, exc)
            return
        view = view or View(*image.size)
        marks = [_mark(sighting, view) for sighting in event.objects]
        # colour at full resolution: 4:2:0 would smear the thin coloured lines into the scene
        jpeg = encode_jpeg(draw_marks(image, marks), self._quality, SUBSAMPLING_444)
        self._session.publish(self._topics.event_snapshot(self._camera, event.label), jpeg,
                              qos=0, retain=True)


def _mark(sighting: Sighting, view: View) -> Mark:
    """What to draw for an object, in the camera frame's pixels (where the prediction did not
    say them, mapped back through the view the frame was sent with)."""
    box = sighting.box_px
    if box is None and sighting.box is not None:
        box = view.box_to_source(sighting.box)
    if box is None:  # a class of the whole picture: the picture the model saw
        box = view.box_to_source(Box(0.0, 0.0, 1.0, 1.0))
    points = [(k.x_px, k.y_px) if k.x_px is not None and k.y_px is not None
              else view.point_to_source(k.x, k.y) for k in sighting.keypoints]
    return Mark(f"{sighting.label} {sighting.score:.0%}", box, points)
