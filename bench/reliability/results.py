"""A scenario's outcome, one row of docs/reliability.md, and how it is counted from a Run.

Lost frames are explained where someone counted them: a stage (its `dropped` counter at QoS 0,
or an error event naming the frame), the broker ($SYS dropped messages), a thief's subscriber,
or, failing all of those, the last stage topic the observer saw the frame on.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from aiotedge.contracts.events import Score
from bench.reliability.harness import BROKER_NODE, Run

log = logging.getLogger(__name__)


@dataclass
class Row:
    scenario: str
    #: what was sent: "300 frames", "10,000 messages of 41 kinds", ...
    inputs: str
    #: what was done to the pipeline: "3 x SIGKILL of a stage", ...
    faults: str
    sent: int = 0
    lost: int = 0
    #: lost frames that a node dropped and counted on purpose (QoS 0 keeps the newest frame)
    by_design: int = 0
    duplicates: int = 0
    crashes: int = 0
    #: predictions that differ from the whole model's
    wrong: int = 0
    peak_rss_mb: float = 0.0
    note: str = ""
    #: what a healthy pipeline would not show (the tests assert there are none)
    findings: list[str] = field(default_factory=list)
    #: why the scenario did not run here
    skipped: str = ""
    #: the defect of the issue this scenario measures, if any: its number in the first round,
    #: "R2-<number>" in the second
    defect: int | str | None = None
    seconds: float = 0.0

    def conclude(self) -> None:
        """Loss nobody counted on purpose, and duplicates, are problems too."""
        if self.lost > self.by_design:
            self.findings.insert(0, f"{self.lost - self.by_design} frames lost")
        if self.duplicates:
            self.findings.insert(0, f"{self.duplicates} duplicate predictions")

    @property
    def lost_cell(self) -> str:
        return f"{self.lost} ({self.by_design} counted drops)" if self.by_design else str(self.lost)


@dataclass
class Tally:
    """Frames sent and what came out, from a finished Run."""

    sent: int
    lost: list[str]
    duplicates: int
    wrong: list[str]
    crashes: list[str]
    peak_rss_mb: float
    peak_node: str
    rss_growth: dict[str, tuple[float, float]]
    explained: Counter[str]
    dropped_by_stages: int
    dropped_by_broker: int


def tally(run: Run, sent: dict[str, str], expected: dict[str, list[Score]],
          stats: dict[str, dict], broker_counters: bool = True) -> Tally:
    """Count `sent` (frame id -> photo name) against the predictions the observer received.

    `stats` are the nodes' retained stats, read after they stopped; `broker_counters` is false
    where the observer may not read $SYS (a broker with an ACL).
    """
    observer = run.observer
    assert observer is not None
    with observer.changed:
        counts = Counter(observer.predictions)
        tops = dict(observer.tops)
        error_ids = Counter(e.get("frame_id") for e in observer.errors
                            if isinstance(e.get("frame_id"), str))
        last_seen = dict(observer.last_seen)
    lost = [frame_id for frame_id in sent if counts[frame_id] == 0]
    if lost and broker_counters:  # the broker's count explains them: wait for its latest
        observer.sync_sys(run.deadline)
    wrong = [frame_id for frame_id, name in sent.items()
             if frame_id in tops and name in expected and tops[frame_id] != expected[name]]
    explained: Counter[str] = Counter()
    for frame_id in lost:
        if error_ids[frame_id]:
            explained["refused with an error event"] += 1
        elif frame_id in last_seen:
            explained[f"last seen on stage/{last_seen[frame_id][0]}"] += 1
        else:
            explained["never seen on a stage topic"] += 1
    usage = run.usage()
    stages = {node: u for node, u in usage.items() if node != BROKER_NODE}
    peak_node = max(stages, key=lambda node: stages[node].peak.rss_mb, default="")
    return Tally(
        sent=len(sent),
        lost=lost,
        duplicates=sum(count - 1 for count in counts.values() if count > 1),
        wrong=wrong,
        crashes=run.crashes(),
        peak_rss_mb=stages[peak_node].peak.rss_mb if peak_node else 0.0,
        peak_node=peak_node,
        rss_growth={node: (u.start.rss_mb, u.peak.rss_mb) for node, u in stages.items()},
        explained=explained,
        dropped_by_stages=sum(int(s.get("dropped", 0)) for s in stats.values()),
        dropped_by_broker=observer.broker_dropped,
    )


def fill(row: Row, counted: Tally, note: str = "") -> Row:
    """Copy a tally into a row and say, in its note, who counted the lost frames."""
    row.sent = counted.sent
    row.lost = len(counted.lost)
    row.duplicates = counted.duplicates
    row.crashes = len(counted.crashes)
    row.wrong = len(counted.wrong)
    row.peak_rss_mb = counted.peak_rss_mb
    parts = [note] if note else []
    if counted.lost:
        where = ", ".join(f"{n} {why}" for why, n in counted.explained.most_common())
        parts.append(f"lost: {where}")
    if counted.dropped_by_stages:
        parts.append(f"stages counted {counted.dropped_by_stages} dropped")
    if counted.dropped_by_broker:
        parts.append(f"mosquitto dropped {counted.dropped_by_broker} messages ($SYS)")
    if counted.peak_node:
        parts.append(f"peak RSS in {counted.peak_node}")
    if counted.wrong:
        row.findings.append(f"{len(counted.wrong)} predictions differ from the whole model")
    row.findings += counted.crashes
    row.note = "; ".join(parts)
    return row


def bounded_memory(row: Row, counted: Tally, factor: float = 1.5,
                   message_mb: float = 0.0) -> None:
    """A finding for each stage whose peak RSS exceeds `factor` x its RSS at start, plus
    `message_mb` for a message as large as the stage accepts, which it holds a few times
    over while reading it (paho joins its chunks, the payload is copied out).

    Bounded means relative to the daemon's own start (its model and libraries), so the check
    holds for any model; a leak or a decoded bomb shows as a multiple of it.
    """
    for node, (start, peak) in sorted(counted.rss_growth.items()):
        if peak > factor * start + message_mb:
            row.findings.append(f"{node} RSS grew from {start:.0f} to {peak:.0f} MB")
