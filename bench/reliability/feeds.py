"""What a scenario's cameras send: aiotedge's Camera, each in its thread (raw messages are
injected by injector.py)."""

from __future__ import annotations

import threading

from aiotedge.media.sources import Stills
from aiotedge.nodes.daemons.camera import Camera
from bench.reliability.deadline import Deadline, ScenarioTimeoutError


class Feed:
    """A Camera running in a thread, and the frames it sent."""

    def __init__(self, camera: Camera, photos: list[tuple[str, bytes]], frames: int) -> None:
        self.camera = camera
        self.photos = photos
        self.frames = frames
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)

    def start(self) -> Feed:
        self._thread.start()
        return self

    def _run(self) -> None:
        self.camera.run(Stills(self.photos, loop=True), self.frames, self._stop)

    def join(self, deadline: Deadline) -> None:
        self._thread.join(deadline.bound(3600))
        if self._thread.is_alive():
            raise ScenarioTimeoutError("the camera did not finish before the deadline")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sent(self) -> dict[str, str]:
        return {self.camera.frame_id(seq): self.photos[seq % len(self.photos)][0]
                for seq in range(self.camera.published)}
