"""A camera node: publishes photos from a folder into stage 0, paced so the broker never drops.

Mosquitto silently discards messages beyond `max_queued_messages` even at QoS 1, so a camera
must not outrun the pipeline. Two ways to pace: a fixed frame rate, or (fps = 0) a window of
frames in flight, where each prediction or error event for one of ours lets the next go.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from aiotedge.image import ImageError
from aiotedge.session import MqttSession
from aiotedge.topics import Topics
from aiotedge.wire import Frame, encode_frame

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class CameraOptions:
    source: str = "cam0"
    fps: float = 0.0
    #: frames awaiting their prediction when fps = 0 (one per stage keeps every stage busy)
    in_flight: int = 1
    loop: bool = False
    #: how long to wait for one frame's prediction before giving its slot to the next
    frame_timeout: float = 30.0
    qos: int = 1


def read_photo(path: Path) -> bytes:
    """The bytes of a photo `list_images` accepted (it checks every photo, once)."""
    try:
        return path.read_bytes()
    except OSError as exc:  # removed or replaced since it was listed
        raise ImageError(f"{path}: {exc.strerror or exc}") from None


class Camera:
    """Publishes frames; in window mode it listens for its own frames' results."""

    def __init__(self, session: MqttSession, topics: Topics, options: CameraOptions) -> None:
        self.session = session
        self.topics = topics
        self.options = options
        self._run_id = secrets.token_hex(3)
        self._outstanding: dict[str, float] = {}
        self._slot_freed = threading.Condition()
        self.published = 0
        if options.fps <= 0:
            session.subscribe(topics.predictions, self._on_result, qos=1)
            session.subscribe(topics.errors, self._on_result, qos=1)

    def frame_id(self, seq: int) -> str:
        return f"{self.options.source}-{self._run_id}-{seq}"

    def run(self, photos: list[tuple[str, bytes]], frames: int | None = None,
            stop: threading.Event | None = None) -> int:
        """Publish photos (looping if asked) until `frames` are sent or `stop` is set.

        Each run numbers its frames from 0 under a new run id, so frame ids never repeat.
        """
        stop = stop or threading.Event()
        self._run_id = secrets.token_hex(3)
        with self._slot_freed:
            self._outstanding.clear()
        sequence: Iterator[tuple[str, bytes]] = (
            itertools.cycle(photos) if self.options.loop else iter(photos)
        )
        if frames is not None:
            sequence = itertools.islice(sequence, frames)
        period = 1.0 / self.options.fps if self.options.fps > 0 else 0.0
        next_at = time.monotonic()
        for seq, (name, data) in enumerate(sequence):
            if stop.is_set():
                break
            if period:
                if stop.wait(max(0.0, next_at - time.monotonic())):
                    break
                next_at += period
            elif not self._wait_for_slot(stop):
                break
            self.publish(seq, name, data)
        return self.published

    def publish(self, seq: int, name: str, data: bytes) -> str:
        frame = Frame(
            frame_id=self.frame_id(seq),
            source=self.options.source,
            seq=seq,
            captured_at=time.time(),
            image=data,
        )
        if self.options.fps <= 0:
            with self._slot_freed:
                self._outstanding[frame.frame_id] = time.monotonic()
        self.session.publish(
            self.topics.stage_input(0), encode_frame(frame), qos=self.options.qos
        )
        self.published += 1
        log.debug("published %s (%s)", frame.frame_id, name)
        return frame.frame_id

    def _wait_for_slot(self, stop: threading.Event) -> bool:
        with self._slot_freed:
            while len(self._outstanding) >= self.options.in_flight:
                if stop.is_set():
                    return False
                self._expire_overdue()
                self._slot_freed.wait(timeout=0.5)
        return not stop.is_set()

    def _expire_overdue(self) -> None:
        now = time.monotonic()
        for frame_id, sent in list(self._outstanding.items()):
            if now - sent > self.options.frame_timeout:
                log.warning("no result for %s after %.0f s; moving on",
                            frame_id, self.options.frame_timeout)
                del self._outstanding[frame_id]

    def _on_result(self, message: mqtt.MQTTMessage) -> None:
        try:
            frame_id = json.loads(message.payload).get("frame_id")
        except (ValueError, AttributeError, RecursionError):
            return  # not one of ours: predictions and error events are JSON objects
        if not isinstance(frame_id, str):
            return
        with self._slot_freed:
            if self._outstanding.pop(frame_id, None) is not None:
                self._slot_freed.notify_all()
