"""Counters a node keeps about its frames; read by the stats publisher and by tests."""

from __future__ import annotations

import threading
from collections import Counter


class Counters:
    """Thread-safe named counters (frames_in, frames_out, rejected, dropped, ...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
