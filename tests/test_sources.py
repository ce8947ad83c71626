"""Frame sources alone: choosing one from --source, the live reader's newest-frame slot and its
reconnection, and the sources this machine has no hardware for (V4L2, the Pi camera), read
through fakes of the libraries' objects. Real files and streams: test_camera_sources.py."""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from aiotedge.config.sections import CameraConfig
from aiotedge.contracts.errors import ConfigError
from aiotedge.media.sources import FrameSource, SourceDroppedError, Stills, open_source
from aiotedge.media.sources.base import CapturedFrame
from aiotedge.media.sources.folder import FolderSource
from aiotedge.media.sources.live import LiveReader
from aiotedge.media.sources.picamera import Picamera2Source
from aiotedge.media.sources.stream import StreamSource, with_credentials
from aiotedge.media.sources.v4l2 import V4L2Source
from aiotedge.media.sources.video import VideoFileSource

#: bound for one awaited event; never a synchronisation
TIMEOUT = 10.0
FAST_BACKOFF = (0.01, 0.02)


def jpeg(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (shade, shade, shade)).save(out, format="JPEG")
    return out.getvalue()


# -- choosing a source ---------------------------------------------------------------------------


def source_for(text: str, **keys) -> FrameSource:
    return open_source(CameraConfig(source=text, **keys))


def test_each_kind_of_source_is_recognised(tmp_path, generated_photos):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")  # opened by PyAV only when read: the kind comes from the name
    photo = next(generated_photos.glob("*.jpg"))
    assert isinstance(source_for(str(generated_photos)), FolderSource)
    assert isinstance(source_for(str(photo)), Stills)
    assert isinstance(source_for("/dev/video0"), V4L2Source)  # unplugged: waited for
    assert isinstance(source_for("/dev/null"), V4L2Source)  # a character device
    shm = Path("/dev/shm")
    if shm.is_dir():  # a folder under /dev is a folder
        with tempfile.TemporaryDirectory(dir=shm) as folder:
            shutil.copy(photo, folder)
            assert isinstance(source_for(folder), FolderSource)
    for url in ("rtsp://cam.lan/stream", "rtsps://cam.lan/s", "http://cam.lan/mjpg",
                "https://cam.lan/live.m3u8"):
        assert isinstance(source_for(url), StreamSource)
    with pytest.raises(ConfigError, match="not a video file PyAV can read"):
        source_for(str(video))


@pytest.mark.parametrize(("text", "message"), [
    ("/nowhere/photos", "/nowhere/photos: No such file or directory; a source is a folder, an "
     "image or a video file, a device (/dev/video0), picamera2:N or a URL (rtsp://, rtsps://, "
     "http://, https://)"),
    ("cam0", "(the camera's name is the key 'name' now)"),
    ("picamera2:front", "the Pi camera is picamera2:N"),
    ("rtsp://", "is not a stream URL"),
])
def test_a_source_that_cannot_be_is_one_line_naming_the_key(text, message):
    with pytest.raises(ConfigError) as caught:
        source_for(text)
    assert str(caught.value).startswith("key 'camera.source': ")
    assert message in str(caught.value)


def test_without_picamera2_the_pi_camera_says_how_to_install_it():
    if importlib.util.find_spec("picamera2") is not None:
        pytest.skip("Picamera2 is installed here")
    with pytest.raises(ConfigError, match="apt install python3-picamera2") as caught:
        source_for("picamera2:0")
    assert "--system-site-packages" in str(caught.value)


def test_watch_is_for_folders_only(generated_photos):
    photo = next(generated_photos.glob("*.png"))
    with pytest.raises(ConfigError, match="only a folder can be watched"):
        source_for(str(photo), watch=True)


# -- the live reader -------------------------------------------------------------------------------


class ScriptedSource(FrameSource):
    """A live source whose connections follow a script: each entry is a number of frames to
    give and then how the connection ends ("drop": an exception; "end": the source ends;
    "hold": it waits until `release` is set, as a camera that keeps streaming; "freeze": the
    same, then fails as PyAV does when its read timeout interrupts it)."""

    live = True

    def __init__(self, script: list[tuple[int, str]], stall_after: float | None = None) -> None:
        self.name = "scripted"
        self.stall_after = stall_after
        self.script = list(script)
        self.opened = 0
        self.closed = 0
        self.holding = threading.Event()
        self.release = threading.Event()

    def frames(self, stop: threading.Event) -> Iterator[CapturedFrame]:
        count, ending = self.script.pop(0)
        self.opened += 1
        try:
            for index in range(count):
                yield CapturedFrame(time.time(), f"{self.opened}:{index}", encoded=jpeg(index))
            if ending == "drop":
                raise SourceDroppedError(f"connection {self.opened} dropped")
            if ending in ("hold", "freeze"):
                self.holding.set()
                self.release.wait(TIMEOUT)
            if ending == "freeze":
                self.release.clear()
                raise RuntimeError("[Errno 1414092869] Immediate exit requested")
        finally:
            self.closed += 1


