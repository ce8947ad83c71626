"""Dropping frames seen before: QoS 1 redelivery after a crash may repeat a frame, and a
camera sends a frame again (a new attempt) when its result is late rather than lost."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable


class RecentIds:
    """The last `size` ids, each with a value of its own (a digest of the content, say);
    `seen()` answers and remembers in one step."""

    def __init__(self, size: int = 4096) -> None:
        self._ids: OrderedDict[str, Hashable] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def __contains__(self, frame_id: str) -> bool:
        with self._lock:
            return frame_id in self._ids

    def get(self, frame_id: str) -> Hashable | None:
        """The value `frame_id` was remembered with; None when it was not seen."""
        with self._lock:
            return self._ids.get(frame_id)

    def put(self, frame_id: str, value: Hashable) -> None:
        """Remember `frame_id` with `value`, in place of any value it had."""
        with self._lock:
            self._store(frame_id, value)

    def seen(self, frame_id: str, value: Hashable = True) -> Hashable | None:
        """The value `frame_id` was remembered with; None when it was not seen (it is
        remembered now, with `value`)."""
        with self._lock:
            earlier = self._ids.get(frame_id)
            self._store(frame_id, value if earlier is None else earlier)
            return earlier

    def _store(self, frame_id: str, value: Hashable) -> None:
        self._ids[frame_id] = value
        self._ids.move_to_end(frame_id)
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
