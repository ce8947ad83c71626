"""The Raspberry Pi camera module through Picamera2 (`picamera2:0`).

Picamera2 needs libcamera's Python bindings, which only Raspberry Pi OS ships (the Debian
package python3-picamera2; PyPI's picamera2 cannot work without them): the camera node's
virtual environment sees them with --system-site-packages (scripts/install-board.sh --camera).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiotedge.contracts.errors import ConfigError
from aiotedge.media.sources.base import CapturedFrame, FrameSource

SCHEME = "picamera2:"
DEFAULT_SIZE = (640, 480)
#: libcamera names formats by their order in a 32-bit word: "BGR888" is R, G, B in memory
RGB_IN_MEMORY = "BGR888"


class Picamera2Source(FrameSource):
    live = True

    def __init__(self, index: int, size: tuple[int, int] | None = None, fps: float = 0.0,
                 factory: Callable[[int], Any] | None = None) -> None:
        self.index = index
        self.name = f"{SCHEME}{index}"
        self.size = size or DEFAULT_SIZE
        self.fps = fps
        self._camera = factory or _picamera2()

    def frames(self, stop: threading.Event) -> Iterator[CapturedFrame]:
        camera = self._camera(self.index)
        try:
            controls = {"FrameRate": self.fps} if self.fps else {}
            camera.configure(camera.create_video_configuration(
                main={"size": self.size, "format": RGB_IN_MEMORY}, controls=controls))
            camera.start()
            while not stop.is_set():
                request = camera.capture_request()
                try:  # a request not released holds one of the camera's few buffers
                    pixels = request.make_array("main")  # a copy
                    metadata = request.get_metadata()
                finally:
                    request.release()
                yield CapturedFrame(sensor_time(metadata), self.name,
                                    pixels=lambda pixels=pixels: pixels)
        finally:
            camera.stop()
            camera.close()


def sensor_time(metadata: dict[str, Any]) -> float:
    """When the frame was read off the sensor, on the wall clock (libcamera stamps it on the
    monotonic clock, in ns); now when the metadata has no stamp."""
    stamp = metadata.get("SensorTimestamp")
    if not isinstance(stamp, int):
        return time.time()
    return time.time() - (time.monotonic_ns() - stamp) / 1e9


def _picamera2() -> Callable[[int], Any]:
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise ConfigError(
            f"the Pi camera needs Picamera2 ({exc}): on Raspberry Pi OS, apt install "
            "python3-picamera2 and give the camera node a virtual environment made with "
            "--system-site-packages (scripts/install-board.sh --camera does both)") from None
    return Picamera2
