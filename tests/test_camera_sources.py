"""Live cameras end to end, with a real mosquitto and real servers on loopback: video files made
from photos, HTTP MJPEG, RTSP and HLS cameras that are killed and restarted, a folder watched
while photos are written into it, preprocessing at the camera against the whole model, and a
camera's memory while the broker is away."""

from __future__ import annotations

import contextlib
import io
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from aiotedge.config.sections import CameraConfig
from aiotedge.contracts.events import Prediction
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import Topics
from aiotedge.contracts.wire import decode_photo
from aiotedge.media.image import decode_image, list_images, model_size, read_photo
from aiotedge.media.prepare import ModelInput, encode_png
from aiotedge.media.sources import FrameSource, Stills
from aiotedge.media.sources.live import LiveReader
from aiotedge.media.sources.stream import StreamSource
from aiotedge.media.sources.video import VideoFileSource
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.daemons.local import LocalPipeline
from aiotedge.nodes.daemons.status import collect_status
from aiotedge.nodes.mqtt.broker import free_port
from aiotedge.nodes.mqtt.session import MqttSession
from support.media import (
    FreezingMjpegCamera,
    MjpegCamera,
    RtspCamera,
    hls_camera,
    moving_pattern,
    write_video,
)
from support.paths import SHARED_IMAGES, SHARED_LABELS, SHARED_MODEL
from support.reference import whole_model_top
from support.stages import AnsweringStage

#: bound for one awaited event; never a synchronisation
TIMEOUT = 60.0
#: how long the broker stays away while a 30 fps camera runs
OUTAGE_SECONDS = 15


# -- helpers ----------------------------------------------------------------------------------


class Predictions:
    """Every prediction published on a pipeline, in arrival order."""

    def __init__(self, broker, topics: Topics) -> None:
        self._queue: queue.Queue[Prediction] = queue.Queue()
        self.session = MqttSession(broker.address, f"predictions-{time.monotonic_ns()}")
        self.session.subscribe(topics.predictions, self._on_message, qos=1)
        self.session.start()
        assert self.session.wait_connected(TIMEOUT)

    def _on_message(self, message) -> None:
        prediction = Prediction.parse(message.payload)
        if prediction is not None:
            self._queue.put(prediction)

    def take(self, count: int) -> list[Prediction]:
        taken = []
        for _ in range(count):
            try:
                taken.append(self._queue.get(timeout=TIMEOUT))
            except queue.Empty:
                pytest.fail(f"{len(taken)} predictions within {TIMEOUT} s, not {count}")
        return taken

    def stop(self) -> None:
        self.session.stop()


@contextlib.contextmanager
def camera_running(broker, topics: Topics, options: CameraConfig, source: FrameSource,
                   model: ModelInput | None = None):
    """A Camera publishing `source` in a thread; stopped and joined on the way out."""
    session = MqttSession(broker.address, f"camera-{options.name}")
    camera = Camera(session, topics, options, model=model)
    session.start()
    assert session.wait_connected(TIMEOUT)
    stop = threading.Event()
    thread = threading.Thread(target=camera.run, args=(source, None, stop), daemon=True)
    thread.start()
    try:
        yield camera
    finally:
        stop.set()
        thread.join(TIMEOUT)
        session.stop()
    assert not thread.is_alive()


def model_input(manifest: Manifest) -> ModelInput:
    return ModelInput(manifest.preprocessing, manifest.stages[0].input)


@pytest.fixture(params=["generated", "shared"])
def photoset(request, split3, split_into, generated_frames):
    """(manifest, photos): the test CNN with generated photos; MobileNetV2 with the shared ones."""
    if request.param == "generated":
        return split3, generated_frames
    if not SHARED_MODEL.is_file():
        pytest.skip(f"no shared model at {SHARED_MODEL}")
    photos = [(path.name, read_photo(path)) for path in list_images(SHARED_IMAGES)]
    return split_into(SHARED_MODEL, 2, SHARED_LABELS), photos


