"""A video file (mp4, mkv, avi, ...): once or looping, at its own frame rate or as fast as the
pipeline takes frames.

At its own frame rate the file stands in for a camera: it is read as a live source, and what
the pipeline cannot take is dropped. As fast as the pipeline takes frames, every frame is sent.
Each frame is named after the file and its time into it (`clip.mp4#t=12.400`, as in a media
fragment URI), so a prediction says which picture it is about.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

from aiotedge.contracts.errors import ImageError
from aiotedge.media.sources.base import CapturedFrame, FrameSource
from aiotedge.media.sources.pyav import Opener, pictures, pyav_open


class VideoFileSource(FrameSource):
    def __init__(self, path: Path, loop: bool = False, realtime: bool = False,
                 opener: Opener | None = None) -> None:
        self.path = path
        self.name = str(path)
        self.loop = loop
        self.live = realtime
        self._open = opener or pyav_open(f"the video file {path}")
        try:  # a file that is no video should stop the camera at start, with the reason
            with self._open(str(path)) as container:
                if not container.streams.video:
                    raise ImageError(f"{path}: no video stream in it")
        except (OSError, ValueError) as exc:  # PyAV's errors are both
            raise ImageError(f"{path}: not a video file PyAV can read ({exc})") from None

    def frames(self, stop: threading.Event) -> Iterator[CapturedFrame]:
        while not stop.is_set():
            started = time.monotonic()
            first: float | None = None
            with self._open(str(self.path)) as container:
                for picture in pictures(container):
                    if stop.is_set():
                        return
                    seconds = picture.seconds
                    if self.live and seconds is not None:
                        first = seconds if first is None else first
                        if stop.wait(max(0.0, started + seconds - first - time.monotonic())):
                            return
                    at = "" if seconds is None else f"#t={seconds:.3f}"
                    yield picture.captured(time.time(), f"{self.path.name}{at}")
            if not self.loop:
                return
