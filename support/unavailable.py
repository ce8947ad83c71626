"""A tool or package this machine lacks: a skipped test under pytest, a clear error in a
benchmark (which runs without pytest, so it is not imported here)."""

from __future__ import annotations

import sys
from typing import NoReturn


class UnavailableError(RuntimeError):
    """Something a benchmark needs is not installed; the message says what and how to get it."""


def unavailable(reason: str) -> NoReturn:
    """Skip the running test (when pytest runs this process), else raise UnavailableError."""
    pytest = sys.modules.get("pytest")
    if pytest is not None:
        pytest.skip(reason)
    raise UnavailableError(reason)
