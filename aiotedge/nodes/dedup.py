"""Dropping frames seen before: QoS 1 redelivery after a crash may repeat a frame."""

from __future__ import annotations

import threading
from collections import OrderedDict


class RecentIds:
    """The last `size` frame ids; `seen()` answers and remembers in one step."""

    def __init__(self, size: int = 4096) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def seen(self, frame_id: str) -> bool:
        with self._lock:
            if frame_id in self._ids:
                self._ids.move_to_end(frame_id)
                return True
            self._ids[frame_id] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)
            return False
