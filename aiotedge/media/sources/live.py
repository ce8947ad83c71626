"""Reading a live source: its own thread, one frame slot, reconnection with backoff.

A camera produces frames whether or not the pipeline has room for them. Queueing them would
grow memory without bound while the pipeline (or the broker) is behind or away, and every frame
sent would be older than the last; so the reader keeps only the newest frame, and the camera
takes it when it can send one. Frames overwritten before anyone took them are counted.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import closing

from aiotedge.media.sources.base import CapturedFrame, FrameSource

log = logging.getLogger(__name__)

#: seconds before the first attempt to open a source again, and the most between attempts:
#: a camera back from a reboot is found within this, and a dead one is not hammered
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 5.0


class LiveReader:
    """Reads a live source in a thread into a one-frame slot until stopped or the source ends."""

    def __init__(self, source: FrameSource,
                 backoff: tuple[float, float] = (BACKOFF_FIRST, BACKOFF_MAX),
                 condition: threading.Condition | None = None) -> None:
        """`condition`, if given, is notified of every frame: a consumer waiting on it for
        other things too (room to send) wakes when a frame comes."""
        self.source = source
        self.backoff = backoff
        self._slot: CapturedFrame | None = None
        self._changed = condition or threading.Condition()
        self._stop = threading.Event()
        self._ended = False
        #: frames read, frames overwritten before they were taken, times the source dropped
        self.captured = 0
        self.dropped = 0
        self.reconnects = 0
        #: "connecting", "streaming", "reconnecting: <why>" or "ended": for status and logs
        self.state = "connecting"
        self._thread = threading.Thread(target=self._run, name="source-reader", daemon=True)

    def start(self) -> LiveReader:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop reading and wait for the thread to release the source.

        Joined, not left to die with the interpreter: a thread still inside a native library
        (FFmpeg, libcamera) at exit can abort the process.
        """
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s: the reader did not stop within %.0f s", self.source.name, timeout)

    @property
    def ready(self) -> bool:
        """A frame is waiting, or the reader has ended: `take` will not wait."""
        with self._changed:
            return self._slot is not None or self._ended

    def take(self, timeout: float | None = None) -> CapturedFrame | None:
        """The newest frame not taken yet; None if none came within `timeout`, or when the
        reader is stopped or the source ended."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._slot is not None or self._ended or self._stop.is_set(), timeout)
            frame, self._slot = self._slot, None
            return frame

    def _put(self, frame: CapturedFrame) -> None:
        with self._changed:
            if self._slot is not None:
                self.dropped += 1
            self._slot = frame
            self.captured += 1
            self._changed.notify_all()

    def _run(self) -> None:
        delay = self.backoff[0]
        problem: str | None = None
        down_since = 0.0
        while not self._stop.is_set():
            try:
                # closed when left, so the source releases its device or connection at once
                with closing(self.source.frames(self._stop)) as frames:
                    for frame in frames:
                        if problem is not None:
                            log.warning("%s: streaming again after %.1f s down",
                                        self.source.name, time.monotonic() - down_since)
                            problem = None
                        self.state = "streaming"
                        delay = self.backoff[0]
                        self._put(frame)
                        if self._stop.is_set():
                            break
                if not self._stop.is_set():
                    log.info("%s: no more frames", self.source.name)
                    break
            except Exception as exc:  # whatever a library raises, the camera reconnects
                reason = self.source.explain(exc)
                if problem is None:
                    down_since = time.monotonic()
                if reason != problem:  # once per change of reason, not at every attempt
                    log.warning("%s: %s; reconnecting (every %.1f s at most)",
                                self.source.name, reason, self.backoff[1])
                problem = reason
                self.state = f"reconnecting: {reason}"
            if self._stop.wait(delay):
                break
            self.reconnects += 1
            delay = min(delay * 2, self.backoff[1])
        with self._changed:
            self._ended = True
            self.state = "ended"
            self._changed.notify_all()
