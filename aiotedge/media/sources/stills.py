"""Photos already in memory, or one image file: once, or round and round."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from aiotedge.contracts.errors import ImageError
from aiotedge.media.image import decode_image
from aiotedge.media.sources.base import CapturedFrame, FrameSource


class Stills(FrameSource):
    """(name, bytes) photos in order; `loop` starts again after the last."""

    def __init__(self, photos: list[tuple[str, bytes]], loop: bool = False,
                 name: str = "photos") -> None:
        self.photos = photos
        self.loop = loop
        self.name = name

    def frames(self, stop: threading.Event) -> Iterator[CapturedFrame]:
        sequence = itertools.cycle(self.photos) if self.loop else iter(self.photos)
        for name, data in sequence:
            if stop.is_set():
                return
            yield CapturedFrame(time.time(), name, encoded=data)


def image_file(path: Path, loop: bool = False) -> Stills:
    """One photo, checked now: a camera that cannot send it should say so at start."""
    try:
        data = path.read_bytes()
        decode_image(data)
    except OSError as exc:
        raise ImageError(f"{path}: {exc.strerror or exc}") from None
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
    return Stills([(path.name, data)], loop=loop, name=str(path))
