"""A camera's events end to end with a real mosquitto: a video clip (no one, then a person, then
no one) through a camera that crops and turns its frames, answered by a fake last stage that
finds the person in the picture it was sent, as a detection model would: one "appeared" and one
"gone" event, the retained count 0 -> 1 -> 0, and a snapshot with the box drawn where the person
is in the camera's frame."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from aiotedge.config.sections import CameraConfig, EventsConfig
from aiotedge.contracts.events import DetectedObject, Prediction
from aiotedge.contracts.geometry import Box
from aiotedge.contracts.wire import Frame
from aiotedge.media.draw import MARK_COLOUR
from aiotedge.media.image import decode_image
from aiotedge.media.sources import open_source
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.mqtt.session import MqttSession
from support.media import write_video
from support.stages import AnsweringStage
from support.watch import Recorder, read_retained_one

WIDTH, HEIGHT = 320, 240
#: where the person stands in the camera's frame (x0, y0, x1, y1)
PERSON_AT = (180, 60, 240, 200)
#: the camera sends the frame's right part, turned a quarter clockwise
CROP, ROTATE = [100, 0, 220, 240], 90


def clip_pictures() -> list[Image.Image]:
    """4 frames of an empty scene, 5 with a bright person-shaped block, 5 empty again."""
    empty = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    person = empty.copy()
    x0, y0, x1, y1 = PERSON_AT
    person[y0:y1, x0:x1] = (40, 220, 60)
    return [Image.fromarray(p) for p in [empty] * 4 + [person] * 5 + [empty] * 5]


def detect(frame: Frame) -> Prediction:
    """A fake last stage of a detection model: the bright block of the picture it was sent, as
    a person (box normalised in that picture, and in the frame's pixels through its view)."""
    assert frame.image is not None and frame.view is not None
    green = np.asarray(decode_image(frame.image), dtype=int)[..., 1] > 150
    objects = []
    if green.any():
        rows, columns = np.nonzero(green)
        height, width = green.shape
        box = Box(columns.min() / width, rows.min() / height,
                  (columns.max() + 1) / width, (rows.max() + 1) / height)
        objects.append(DetectedObject(0, "person", 0.88, box, frame.view.box_to_source(box)))
    return Prediction(frame.frame_id, frame.source, frame.seq, frame.captured_at, [], 5.0, [],
                      kind="detection", objects=objects)


def test_a_person_walking_through_a_clip_is_one_appeared_one_gone_a_count_and_a_snapshot(
        broker, tmp_path):
    video = write_video(tmp_path / "clip.mkv", clip_pictures(), lossless=True)
    stage = AnsweringStage(broker, "door", answer=detect)
    topics = stage.topics
    recorder = Recorder(broker, [topics.events, topics.count("porch", "person")])
    options = CameraConfig(source=str(video), name="porch", in_flight=1, crop=CROP,
                           rotate=ROTATE)
    session = MqttSession(broker.address, "camera-porch")
    session.start()
    assert session.wait_connected(10)
    camera = Camera(session, topics, options,
                    events=EventsConfig(labels=["person", "cat"], gone_after=3, cooldown=3600))
    assert camera.run(open_source(options, "source")) == 14
    messages = recorder.wait_for(lambda got: any(b'"gone"' in p for _, p in got))
    session.stop()
    stage.stop()
    recorder.session.stop()

    events = [json.loads(p) for t, p in messages if t == topics.events]
    assert [(e["type"], e["camera"], e["label"], e["count"]) for e in events] == [
        ("appeared", "porch", "person", 1), ("gone", "porch", "person", 0)]
    assert events[0]["id"] == events[1]["id"]
    seen = events[0]["objects"][0]["box_px"]
    assert [round(seen[k]) for k in ("xmin", "ymin", "xmax", "ymax")] == list(PERSON_AT)
    counts = [json.loads(p)["count"] for t, p in messages if t != topics.events]
    assert counts == [0, 1, 0]

    snapshot = read_retained_one(broker, topics.event_snapshot("porch", "person"))
    drawn = np.asarray(Image.open(io.BytesIO(snapshot)).convert("RGB"), dtype=int)
    assert drawn.shape == (HEIGHT, WIDTH, 3)  # the camera's whole frame, not what it sent
    marked = np.all(np.abs(drawn - MARK_COLOUR) < 60, axis=-1)
    x0, y0, x1, y1 = PERSON_AT
    # the box's outline around the person: its left and right edges, its bottom edge
    for column in (x0, x1):
        assert marked[y0 + 20:y1 - 20, column - 3:column + 3].any(axis=1).all()
    assert marked[y1 - 3:y1 + 3, x0 + 5:x1 - 5].any(axis=0).all()
    assert not marked[:, :x0 - 4].any()  # nothing drawn far from it


def test_a_camera_daemon_with_discovery_announces_its_own_device(broker, tmp_path):
    """`aiotedge camera` with `[events] labels` and discovery: the camera's device is on the
    broker, retained, beside its counts, every message as Home Assistant documents it."""
    from aiotedge.cli import main
    from aiotedge.nodes.observe.homeassistant import event_entities
    from support.watch import retained_now
    from tests.homeassistant_schema import problems

    folder = tmp_path / "photos"
    folder.mkdir()
    for index, picture in enumerate(clip_pictures()[2:6]):
        picture.save(folder / f"{index}.png")
    config = tmp_path / "camera.toml"
    config.write_text(f'[broker]\nhost = "127.0.0.1"\nport = {broker.port}\n'
                      '[pipeline]\nname = "door"\n'
                      f'[camera]\nname = "porch"\nsource = "{folder}"\n'
                      '[events]\nlabels = ["person"]\n[homeassistant]\ndiscovery = true\n')
    stage = AnsweringStage(broker, "door", answer=detect)
    try:
        assert main(["camera", "--config", str(config)]) == 0
    finally:
        stage.stop()
    retained = retained_now(broker, stage.topics)
    announced = event_entities(stage.topics, "porch", "person")
    for topic, config_sent in announced:
        assert problems(topic, json.loads(retained[topic])) == []
        assert json.loads(retained[topic]) == config_sent
    assert json.loads(retained[stage.topics.count("porch", "person")]) == {"count": 1}
