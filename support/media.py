"""Video files and camera servers on loopback for the camera tests, made with Debian's tools.

Videos come from ffmpeg (Debian package ffmpeg); an HTTP MJPEG camera is ffmpeg's own HTTP
server (`-listen 1`: it serves one client, then exits, like a camera that reboots when the
test restarts it); HLS is ffmpeg writing a live playlist that Python's http.server serves; an
RTSP camera is support/rtsp_server.py under the system interpreter (GStreamer's RTSP server).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from support.unavailable import unavailable

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")
#: bound for a server to come up; never a synchronisation
TIMEOUT = 30.0


def ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        unavailable("ffmpeg is not installed (Debian package ffmpeg; `make test` installs it)")
    return path


def run_ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True,
                   timeout=300)


def write_video(path: Path, pictures: list[Image.Image], hold: int = 1, fps: int = 10,
                lossless: bool = False) -> Path:
    """A video showing each picture for `hold` frames, in order.

    `lossless` (RGB H.264 at quantizer 0, in .mkv): the decoded frames are the pictures' exact
    pixels, so a prediction about one can be compared with the model's on the picture. Else
    the H.264 a camera sends (yuv420p, a key frame every second for streaming).
    """
    frames = path.parent / f"{path.stem}-frames"
    frames.mkdir(exist_ok=True)
    size = pictures[0].size
    for index, picture in enumerate(pictures):
        if picture.size != size:
            raise ValueError("a video's pictures must all have one size")
        for copy in range(hold):
            picture.convert("RGB").save(frames / f"{index * hold + copy:05d}.png")
    codec = (["-c:v", "libx264rgb", "-qp", "0", "-pix_fmt", "rgb24"] if lossless else
             ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", str(fps), "-bf", "0",
              "-preset", "ultrafast"])
    run_ffmpeg("-framerate", str(fps), "-i", str(frames / "%05d.png"), *codec, str(path))
    shutil.rmtree(frames)
    return path


def moving_pattern(path: Path, seconds: int = 2, size: str = "640x480", fps: int = 30) -> Path:
    """A camera-like H.264 clip: ffmpeg's test pattern, a key frame every second."""
    run_ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}", "-t", str(seconds),
               "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", str(fps), "-bf", "0",
               "-preset", "ultrafast", str(path))
    return path


def pixels(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB"))


class MjpegCamera:
    """An HTTP MJPEG camera on 127.0.0.1: ffmpeg serving one client a looping video."""

    def __init__(self, video: Path, port: int) -> None:
        self.video, self.port = video, port
        self.url = f"http://127.0.0.1:{port}/stream.mjpg"
        self.process: subprocess.Popen | None = None

    def start(self) -> MjpegCamera:
        self.process = subprocess.Popen(
            [ffmpeg(), "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1",
             "-i", str(self.video), "-an", "-c:v", "mjpeg", "-q:v", "5", "-f", "mpjpeg",
             "-content_type", "multipart/x-mixed-replace;boundary=ffmpeg", "-listen", "1",
             self.url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class RtspCamera:
    """An RTSP camera on 127.0.0.1 (support/rtsp_server.py), with a login if given one; with
    `freeze_after`, each client's stream stops after that many frames, its connection kept."""

    def __init__(self, video: Path, port: int, login: str | None = None,
                 freeze_after: int | None = None) -> None:
        if not Path(SYSTEM_PYTHON).is_file() or subprocess.run(
            [SYSTEM_PYTHON, str(RTSP_SERVER), "--check"], capture_output=True, check=False
        ).returncode != 0:
            unavailable("GStreamer's RTSP server cannot be imported by /usr/bin/python3 "
                        "(Debian packages python3-gi gir1.2-gst-rtsp-server-1.0 "
                        "gstreamer1.0-rtsp gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)")
        self.command = [SYSTEM_PYTHON, str(RTSP_SERVER), str(video), str(port),
                        *(["--user", login] if login else []),
                        *(["--freeze-after", str(freeze_after)] if freeze_after else [])]
        self.path = f"127.0.0.1:{port}/test"
        self.process: subprocess.Popen | None = None

    def start(self) -> RtspCamera:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        line = self.process.stdout.readline()  # blocks until it listens or dies
        if "serving" not in line:
            self.process.wait(TIMEOUT)
            raise RuntimeError(f"the RTSP server did not start: {line}")
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process.stdout.close()
            self.process = None


class FreezingMjpegCamera:
    """An HTTP MJPEG camera on 127.0.0.1 that freezes: its first client gets a few JPEGs, then
    nothing on a connection it keeps open (a hung camera); later clients get a JPEG every
    `period` seconds, as a camera back to normal."""

    BOUNDARY = b"frame"

    def __init__(self, before_freezing: int = 3, period: float = 0.05) -> None:
        self.before_freezing, self.period = before_freezing, period
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}/stream.mjpg"
        self._closed = threading.Event()
        self._clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                client, _ = self._server.accept()
                self._clients.append(client)
                threading.Thread(target=self._stream, args=(client, len(self._clients)),
                                 daemon=True).start()

    def _stream(self, client: socket.socket, number: int) -> None:
        with contextlib.suppress(OSError):  # the reader went away
            client.recv(65536)  # the request
            client.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;"
                           b"boundary=" + self.BOUNDARY + b"\r\n\r\n")
            sent = 0
            while not self._closed.is_set():
                if number == 1 and sent == self.before_freezing:
                    self._closed.wait()  # frozen: the connection stays, nothing comes
                    break
                out = io.BytesIO()
                Image.new("RGB", (64, 48), (sent % 256, 90, 160)).save(out, format="JPEG")
                jpeg = out.getvalue()
                client.sendall(b"--" + self.BOUNDARY + b"\r\nContent-Type: image/jpeg\r\n"
                               b"Content-Length: %d\r\n\r\n" % len(jpeg) + jpeg + b"\r\n")
                sent += 1
                if number > 1:
                    self._closed.wait(self.period)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._server.close()
        for client in self._clients:
            client.close()
        self._thread.join(TIMEOUT)


@contextlib.contextmanager
def hls_camera(video: Path, directory: Path) -> Iterator[str]:
    """A live HLS stream of a looping video: ffmpeg writes it, http.server serves it. Yields the
    playlist's URL (a reader asking before ffmpeg wrote it gets a 404, and tries again)."""
    directory.mkdir(parents=True, exist_ok=True)
    writer = subprocess.Popen(
        [ffmpeg(), "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1",
         "-i", str(video), "-an", "-c:v", "copy", "-f", "hls", "-hls_time", "1",
         "-hls_list_size", "4", "-hls_flags", "delete_segments+omit_endlist",
         str(directory / "live.m3u8")])
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/live.m3u8"
    finally:
        server.shutdown()
        server.server_close()
        writer.kill()
        writer.wait()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_args: object) -> None:
        pass
