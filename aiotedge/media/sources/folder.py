"""A folder of photos: read once, round and round, or watched for new photos.

Watching suits a motion-triggered camera or an FTP drop folder: each photo written into the
folder is sent once, when its writer has closed it (or renamed it into the folder), never
half-written. The kernel says when (inotify, through the watchdog library); guessing from sizes
and times would read a slow upload early.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from aiotedge.contracts.errors import ImageError
from aiotedge.contracts.extras import import_extra
from aiotedge.media.image import IMAGE_SUFFIXES, list_images, read_photo
from aiotedge.media.sources.base import CapturedFrame, FrameSource

log = logging.getLogger(__name__)

#: how often a watch checks whether it was told to stop
_POLL_SECONDS = 0.5


class FolderSource(FrameSource):
    """The folder's photos by name, once or looping; or, with `watch`, each new one once."""

    def __init__(self, folder: Path, loop: bool = False, watch: bool = False) -> None:
        self.folder = folder
        self.name = str(folder)
        self.loop = loop
        self.watch = watch
        if watch:
            if not folder.is_dir():
                raise ImageError(f"{folder}: not a folder")
            _watchdog()  # missing: say so at start, not when the first photo comes
            self._photos: list[Path] = []
        else:
            self._photos = list_images(folder)

    def frames(self, stop: threading.Event) -> Iterator[CapturedFrame]:
        paths = self._watched(stop) if self.watch else self._listed(stop)
        for path in paths:
            try:
                data = read_photo(path)
            except ImageError as exc:  # removed or replaced since
                log.warning("skipped %s", exc)
                continue
            yield CapturedFrame(time.time(), path.name, encoded=data)

    def _listed(self, stop: threading.Event) -> Iterator[Path]:
        while not stop.is_set():
            for path in self._photos:
                if stop.is_set():
                    return
                yield path
            if not self.loop:
                return

    def _watched(self, stop: threading.Event) -> Iterator[Path]:
        observer_class, handler_class, closed, moved = _watchdog()
        written: queue.Queue[Path] = queue.Queue()

        def on_event(event) -> None:  # on the observer's thread
            if isinstance(event, closed):
                path = event.src_path
            elif isinstance(event, moved) and not self._photo(event.src_path):
                # moved in: from outside the folder (`mv` from a folder beside it), or from a
                # name that is no photo's (upload.part); a photo renamed in the folder was sent
                path = event.dest_path
            else:
                return
            if self._photo(path):
                written.put(Path(path))

        handler = handler_class()
        handler.on_any_event = on_event
        observer = _full_events(observer_class)
        observer.schedule(handler, str(self.folder), recursive=False)
        observer.start()
        log.info("watching %s for new photos", self.folder)
        try:
            while not stop.is_set():
                try:
                    yield written.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    continue
        finally:
            observer.stop()
            observer.join()

    def _photo(self, path: str) -> bool:
        """Whether `path` (as watchdog gives it; "" for none) names a photo in the folder."""
        return bool(path) and Path(path).parent == self.folder and \
            Path(path).suffix.lower() in IMAGE_SUFFIXES


def _full_events(observer_class: type):
    """An observer that reports a file moved in from an unwatched folder as a move.

    inotify says "moved to" for it, with no "moved from"; watchdog's inotify observer reports
    that as created unless asked for full events, and "created" is also the first thing a
    writer's new file says, long before it is whole. Other systems' observers have no such
    switch, and no "closed" event either: watching needs inotify (Linux).
    """
    try:
        return observer_class(generate_full_events=True)
    except TypeError:
        return observer_class()


def _watchdog() -> tuple[type, type, type, type]:
    """The watchdog library's observer, handler and the two events that mean "written"."""
    import_extra("watchdog", extra="watch", feature="watching a folder")
    from watchdog.events import FileClosedEvent, FileMovedEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    return Observer, FileSystemEventHandler, FileClosedEvent, FileMovedEvent
