"""Reading a live source: its own thread, one frame slot, reconnection with backoff.

A camera produces frames whether or not the pipeline has room for them. Queueing them would
grow memory without bound while the pipeline (or the broker) is behind or away, and every frame
sent would be older than the last; so the reader keeps only the newest frame, and the camera
takes it when it can send one. Frames overwritten before anyone took them are counted.

A source that keeps its connection and stops sending (a frozen camera) blocks the reader inside
its library until the library's own read timeout gives up; a second thread notices the silence
as soon as it is longer than the source's `stall_after`, so the state and the log say "stalled"
at once instead of "streaming", and the library's interrupt is never the reason shown.
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
        """`condition`, if given, is notified of every frame and change of state: a consumer
        waiting on it for other things too (room to send) wakes when a frame comes."""
        self.source = source
        self.backoff = backoff
        self._slot: CapturedFrame | None = None
        self._changed = condition or threading.Condition()
        self._stop = threading.Event()
        self._ended = False
        #: frames read, frames overwritten before they were taken
        self.captured = 0
        self.dropped = 0
        #: times the source went down (dropped, stalled, or could not be opened), however many
        #: attempts each took to open it again; and those attempts
        self.reconnects = 0
        self.attempts = 0
        #: "connecting", "streaming", "reconnecting: <why>" or "ended": for status and logs
        self.state = "connecting"
        #: why the source is down, and since when (None: it is not)
        self._problem: str | None = None
        self._down_since: float | None = None
        #: when the source last gave a frame, or was opened
        self._alive_at = time.monotonic()
        self._threads = [threading.Thread(target=self._run, name="source-reader", daemon=True)]
        if source.stall_after:
            self._threads.append(threading.Thread(target=self._watch_for_stalls,
                                                  args=(source.stall_after,),
                                                  name="source-stall-watch", daemon=True))

    def start(self) -> LiveReader:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop reading and wait for the thread to release the source.

        Joined, not left to die with the interpreter: a thread still inside a native library
        (FFmpeg, libcamera) at exit can abort the process.
        """
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        if self._threads[0].is_alive():
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

    def _put(self, frame: CapturedFrame, resumed: bool) -> None:
        """Keep `frame` as the newest; `resumed`: it says the source streams (again)."""
        with self._changed:
            if self._down_since is not None and resumed:
                log.warning("%s: streaming again after %.1f s down", self.source.name,
                            time.monotonic() - self._down_since)
                self._problem = self._down_since = None
            if self._down_since is None:
                self.state = "streaming"
            self._alive_at = time.monotonic()
            if self._slot is not None:
                self.dropped += 1
            self._slot = frame
            self.captured += 1
            self._changed.notify_all()

    def _went_down(self, reason: str) -> None:
        """Count an outage when one begins, and say why once per change of reason (called
        under the lock)."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.reconnects += 1
        if reason != self._problem:
            log.warning("%s: %s; reconnecting (every %.1f s at most)", self.source.name, reason,
                        self.backoff[1])
        self._problem = reason
        self.state = f"reconnecting: {reason}"
        self._changed.notify_all()

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            with self._changed:
                self._alive_at = time.monotonic()
            try:
                # closed when left, so the source releases its device or connection at once
                with closing(self.source.frames(self._stop)) as frames:
                    previous: float | None = None
                    for frame in frames:
                        delay = self.backoff[0]
                        # a frame long after the one before on a stalled connection is the last
                        # one held back (FFmpeg's RTSP reader gives it out at its first read
                        # timeout, then fails at the second): only one soon after it says the
                        # source streams again; a new connection's first frame does
                        now = time.monotonic()
                        after = self.source.stall_after
                        self._put(frame, previous is None or not after or now - previous < after)
                        previous = now
                        if self._stop.is_set():
                            break
                if not self._stop.is_set():
                    log.info("%s: no more frames", self.source.name)
                    break
            except Exception as exc:  # whatever a library raises, the camera reconnects
                after = self.source.stall_after
                with self._changed:
                    # a library that gave up waiting (PyAV's "Immediate exit requested") after
                    # a silence: the silence is the reason
                    silent = after and time.monotonic() - self._alive_at >= after
                    reason = stalled(after) if silent else self.source.explain(exc)
                    self._went_down(reason)
            if self._stop.wait(delay):
                break
            self.attempts += 1
            delay = min(delay * 2, self.backoff[1])
        with self._changed:
            self._ended = True
            self.state = "ended"
            self._changed.notify_all()

    def _watch_for_stalls(self, after: float) -> None:
        """Say that the source stalled as soon as it has been silent for `after` seconds."""
        with self._changed:
            while not (self._stop.is_set() or self._ended):
                quiet = time.monotonic() - self._alive_at
                if self._down_since is not None:  # down already: the reader says why
                    self._changed.wait()
                elif quiet >= after:
                    self._went_down(stalled(after))
                else:
                    self._changed.wait(after - quiet)


def stalled(after: float) -> str:
    """The reason a source that went silent is down: one text, so it is said once."""
    return f"stalled: no frame for {after:g} s"