def test_the_reader_keeps_only_the_newest_frame_and_counts_what_it_dropped():
    source = ScriptedSource([(5, "hold")])
    reader = LiveReader(source, FAST_BACKOFF).start()
    assert source.holding.wait(TIMEOUT)  # all five frames were put before it held
    taken = reader.take(TIMEOUT)
    assert taken is not None and taken.name == "1:4"
    assert (reader.captured, reader.dropped) == (5, 4)
    assert reader.take(timeout=0) is None  # each frame is taken once
    source.release.set()
    reader.stop()
    assert source.closed == 1


def test_a_dropped_source_is_opened_again_and_said_so_once(caplog):
    source = ScriptedSource([(2, "drop"), (0, "drop"), (0, "drop"), (3, "hold")])
    with caplog.at_level(logging.INFO):
        reader = LiveReader(source, FAST_BACKOFF).start()
        assert source.holding.wait(TIMEOUT)
        assert reader.take(TIMEOUT).name == "4:2"
        source.release.set()
        reader.stop()
    # one outage, however many attempts it took to open the source again
    assert (source.opened, source.closed, reader.reconnects, reader.attempts) == (4, 4, 1, 3)
    assert reader.state == "ended"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # one line per change of reason, then one when it streams again
    assert warnings[0] == "scripted: connection 1 dropped; reconnecting (every 0.0 s at most)"
    assert "connection 2 dropped" in warnings[1] and "connection 3 dropped" in warnings[2]
    assert warnings[3].startswith("scripted: streaming again after ")
    assert len(warnings) == 4


def test_reconnects_count_outages_and_attempts_are_counted_apart():
    source = ScriptedSource([(2, "drop"), (0, "drop"), (1, "drop"), (0, "drop"), (0, "drop"),
                             (3, "hold")])
    reader = LiveReader(source, FAST_BACKOFF).start()
    assert source.holding.wait(TIMEOUT)
    source.release.set()
    reader.stop()
    assert (reader.reconnects, reader.attempts) == (2, 5)


def test_a_frozen_source_is_said_to_have_stalled_and_is_opened_again(caplog):
    """A source that keeps its connection and sends nothing: the state says so once it has
    been silent for `stall_after`, not when the library gives up; the library's interrupt
    is never the reason shown; it counts as one outage."""
    source = ScriptedSource([(2, "freeze"), (3, "hold")], stall_after=0.05)
    changed = threading.Condition()
    with caplog.at_level(logging.INFO):
        reader = LiveReader(source, FAST_BACKOFF, condition=changed).start()
        with changed:
            assert changed.wait_for(lambda: reader.state != "streaming"
                                    and source.holding.is_set(), TIMEOUT), reader.state
        assert reader.state == "reconnecting: stalled: no frame for 0.05 s"
        assert source.opened == 1  # said while the library still waits
        source.holding.clear()
        source.release.set()  # the library gives up: PyAV's ExitError
        assert source.holding.wait(TIMEOUT)  # the second connection streams
        with changed:
            assert changed.wait_for(lambda: reader.state == "streaming", TIMEOUT)
        source.release.set()
        reader.stop()
    assert (reader.reconnects, reader.attempts) == (1, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0] == "scripted: stalled: no frame for 0.05 s; reconnecting (every 0.0 s " \
        "at most)"
    assert warnings[1].startswith("scripted: streaming again after ")
    assert len(warnings) == 2 and "Immediate exit" not in caplog.text


def test_a_source_that_ends_ends_the_reader():
    source = ScriptedSource([(3, "end")])
    reader = LiveReader(source, FAST_BACKOFF).start()
    taken = []
    while (frame := reader.take(TIMEOUT)) is not None:  # None: ended, every frame taken
        taken.append(frame.name)
    assert taken[-1] == "1:2" and reader.state == "ended"
    reader.stop()
    assert source.opened == 1


def test_stopping_the_reader_closes_the_source_it_is_reading():
    source = ScriptedSource([(1, "hold")])
    reader = LiveReader(source, FAST_BACKOFF).start()
    assert source.holding.wait(TIMEOUT)
    source.release.set()
    reader.stop()
    assert source.closed == 1 and reader.state == "ended"


