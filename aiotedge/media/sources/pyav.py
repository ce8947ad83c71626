"""PyAV (FFmpeg's libraries) for video files, V4L2 devices and network streams.

Imported only when such a source is used: a board that runs a stage never installs it (the
`video` extra). FFmpeg reads every container and codec a camera produces, and its MJPEG
packets are JPEG files already, which the camera can send without decoding them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from aiotedge.contracts.extras import import_extra
from aiotedge.media.sources.base import CapturedFrame

#: `av.open`, or a stand-in with its signature (tests)
Opener = Callable[..., Any]


def pyav_open(what: str) -> Opener:
    """`av.open`; a MissingExtraError saying how to install PyAV when it is missing."""
    return import_extra("av", extra="video", feature=f"reading {what}").open


@dataclass(frozen=True)
class StreamPicture:
    """One picture as a container gives it, before the source says when and what it was."""

    #: the stream's own timestamp in seconds (None when the packet has none)
    seconds: float | None
    encoded: bytes | None = None
    pixels: Callable[[], np.ndarray] | None = None

    def captured(self, captured_at: float, name: str) -> CapturedFrame:
        return CapturedFrame(captured_at, name, encoded=self.encoded, pixels=self.pixels)


def pictures(container: Any) -> Iterator[StreamPicture]:
    """The first video stream's pictures: MJPEG packets as they are, anything else decoded.

    A decoded frame is converted to RGB only when its `pixels` are asked for, on the thread
    that asks: a live source's reader thread decodes every frame, the camera converts the few
    it sends.
    """
    stream = container.streams.video[0]
    time_base = stream.time_base

    def seconds(pts: int | None) -> float | None:
        return None if pts is None or time_base is None else float(pts * time_base)

    if stream.codec_context.name == "mjpeg":
        for packet in container.demux(stream):
            if packet.size:  # the demuxer ends with an empty packet
                yield StreamPicture(seconds(packet.pts), encoded=bytes(packet))
    else:
        for frame in container.decode(stream):
            yield StreamPicture(seconds(frame.pts),
                                pixels=partial(frame.to_ndarray, format="rgb24"))
