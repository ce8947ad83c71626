"""What every frame source gives the camera, and the one interface each kind implements."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from aiotedge.media.image import decode_image

#: the longest frame name the wire format carries (docs/wire.md)
MAX_FRAME_NAME = 128


@dataclass(frozen=True)
class CapturedFrame:
    """One picture from a source, and what says which picture it is.

    A source that already holds an encoded picture (a photo file, an MJPEG stream's JPEG)
    gives its bytes, which the camera can send untouched; a decoding source gives a function
    for the RGB pixels, called only for the frames the camera actually publishes (a live
    stream's frames are mostly dropped).
    """

    #: Unix seconds: the source's own clock where it has one, else when the frame was read
    captured_at: float
    #: which picture: a file's name (a video's with the time into it), else the source's name
    name: str
    #: JPEG, PNG or BMP bytes as the source has them (EXIF orientation included)
    encoded: bytes | None = None
    #: H x W x 3 uint8 RGB pixels, upright
    pixels: Callable[[], np.ndarray] | None = None

    def __post_init__(self) -> None:
        if (self.encoded is None) == (self.pixels is None):
            raise ValueError("a captured frame has either encoded bytes or pixels")
        object.__setattr__(self, "name", short_name(self.name))

    def picture(self) -> Image.Image:
        """The picture upright, as stage 0 would see it (raises ImageError for a broken one)."""
        if self.encoded is not None:
            return decode_image(self.encoded)
        assert self.pixels is not None
        return Image.fromarray(self.pixels())


def short_name(name: str) -> str:
    """`name`, its middle cut when it is longer than a frame may carry (the end of a file name
    and the start of a URL are what tell pictures apart)."""
    if len(name) <= MAX_FRAME_NAME:
        return name
    keep = (MAX_FRAME_NAME - 1) // 2
    return f"{name[:keep]}…{name[-(MAX_FRAME_NAME - 1 - keep):]}"


class SourceDroppedError(Exception):
    """A live source stopped giving frames (a camera rebooted, a cable pulled): try again.

    The message is safe to log: it never holds a password.
    """


class FrameSource(ABC):
    """Where a camera's frames come from: one implementation per kind of source.

    A live source (a device, a network stream, a video file played at its own pace) is read
    continuously in a thread of its own (`LiveReader`), which keeps only the newest frame and
    calls `frames` again after a drop. Any other source is read one frame at a time when the
    pipeline has room for it, and loses none.
    """

    #: the source's name in logs, status and frame names; never holds a password
    name: str
    live: bool = False
    #: seconds without a frame after which a live source counts as stalled (None: never)
    stall_after: float | None = None

    @abstractmethod
    def frames(self, stop: threading.Event) -> Iterator[CapturedFrame]:
        """The frames in order, until the source ends or `stop` is set.

        A live source raises SourceDroppedError (or any other exception) when it drops: the
        reader opens it again after a pause. Ending without an exception means there is
        nothing more to read (the end of a video file), for every kind of source.
        """

    def explain(self, error: BaseException) -> str:
        """One line about why reading failed, for a log; sources with secrets redact them."""
        return str(error) if isinstance(error, SourceDroppedError) else (
            f"{type(error).__name__}: {error}")