# -- PyAV's objects, faked: V4L2 devices and streams --------------------------------------------


class FakePacket:
    def __init__(self, data: bytes, pts: int | None) -> None:
        self.data, self.pts, self.size = data, pts, len(data)

    def __bytes__(self) -> bytes:
        return self.data


class FakeVideoFrame:
    converted = 0

    def __init__(self, shade: int, pts: int | None) -> None:
        self.shade, self.pts = shade, pts

    def to_ndarray(self, format: str) -> np.ndarray:  # PyAV's argument name
        assert format == "rgb24"
        FakeVideoFrame.converted += 1
        return np.full((6, 8, 3), self.shade, np.uint8)


class FakeStream:
    def __init__(self, codec: str, time_base: Fraction) -> None:
        self.time_base = time_base
        self.codec_context = type("Codec", (), {"name": codec})()


class FakeContainer:
    """The slice of av.container.InputContainer the sources use."""

    def __init__(self, codec: str, items: list, time_base: Fraction) -> None:
        stream = FakeStream(codec, time_base)
        self.streams = type("Streams", (), {"video": [stream]})()
        self.items = items
        self.closed = False

    def demux(self, _stream):
        yield from self.items
        yield FakePacket(b"", None)  # FFmpeg's demuxer ends with an empty packet

    def decode(self, _stream):
        yield from self.items

    def __enter__(self) -> FakeContainer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.closed = True


class FakeOpener:
    """av.open: records each call; gives the scripted containers, or raises a scripted error."""

    def __init__(self, *results) -> None:
        self.results = list(results)
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, target: str, **kwargs):
        self.calls.append((target, kwargs))
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def test_a_v4l2_device_is_opened_with_its_options_and_mjpeg_is_sent_as_it_comes():
    now_us = int(time.time() * 1e6)
    packets = [FakePacket(jpeg(10), now_us - 40_000), FakePacket(jpeg(20), now_us)]
    container = FakeContainer("mjpeg", packets, Fraction(1, 1_000_000))
    opener = FakeOpener(container)
    source = V4L2Source("/dev/video2", "1280x720", 30, "mjpeg", timeout=3.0, opener=opener)
    frames = list(_until_dropped(source))
    assert opener.calls == [("/dev/video2", {
        "format": "v4l2", "timeout": (3.0, 3.0),
        "options": {"timestamps": "mono2abs", "video_size": "1280x720", "framerate": "30",
                    "input_format": "mjpeg"}})]
    assert [f.encoded for f in frames] == [jpeg(10), jpeg(20)]  # the device's own JPEGs
    # the kernel's capture time (FFmpeg turned it into wall-clock microseconds)
    assert [f.captured_at for f in frames] == [p.pts / 1e6 for p in packets]
    assert {f.name for f in frames} == {"/dev/video2"} and container.closed


def test_decoded_frames_are_converted_only_when_taken_and_odd_stamps_are_replaced():
    raw = [FakeVideoFrame(shade, pts) for shade, pts in ((1, 5), (2, None), (3, 7))]
    source = V4L2Source("/dev/video0", opener=FakeOpener(
        FakeContainer("rawvideo", raw, Fraction(1, 1_000_000))))
    FakeVideoFrame.converted = 0
    before = time.time()
    frames = list(_until_dropped(source))
    assert FakeVideoFrame.converted == 0
    assert frames[2].pixels()[0, 0].tolist() == [3, 3, 3]
    assert FakeVideoFrame.converted == 1
    # 5 µs after 1970 and no stamp at all are not capture times: the time read is
    assert all(f.captured_at >= before for f in frames)


def _until_dropped(source: FrameSource) -> list[CapturedFrame]:
    frames = []
    with pytest.raises(SourceDroppedError):
        frames.extend(source.frames(threading.Event()))
    return frames


def test_a_device_that_fails_and_comes_back_is_read_again():
    later = FakeContainer("mjpeg", [FakePacket(jpeg(9), None)], Fraction(1, 30))
    opener = FakeOpener(FileNotFoundError(2, "No such file or directory: '/dev/video0'"),
                        FakeContainer("mjpeg", [], Fraction(1, 30)), later,
                        FakeContainer("mjpeg", [], Fraction(1, 30)))
    reader = LiveReader(V4L2Source("/dev/video0", opener=opener), FAST_BACKOFF).start()
    taken = reader.take(TIMEOUT)
    reader.stop()
    assert taken is not None and taken.encoded == jpeg(9)
    assert reader.reconnects >= 1 and reader.attempts >= 2 and later.closed


