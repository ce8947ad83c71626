"""A V4L2 capture device (`/dev/video0`): USB webcams, and the Raspberry Pi camera through
libcamera's V4L2 compatibility layer, read with FFmpeg's v4l2 input.

Asked for `input_format = mjpeg`, a UVC webcam's frames are JPEGs already and are sent as they
are. Frames carry the kernel's capture time (FFmpeg converts its monotonic stamps to the wall
clock), so a frame's latency counts from when it was taken, not from when it was read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from aiotedge.media.sources.base import CapturedFrame, FrameSource, SourceDroppedError
from aiotedge.media.sources.pyav import Opener, pictures, pyav_open

#: a device stamp further than this from the wall clock is not a wall-clock time
PLAUSIBLE_CLOCK_SKEW = 60.0


class V4L2Source(FrameSource):
    live = True

    def __init__(self, device: str, size: str = "", fps: float = 0.0, pixel_format: str = "",
                 *, timeout: float = 5.0, opener: Opener | None = None) -> None:
        self.name = device
        self.timeout = self.stall_after = timeout
        self.options = {"timestamps": "mono2abs"}
        if size:
            self.options["video_size"] = size
        if fps:
            self.options["framerate"] = f"{fps:g}"
        if pixel_format:
            self.options["input_format"] = pixel_format
        self._open = opener or pyav_open(f"the device {device}")

    def frames(self, stop: threading.Event) -> Iterator[CapturedFrame]:
        with self._open(self.name, format="v4l2", options=self.options,
                        timeout=(self.timeout, self.timeout)) as container:
            for picture in pictures(container):
                if stop.is_set():
                    return
                yield picture.captured(capture_time(picture.seconds), self.name)
        raise SourceDroppedError("the device stopped sending frames")


def capture_time(seconds: float | None) -> float:
    """The device's stamp when it is a wall-clock time, else now."""
    now = time.time()
    if seconds is not None and abs(seconds - now) < PLAUSIBLE_CLOCK_SKEW:
        return seconds
    return now