# -- preprocessing at the camera, and video files --------------------------------------------


@pytest.mark.parametrize("told_by", ["manifest", "stage 0"])
def test_a_preprocessing_camera_gets_the_whole_models_predictions(broker, photoset, told_by):
    """Sent as the input tensor, a photo gives exactly the prediction stage 0 would have made."""
    manifest, photos = photoset
    expected = {name: whole_model_top(manifest, data) for name, data in photos}
    options = CameraConfig(name="prep", preprocess="tensor")
    with LocalPipeline(manifest, broker=broker.address) as pipeline:
        predictions = Predictions(broker, pipeline.topics)
        model = model_input(manifest) if told_by == "manifest" else None
        with camera_running(broker, pipeline.topics, options, Stills(photos), model) as camera:
            if told_by == "stage 0":
                assert camera.wait_for_model(TIMEOUT)  # from stage 0's retained info
                assert camera.model == model_input(manifest)
            results = predictions.take(len(photos))
        predictions.stop()
    assert camera.counters.get("rejected") == 0
    assert {p.name: p.top for p in results} == expected


def test_a_jpeg_at_model_size_goes_through(broker, split3, generated_frames):
    options = CameraConfig(name="small-jpeg", preprocess="jpeg", jpeg_quality=95)
    with LocalPipeline(split3, broker=broker.address) as pipeline:
        predictions = Predictions(broker, pipeline.topics)
        with camera_running(broker, pipeline.topics, options, Stills(generated_frames),
                            model_input(split3)):
            results = predictions.take(len(generated_frames))
        predictions.stop()
    assert sorted(p.name for p in results) == sorted(name for name, _ in generated_frames)


def test_a_video_made_of_photos_gives_their_predictions_in_order(broker, photoset, tmp_path):
    """Each photo held for 3 frames of a lossless video: every frame is sent (a file is read as
    fast as the pipeline takes it) and predicted exactly as the photo itself."""
    manifest, photos = photoset
    hold = 3
    pictures = [model_size(decode_image(data), manifest.preprocessing) for _, data in photos]
    video = write_video(tmp_path / "photos.mkv", pictures, hold=hold, lossless=True)
    expected = [whole_model_top(manifest, data) for _, data in photos]
    options = CameraConfig(name="video", preprocess="tensor")
    with LocalPipeline(manifest, broker=broker.address) as pipeline:
        predictions = Predictions(broker, pipeline.topics)
        with camera_running(broker, pipeline.topics, options, VideoFileSource(video),
                            model_input(manifest)):
            results = sorted(predictions.take(hold * len(photos)), key=lambda p: p.seq)
        predictions.stop()
    assert [p.seq for p in results] == list(range(hold * len(photos)))
    assert [p.name for p in results] == [f"photos.mkv#t={n / 10:.3f}" for n in range(len(results))]
    assert [p.top for p in results] == [top for top in expected for _ in range(hold)]


def test_decoded_frames_sent_as_they_are_get_the_whole_models_predictions(
    broker, shared_data, split_into, tmp_path
):
    """A camera's H.264 (lossy, 4:2:0) with the default `preprocess = "none"`: every decoded
    frame is predicted as the whole model predicts those very pixels (a JPEG q90 of them
    changed the top-1 of 5 of these 40 frames)."""
    av = pytest.importorskip("av")
    manifest = split_into(SHARED_MODEL, 2, SHARED_LABELS)
    clip = moving_pattern(tmp_path / "camera.mp4", seconds=4, size="320x240", fps=10)
    with av.open(str(clip)) as container:
        decoded = [frame.to_ndarray(format="rgb24")
                   for frame in container.decode(container.streams.video[0])]
    expected = [whole_model_top(manifest, encode_png(Image.fromarray(pixels)))
                for pixels in decoded]
    with LocalPipeline(manifest, broker=broker.address) as pipeline:
        predictions = Predictions(broker, pipeline.topics)
        with camera_running(broker, pipeline.topics, CameraConfig(name="h264"),
                            VideoFileSource(clip)):
            results = sorted(predictions.take(len(decoded)), key=lambda p: p.seq)
        predictions.stop()
    assert [p.seq for p in results] == list(range(len(decoded)))
    assert [p.top[0].label for p in results] == [top[0].label for top in expected]
    assert [p.top for p in results] == expected