def test_stream_credentials_are_encoded_in_the_url_and_never_shown():
    url, shown, hidden = with_credentials("rtsp://admin:p@ss:w0rd@cam.lan:554/h264", None)
    assert url == "rtsp://admin:p%40ss%3Aw0rd@cam.lan:554/h264"
    assert shown == "rtsp://admin:***@cam.lan:554/h264"
    assert "p@ss:w0rd" in hidden
    # already percent-encoded: not encoded twice; a password file wins over the URL's
    assert with_credentials("rtsp://admin:p%40ss@cam.lan/", None)[0] == \
        "rtsp://admin:p%40ss@cam.lan/"
    assert with_credentials("rtsp://admin@cam.lan/", "s3cr/t")[:2] == (
        "rtsp://admin:s3cr%2Ft@cam.lan/", "rtsp://admin:***@cam.lan/")
    with pytest.raises(ConfigError, match="names no user"):
        with_credentials("rtsp://cam.lan/", "s3cret")


def test_a_stream_error_is_logged_without_the_password():
    opener = FakeOpener(PermissionError(
        13, "Server returned 401 Unauthorized: 'rtsp://admin:p%40ss@cam.lan/h264'"))
    source = StreamSource("rtsp://admin:p@ss@cam.lan/h264", opener=opener)
    with pytest.raises(PermissionError) as caught:
        next(source.frames(threading.Event()))
    explained = source.explain(caught.value)
    assert "p@ss" not in explained and "p%40ss" not in explained
    assert "rtsp://admin:***@cam.lan/h264" in explained
    assert source.name == "rtsp://admin:***@cam.lan/h264"
    target, kwargs = opener.calls[0]
    assert target == "rtsp://admin:p%40ss@cam.lan/h264"
    assert kwargs["options"] == {"rtsp_transport": "tcp", "analyzeduration": "0",
                                 "probesize": "32"}
    assert kwargs["timeout"] == (5.0, 5.0)


def test_hls_starts_at_the_newest_segment_and_a_stream_that_ends_has_dropped():
    opener = FakeOpener(FakeContainer("h264", [FakeVideoFrame(4, 0)], Fraction(1, 90000)))
    source = StreamSource("http://cam.lan/live.m3u8", timeout=2.0, opener=opener)
    assert len(_until_dropped(source)) == 1
    assert opener.calls[0][1]["options"] == {"live_start_index": "-1"}


def test_a_video_file_names_each_frame_by_its_time_and_loops(tmp_path):
    path = tmp_path / "clip.mkv"
    passes = [FakeContainer("h264", [FakeVideoFrame(s, s * 512) for s in range(3)],
                            Fraction(1, 1024)) for _ in range(3)]
    source = VideoFileSource(path, loop=True, opener=FakeOpener(passes[0], *passes))
    stop = threading.Event()
    names = []
    for frame in source.frames(stop):
        names.append(frame.name)
        if len(names) == 5:
            stop.set()
    assert names == ["clip.mkv#t=0.000", "clip.mkv#t=0.500", "clip.mkv#t=1.000",
                     "clip.mkv#t=0.000", "clip.mkv#t=0.500"]
    assert not source.live


# -- Picamera2, faked ---------------------------------------------------------------------------


class FakeRequest:
    def __init__(self, camera: FakePicamera2, shade: int) -> None:
        self.camera, self.shade = camera, shade

    def make_array(self, name: str) -> np.ndarray:
        assert name == "main"
        if self.shade < 0:
            raise RuntimeError("buffer lost")
        return np.full((480, 640, 3), self.shade, np.uint8)

    def get_metadata(self) -> dict:
        return {"SensorTimestamp": time.monotonic_ns() - 50_000_000, "ExposureTime": 10000}

    def release(self) -> None:
        self.camera.released += 1


class FakePicamera2:
    """The slice of picamera2.Picamera2 the source uses; `shades` scripts its frames (a
    negative one fails to map, as a request can)."""

    instances: ClassVar[list[FakePicamera2]] = []

    def __init__(self, index: int, shades: list[int]) -> None:
        self.index, self.shades = index, list(shades)
        self.configured: dict | None = None
        self.started = self.stopped = self.closed = False
        self.released = 0
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main: dict, controls: dict) -> dict:
        return {"main": main, "controls": controls}

    def configure(self, config: dict) -> None:
        self.configured = config

    def start(self) -> None:
        self.started = True

    def capture_request(self) -> FakeRequest:
        return FakeRequest(self, self.shades.pop(0))

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.closed = True


