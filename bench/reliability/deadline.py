"""A scenario's hard deadline: every wait of the harness is cut to it, and a watchdog kills
what the run started if the scenario is still going some time after it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class ScenarioTimeoutError(RuntimeError):
    """The scenario's hard deadline passed; everything it started is being stopped."""


@dataclass(frozen=True)
class Deadline:
    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def bound(self, timeout: float) -> float:
        """`timeout`, cut to what is left; raises once nothing is left."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise ScenarioTimeoutError("the scenario's hard timeout passed")
        return min(timeout, left)


@contextmanager
def watchdog(deadline: Deadline, grace: float, on_expiry: Callable[[], None]) -> Iterator[None]:
    """Calls `on_expiry` (kill what the run started) if the scenario is still going at its
    deadline plus `grace`: a wait outside the harness's control cannot hold the suite."""
    timer = threading.Timer(max(0.0, deadline.at - time.monotonic()) + grace, on_expiry)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