def test_aiotedge_run_reads_a_video_and_names_its_frames(split3, generated_frames, tmp_path):
    pictures = [model_size(decode_image(data), split3.preprocessing)
                for _, data in generated_frames[:2]]
    video = write_video(tmp_path / "clip.mkv", pictures, hold=2, lossless=True)
    run = subprocess.run(
        [sys.executable, "-m", "aiotedge", "run", "--manifest", str(split3.directory),
         "--source", str(video), "--log-file", str(tmp_path / "run.log")],
        capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    *predictions, _summary = run.stdout.splitlines()
    names = sorted(line.split()[0] for line in predictions)
    assert names == [f"clip.mkv#t={n / 10:.3f}" for n in range(4)]


def test_every_frame_rejected_makes_the_camera_say_so_and_exit_1(
    broker, split3, test_models, split_into, generated_photos
):
    """Tensors made for another model (the float CNN's manifest, the int8 CNN's stages)."""
    other = split_into(test_models["float"], 2)
    with LocalPipeline(split3, broker=broker.address) as pipeline:
        camera = subprocess.run(
            [sys.executable, "-m", "aiotedge", "camera", "--source", str(generated_photos),
             "--loop", "--frames", "6", "--preprocess", "tensor", "--manifest",
             str(other.directory), "--broker", str(broker.address), "--pipeline",
             pipeline.topics.pipeline], capture_output=True, text=True, timeout=120,
            check=False)
    assert camera.returncode == 1, camera.stderr
    assert "the pipeline rejected the last 5 frames, the last because: tensor dtype " \
        "'float32' does not match the stage input 'uint8'" in camera.stderr
    assert "published 6 frames: 0 answered, 6 rejected by the pipeline" in camera.stderr


# -- network cameras, killed and restarted ------------------------------------------------------


@pytest.fixture(scope="module")
def pattern_clip(tmp_path_factory) -> Path:
    return moving_pattern(tmp_path_factory.mktemp("clip") / "pattern.mp4", size="320x240",
                          fps=15)


def test_an_mjpeg_camera_that_restarts_is_read_again_by_itself(broker, pattern_clip, caplog):
    pipeline = AnsweringStage(broker, "mjpeg")
    server = MjpegCamera(pattern_clip, free_port()).start()
    options = CameraConfig(name="door", snapshot=True)
    snapshots: queue.Queue[bytes] = queue.Queue()
    pipeline.session.subscribe(pipeline.topics.snapshot("door"),
                               lambda message: snapshots.put(message.payload))
    try:
        with camera_running(broker, pipeline.topics, options,
                            StreamSource(server.url, timeout=2.0)) as camera:
            before = len(pipeline.wait_frames(5))
            server.kill()  # the camera reboots
            server.start()
            after = pipeline.wait_frames(before + 5)
            stats = camera.stats_snapshot()
    finally:
        server.kill()
        pipeline.stop()
    assert stats["reconnects"] >= 1 and stats["captured"] >= len(after)
    # an MJPEG camera's frames are JPEGs already: sent as they came, named after the stream
    frame = decode_photo(after[-1])
    assert frame.image.startswith(b"\xff\xd8") and frame.name == server.url
    assert Image.open(io.BytesIO(snapshots.get(timeout=TIMEOUT))).format == "JPEG"
    assert any(f"{server.url}: " in r.getMessage() and "reconnecting" in r.getMessage()
               for r in caplog.records)


def test_an_rtsp_camera_with_a_login_is_read_without_showing_the_password(
    broker, pattern_clip, caplog
):
    password = "p@ss:w/rd"
    server = RtspCamera(pattern_clip, free_port(), f"viewer:{password}").start()
    pipeline = AnsweringStage(broker, "rtsp")
    source = StreamSource(f"rtsp://viewer@{server.path}", password=password, timeout=2.0)
    try:
        with camera_running(broker, pipeline.topics, CameraConfig(name="gate"), source) as camera:
            before = len(pipeline.wait_frames(3))
            server.kill()
            server.start()
            pipeline.wait_frames(before + 3)
            stats = camera.stats_snapshot()
    finally:
        server.kill()
        pipeline.stop()
    assert stats["reconnects"] >= 1
    logged = caplog.text
    assert f"rtsp://viewer:***@{server.path}" in logged
    assert "p@ss" not in logged and "p%40ss" not in logged


def test_a_frozen_camera_is_said_to_have_stalled_and_is_read_again(caplog):
    """A camera that keeps its connection and sends nothing more: said as a stall once it has
    been silent for the timeout, one outage, never PyAV's "Immediate exit requested"."""
    camera = FreezingMjpegCamera(before_freezing=3)
    changed = threading.Condition()
    reader = LiveReader(StreamSource(camera.url, timeout=1.0), (0.05, 0.1), changed)
    try:
        with changed:
            reader.start()
            assert changed.wait_for(lambda: reader.state.startswith("reconnecting"), TIMEOUT)
            stalled_state = reader.state
            # the second connection streams: frames beyond the first three
            assert changed.wait_for(lambda: reader.captured > 5, TIMEOUT)
    finally:
        reader.stop()
        camera.close()
    assert stalled_state == "reconnecting: stalled: no frame for 1 s"
    assert reader.reconnects == 1
    assert f"{camera.url}: stalled: no frame for 1 s; reconnecting" in caplog.text
    assert f"{camera.url}: streaming again after " in caplog.text
    assert "ExitError" not in caplog.text and "Immediate exit" not in caplog.text


def test_a_frozen_rtsp_camera_is_one_outage(pattern_clip, caplog):
    """FFmpeg's RTSP reader gives out the last frame it held back at its first read timeout and
    fails at the second: that frame is no sign of the camera streaming again."""
    frames = 20
    server = RtspCamera(pattern_clip, free_port(), freeze_after=frames).start()
    changed = threading.Condition()
    reader = LiveReader(StreamSource(f"rtsp://{server.path}", timeout=1.0), (0.05, 0.1),
                        changed)
    try:
        with changed:
            reader.start()
            assert changed.wait_for(lambda: reader.state.startswith("reconnecting"), TIMEOUT)
            stalled_state = reader.state
            # the second connection streams: frames beyond the first connection's and one more
            assert changed.wait_for(lambda: reader.captured > frames + 1, TIMEOUT)
            outages = reader.reconnects
    finally:
        reader.stop()
        server.kill()
    assert stalled_state == "reconnecting: stalled: no frame for 1 s"
    assert outages == 1
    assert caplog.text.count("streaming again after") == 1, caplog.text
    assert "ExitError" not in caplog.text and "Immediate exit" not in caplog.text


def test_a_wrong_rtsp_password_is_said_without_the_password(broker, pattern_clip, caplog):
    server = RtspCamera(pattern_clip, free_port(), "viewer:right").start()
    source = StreamSource(f"rtsp://viewer:wrong@{server.path}", timeout=2.0)
    stop = threading.Event()
    try:
        with pytest.raises(Exception) as caught:  # PyAV's own error for HTTP 401
            next(source.frames(stop))
    finally:
        server.kill()
    explained = source.explain(caught.value)
    assert "401" in explained or "Unauthorized" in explained, explained
    assert "wrong" not in explained


def test_an_hls_stream_is_read(broker, pattern_clip, tmp_path):
    pipeline = AnsweringStage(broker, "hls")
    try:
        with hls_camera(pattern_clip, tmp_path / "hls") as url, \
                camera_running(broker, pipeline.topics, CameraConfig(name="hls"),
                               StreamSource(url, timeout=2.0)):
            frames = pipeline.wait_frames(3)
    finally:
        pipeline.stop()
    assert {decode_photo(payload).name for payload in frames} == {url}


# -- a watched folder -----------------------------------------------------------------------------


def test_a_watched_folder_sends_each_photo_once_when_it_is_whole(broker, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    photos = {name: (tmp_path / name) for name in ("a.jpg", "b.png", "c.jpg")}
    for shade, path in enumerate(photos.values()):
        Image.new("RGB", (64, 48), (40 * shade, 90, 160)).save(path)
    (drop / "old.jpg").write_bytes(photos["a.jpg"].read_bytes())  # there before: not sent
    pipeline = AnsweringStage(broker, "watch")
    camera = subprocess.Popen(
        [sys.executable, "-m", "aiotedge", "camera", "--source", str(drop), "--watch",
         "--frames", "3", "--broker", str(broker.address), "--pipeline", "watch"],
        stderr=subprocess.PIPE, text=True)
    try:
        for line in camera.stderr:
            if "watching" in line:
                break
        data = photos["a.jpg"].read_bytes()
        with open(drop / "a.jpg", "wb") as half_written:
            half_written.write(data[: len(data) // 2])
            half_written.flush()
            (drop / "b.png").write_bytes(photos["b.png"].read_bytes())
            assert [decode_photo(p).name for p in pipeline.wait_frames(1)] == ["b.png"]
            half_written.write(data[len(data) // 2:])
        (drop / "c.part").write_bytes(photos["c.jpg"].read_bytes())
        (drop / "c.part").rename(drop / "c.jpg")  # an FTP server's way
        _, errors = camera.communicate(timeout=TIMEOUT)
    finally:
        if camera.poll() is None:
            camera.kill()
        pipeline.stop()
    assert camera.returncode == 0, errors
    sent = [decode_photo(payload) for payload in pipeline.frames]
    assert [(f.name, f.image) for f in sent] == [
        (name, photos[name].read_bytes()) for name in ("b.png", "a.jpg", "c.jpg")]


# -- the broker away under a 30 fps camera ----------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_30_fps_camera_keeps_its_memory_while_the_broker_is_away(broker, tmp_path):
    clip = moving_pattern(tmp_path / "camera.mp4", size="640x480", fps=30)
    pipeline = AnsweringStage(broker, "outage")
    camera = subprocess.Popen(
        [sys.executable, "-m", "aiotedge", "camera", "--source", str(clip), "--realtime",
         "--loop", "--name", "cam30", "--broker", str(broker.address), "--pipeline", "outage",
         "--stats-interval", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        before = len(pipeline.wait_frames(60))  # two seconds of frames: warmed up
        start = rss_mb(camera.pid)
        broker.stop()
        samples = []
        for _ in range(OUTAGE_SECONDS):  # the outage's length, sampled each second
            time.sleep(1)
            samples.append(rss_mb(camera.pid))
        broker.start()
        pipeline.wait_frames(before + 30, timeout=120)  # flowing again, by themselves
        stats = collect_status(broker.address, Topics("outage"))["cam30"]["stats"]
        camera.send_signal(signal.SIGTERM)
        assert camera.wait(TIMEOUT) == 0
    finally:
        if camera.poll() is None:
            camera.kill()
        pipeline.stop()
    assert max(samples) < start + 20, (start, samples)
    # about 450 frames came while the broker was away: all but a few were dropped and counted
    assert stats["dropped"] > 0
    assert stats["captured"] >= stats["published"] + stats["dropped"]