def test_the_pi_camera_is_configured_read_and_released():
    FakePicamera2.instances.clear()
    source = Picamera2Source(1, (640, 480), 15.0,
                             factory=lambda index: FakePicamera2(index, [7, 8, -1]))
    stop = threading.Event()
    frames = []
    with pytest.raises(RuntimeError, match="buffer lost"):
        for frame in source.frames(stop):
            frames.append(frame)
    camera = FakePicamera2.instances[0]
    assert camera.index == 1 and camera.started and camera.stopped and camera.closed
    # RGB byte order ("BGR888" in libcamera's naming), the size and rate asked for
    assert camera.configured == {"main": {"size": (640, 480), "format": "BGR888"},
                                 "controls": {"FrameRate": 15.0}}
    assert camera.released == 3  # every request, the failed one too
    assert [int(f.pixels()[0, 0, 0]) for f in frames] == [7, 8]
    # the sensor's stamp (50 ms before the request came back) on the wall clock
    assert all(0.04 < time.time() - f.captured_at < 5 for f in frames)
    assert frames[0].name == "picamera2:1" and source.live


def test_the_pi_camera_is_read_live_and_reopened_after_a_failure():
    FakePicamera2.instances.clear()
    scripts = [[1, -1], [2, 3, 4, 5]]
    source = Picamera2Source(0, factory=lambda index: FakePicamera2(index, scripts.pop(0)))
    reader = LiveReader(source, FAST_BACKOFF).start()
    shades = set()
    while not {2, 3, 4, 5} & shades:
        frame = reader.take(TIMEOUT)
        assert frame is not None
        shades.add(int(frame.pixels()[0, 0, 0]))
    reader.stop()
    assert reader.reconnects >= 1
    assert all(camera.closed for camera in FakePicamera2.instances)


# -- folders -----------------------------------------------------------------------------------


def test_a_folder_is_read_in_order_once_or_round_and_round(generated_photos, generated_frames):
    once = FolderSource(generated_photos)
    assert [(f.name, f.encoded) for f in once.frames(threading.Event())] == generated_frames
    stop = threading.Event()
    looped = []
    for frame in FolderSource(generated_photos, loop=True).frames(stop):
        looped.append(frame.name)
        if len(looped) == len(generated_frames) + 1:
            stop.set()
    assert looped == [name for name, _ in generated_frames] + [generated_frames[0][0]]


class _Said(logging.Handler):
    """Sets `event` when a log message starts with `start`: what a test awaits."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start, self.event = start, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.start):
            self.event.set()


def test_a_watched_folder_sends_a_photo_moved_in_from_a_sibling_folder_once(tmp_path):
    """The usual write-then-rename: written whole in a folder beside, then `mv`ed in (one
    rename on one filesystem: no write, no close in the watched folder). Renamed again inside
    the folder, it is the same photo: not sent twice."""
    pytest.importorskip("watchdog")
    drop, incoming = tmp_path / "drop", tmp_path / "incoming"
    drop.mkdir()
    incoming.mkdir()
    (incoming / "moved.jpg").write_bytes(jpeg(50))
    said = _Said("watching")
    folder_log = logging.getLogger("aiotedge.media.sources.folder")
    folder_log.addHandler(said)
    level = folder_log.level
    folder_log.setLevel(logging.INFO)
    frames: queue.Queue[CapturedFrame] = queue.Queue()
    stop = threading.Event()
    source = FolderSource(drop, watch=True)
    reader = threading.Thread(target=lambda: [frames.put(f) for f in source.frames(stop)])
    reader.start()
    try:
        assert said.event.wait(TIMEOUT)
        os.rename(incoming / "moved.jpg", drop / "moved.jpg")  # mv incoming/moved.jpg drop/
        sent = [frames.get(timeout=TIMEOUT)]
        os.rename(drop / "moved.jpg", drop / "renamed.jpg")  # the same photo
        (drop / "last.png").write_bytes(jpeg(90))  # written in place: sent when closed
        sent.append(frames.get(timeout=TIMEOUT))
        while sent[-1].name != "last.png":
            sent.append(frames.get(timeout=TIMEOUT))
    finally:
        stop.set()
        reader.join(TIMEOUT)
        folder_log.removeHandler(said)
        folder_log.setLevel(level)
    assert [(f.name, f.encoded) for f in sent] == [("moved.jpg", jpeg(50)),
                                                   ("last.png", jpeg(90))]

