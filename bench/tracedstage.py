"""`aiotedge stage`, recording when each frame's input reaches the segment, for bench/hop.py.

    python -m bench.tracedstage TRACE.json stage --manifest DIR --stage K ...

Runs the stage daemon of the `aiotedge` command unchanged but for one wrapper around its
segment's `run_all` (which `run` calls): the Unix time at which each call starts (the input
decoded and about to be set) is kept in memory and written to TRACE.json, a list of seconds,
when the daemon exits. With frames sent one at a time, the n-th entry belongs to the n-th
frame, after the stage's self-check at start where its manifest has a reference.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from aiotedge import cli
from aiotedge.nodes.daemons import stage
from aiotedge.tflite.runtime import Segment


def trace_segments(entries: list[float]) -> None:
    """Make the stage daemon's segment note the time of every call into `entries`."""
    open_segment = stage.open_segment

    def traced(*args, **kwargs) -> Segment:
        segment = open_segment(*args, **kwargs)
        # every invoke goes through run_all (run calls it; the last stage calls it itself)
        run_all = segment.run_all

        def timed_run(tensor: np.ndarray) -> tuple[np.ndarray, ...]:
            entries.append(time.time())
            return run_all(tensor)

        segment.run_all = timed_run  # type: ignore[method-assign]
        return segment

    stage.open_segment = traced


def main(argv: list[str]) -> int:
    trace_path, command = Path(argv[0]), argv[1:]
    entries: list[float] = []
    trace_segments(entries)
    try:
        return cli.main(command)
    finally:
        trace_path.write_text(json.dumps(entries))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
