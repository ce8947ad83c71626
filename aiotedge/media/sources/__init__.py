"""Where a camera's frames come from: one module per kind, and `open_source` choosing one.

A new kind of source is a `FrameSource` in a module of its own, and one more case here.
"""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import urlsplit

from aiotedge.config.sections import CameraConfig
from aiotedge.contracts.errors import AiotedgeError, ConfigError
from aiotedge.media.image import IMAGE_SUFFIXES
from aiotedge.media.sources.base import CapturedFrame, FrameSource, SourceDroppedError
from aiotedge.media.sources.folder import FolderSource
from aiotedge.media.sources.picamera import SCHEME as PICAMERA2
from aiotedge.media.sources.picamera import Picamera2Source
from aiotedge.media.sources.stills import Stills, image_file
from aiotedge.media.sources.stream import STREAM_SCHEMES, StreamSource
from aiotedge.media.sources.v4l2 import V4L2Source
from aiotedge.media.sources.video import VideoFileSource

__all__ = ["CapturedFrame", "FrameSource", "SourceDroppedError", "Stills", "open_source"]

KINDS = ("a folder, an image or a video file, a device (/dev/video0), picamera2:N or a URL "
         f"({', '.join(f'{scheme}://' for scheme in STREAM_SCHEMES)})")


def open_source(camera: CameraConfig, where: str = "key 'camera.source'") -> FrameSource:
    """The source `camera.source` names, with the options that apply to its kind.

    Whatever is wrong with it (a missing file, a password without a user, a library not
    installed) is a ConfigError naming `where`, raised now rather than at the first frame.
    """
    text = camera.source
    if not text:
        raise ConfigError(f"{where}: no source given (--source: {KINDS})")
    try:
        return _open(camera, text)
    except AiotedgeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _open(camera: CameraConfig, text: str) -> FrameSource:
    if text.startswith(PICAMERA2):
        index = text.removeprefix(PICAMERA2)
        if not index.isdigit():
            raise ConfigError(f"{text!r}: the Pi camera is {PICAMERA2}N, N its number (0, 1)")
        return Picamera2Source(int(index), camera.picture_size, camera.capture_fps)
    if urlsplit(text).scheme.lower() in STREAM_SCHEMES:
        return StreamSource(text, camera.source_password(), camera.transport, camera.timeout)
    path = Path(text)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        mode, problem = None, exc.strerror
    # a capture device, or one under /dev that is unplugged now (the reader waits for it)
    if (mode is None and text.startswith("/dev/")) or (mode and stat.S_ISCHR(mode)):
        return V4L2Source(text, camera.size, camera.capture_fps, camera.pixel_format,
                          timeout=camera.timeout)
    if mode is None:
        hint = (" (the camera's name is the key 'name' now)"
                if "/" not in text and not path.suffix else "")
        raise ConfigError(f"{text}: {problem}; a source is {KINDS}{hint}")
    if stat.S_ISDIR(mode):
        return FolderSource(path, loop=camera.loop, watch=camera.watch)
    if camera.watch:
        raise ConfigError(f"{text}: only a folder can be watched (key 'camera.watch')")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return image_file(path, loop=camera.loop)
    return VideoFileSource(path, loop=camera.loop, realtime=camera.realtime)
