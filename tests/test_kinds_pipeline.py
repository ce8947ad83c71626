"""Detection, pose and segmentation through the live pipeline: stage processes, a real
mosquitto, the shared models and photos, checked against what TensorFlow Lite Support's own
tests expect of them (../shared/README.md)."""

from __future__ import annotations

import io
import json
import queue

import numpy as np
import pytest
from aiotedge_converter.cli import main as convert
from PIL import Image

from aiotedge.config.sections import CameraConfig, EventsConfig, StageConfig
from aiotedge.contracts.manifest import Manifest
from aiotedge.media.draw import MARK_COLOUR
from aiotedge.media.image import read_photo
from aiotedge.media.sources import open_source
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.daemons.local import LocalPipeline
from aiotedge.nodes.mqtt.session import MqttSession
from support.media import write_video
from support.paths import SHARED_DATA
from support.watch import Recorder, read_retained_one

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


def test_a_person_in_a_clip_through_the_real_detector_is_one_appeared_one_gone_and_a_snapshot(
        broker, tmp_path):
    """The camera owner's question end to end: a clip made here (an empty room, a person, the
    empty room again) through a camera and the SSD model split in 3 stages, with events for
    people: one "appeared", one "gone", the retained count 0 -> 1 -> 0, and the event's
    snapshot with the person's box drawn where the person stands in the camera's frame."""
    manifest = split(shared("detection/coco_ssd_mobilenet_v1_1.0_quant.tflite"), tmp_path,
                     "--labels", str(shared("detection/coco_labels.txt")), "--resize", "sampled")
    room = Image.new("RGB", (640, 480), (90, 110, 100))
    person = room.copy()
    person.paste(Image.open(shared("pose/girl.jpg")).convert("RGB").resize((384, 384)), (200, 60))
    video = write_video(tmp_path / "hall.mkv", [room] * 3 + [person] * 4 + [room] * 4,
                        lossless=True)
    options = CameraConfig(source=str(video), name="hall", in_flight=1)
    events = EventsConfig(labels=["person"], min_score=0.6, gone_after=2, cooldown=3600)
    with LocalPipeline(manifest, broker=broker.address) as pipeline:
        topics = pipeline.topics
        recorder = Recorder(broker, [topics.events, topics.count("hall", "person")])
        session = MqttSession(broker.address, "camera-hall")
        session.start()
        assert session.wait_connected(10)
        camera = Camera(session, topics, options, events=events)
        try:
            assert camera.run(open_source(options, "source")) == 11
            messages = recorder.wait_for(lambda got: any(b'"gone"' in p for _, p in got))
        finally:
            session.stop()
            recorder.session.stop()
        snapshot = read_retained_one(broker, topics.event_snapshot("hall", "person"))

    said = [json.loads(p) for t, p in messages if t == topics.events]
    assert [(e["type"], e["label"], e["count"]) for e in said] == [
        ("appeared", "person", 1), ("gone", "person", 0)]
    assert [json.loads(p)["count"] for t, p in messages if t != topics.events] == [0, 1, 0]
    box = said[0]["objects"][0]["box_px"]
    # the person stands in (200, 60) - (584, 444) of the frame; the model's box lies within it
    assert 190 <= box["xmin"] < box["xmax"] <= 594 and 50 <= box["ymin"] < box["ymax"] <= 454
    drawn = np.asarray(Image.open(io.BytesIO(snapshot)).convert("RGB"), dtype=int)
    assert drawn.shape == (480, 640, 3)
    marked = np.all(np.abs(drawn - MARK_COLOUR) < 60, axis=-1)
    left, top, bottom = round(box["xmin"]), round(box["ymin"]), round(box["ymax"])
    assert marked[top + 10:bottom - 10, max(left - 3, 0):left + 3].any(axis=1).all()
    assert not marked[:, :150].any()  # nothing drawn far from the person
