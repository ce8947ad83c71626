"""The exception the CLI turns into a one-line error message, and where it comes from."""

from __future__ import annotations

from pathlib import Path

from aiotedge.runtime import Segment


class ConverterError(Exception):
    """The model, the requested split or a verification input cannot be used as asked."""


def open_segment(path: Path, num_threads: int | None = None) -> Segment:
    """`aiotedge.runtime.Segment`, with a load failure turned into a ConverterError."""
    try:
        return Segment(path, num_threads)
    except (ValueError, RuntimeError) as exc:  # what the interpreter raises on a bad model
        raise ConverterError(f"{path}: cannot load with the TFLite interpreter: {exc}") from exc
