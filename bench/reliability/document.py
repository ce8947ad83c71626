"""docs/reliability.md: the table of one run, what each scenario does, the command, the machine."""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench.benchdoc import command_line, machine, table
from bench.reliability.results import Row
from bench.reliability.suite import Scenario
from bench.reliability.workload import Mode, Workload
from tests.conftest import REPO, SHARED_DATA

DOCUMENT = REPO / "docs" / "reliability.md"
PROGRAM = "python -m bench.reliability"
DEFECTS = {
    1: "error events that quote a huge field",
    2: "shared subscriptions lost on a broker restart",
    3: "frame stealing through `$share` by another broker user",
    4: "QoS 1 frames dropped by mosquitto's queue limit under overload",
    5: "msgpack memory bomb",
    6: "NaN activations",
    7: "EXIF orientation ignored",
    8: "camera traceback on a symlink loop",
    9: "config values that break paho",
    10: "invisible TLS failures",
    11: "no chain check of segments at start",
    12: "camera exiting 0 when every publish is refused",
    "R2-1": "any broker user can kick a stage off (client-id takeover)",
    "R2-3": "losses a foreign publisher did not cause are invisible",
    "R2-5": "duplicate predictions after a broker restart with replicas",
}
HEADER = ("scenario", "defect", "inputs tried", "faults injected", "frames sent", "frames lost",
          "duplicates", "crashes", "peak RSS MB", "note", "problems found")


def scrub(text: str) -> str:
    """No path of this machine, no random pipeline names: the document is committed."""
    text = text.replace(str(SHARED_DATA), "../shared/data").replace(str(REPO), ".")
    text = re.sub(re.escape(tempfile.gettempdir()) + r"/[^\s'\":;,)]+", "<tmp>", text)
    return re.sub(r"\brel[0-9a-f]{6}-", "", text)


def _cell(value: object) -> str:
    return scrub(str(value)).replace("|", "\\|").replace("\n", " ")


def rows_table(rows: list[Row]) -> str:
    body = []
    for row in rows:
        if row.skipped:
            body.append((row.scenario, row.defect or "", row.inputs, row.faults, "", "", "", "",
                         "", f"skipped: {row.skipped}", ""))
            continue
        body.append((row.scenario, row.defect or "", row.inputs, row.faults, row.sent,
                     row.lost_cell, row.duplicates, row.crashes,
                     f"{row.peak_rss_mb:.0f}" if row.peak_rss_mb else "", row.note,
                     "; ".join(row.findings) or "none"))
    return table(HEADER, [tuple(_cell(c) for c in line) for line in body])


def defects_section(rows: list[Row]) -> str:
    lines = []
    for number, what in DEFECTS.items():
        measured = [row for row in rows if row.defect == number]
        if not measured:
            lines.append(f"- {number}. {what}: not run")
        for row in measured:
            if row.skipped:
                lines.append(f"- {number}. {what} ({row.scenario}): skipped, {row.skipped}")
            else:
                shown = "; ".join(row.findings) if row.findings else "not shown (fixed?)"
                lines.append(f"- {number}. {what} ({row.scenario}): {_cell(shown)}")
    return "\n".join(lines)


def render(results: list[tuple[Scenario, Row]], mode: Mode, workload: Workload,
           seconds: float) -> str:
    main = workload.main.source.file
    rows = [row for _, row in results]
    return "\n\n".join([
        "# Reliability",
        "Real stage daemons (`python -m aiotedge stage`) against a real mosquitto on loopback, "
        "under faults. Every scenario starts its own broker and daemons, injects its faults, "
        "counts what came out, and stops everything it started, also when it fails; each has a "
        "hard timeout. `tests/test_reliability.py` runs the same scenarios with the `--fast` "
        "counts as part of `make test` and asserts 0 lost frames (beyond those counted as "
        "dropped by design), 0 duplicates, 0 crashes, memory bounded relative to each daemon's "
        "start, and no problems found; the scenarios that fail today are marked with the "
        "defect of the issue that makes them fail.",
        f"`{command_line()}` ({mode.name} run, {seconds / 60:.0f} min) on {machine()}. "
        f"Main pipeline: `{main}` in 3 stages"
        + ("" if workload.uses_shared else " (the int8 test CNN: ../shared/data was absent)")
        + "; the small test CNNs of tests/models.py (int8 in 3 and 5 stages, float32 in 3) "
        "where a scenario needs them. `make reliability` runs the full suite, "
        f"`{PROGRAM} --fast` the small one, `--only NAME` one scenario.",
        "## Results",
        rows_table(rows),
        "**frames sent**: frames a camera published, or good frames injected; **frames lost**: "
        "those of them no prediction came out for (in brackets, those a node dropped and "
        "counted on purpose: a QoS 0 stage keeping the newest frame, or what mosquitto held "
        "unsaved when it was SIGKILLed); **duplicates**: predictions a raw MQTT subscriber on "
        "the predictions topic received more than once for a frame id; **crashes**: daemon "
        "exits nobody asked for, a SIGTERM that did not end in exit 0, or a traceback; "
        "**peak RSS**: the largest high-water mark (VmHWM) of a stage daemon. The note says who "
        "counted the lost frames: a stage (`dropped`, an error event naming the frame), the "
        "broker (`$SYS/broker/publish/messages/dropped`), another subscriber, or the last stage "
        "topic an observer saw the frame on.",
        "## The defects of the issue, as measured",
        defects_section(rows),
        "## What each scenario does",
        "\n".join(f"- **{row.scenario}** (`--only {chosen.name}`): {chosen.description}"
                  for chosen, row in results),
    ]) + "\n"


def rows_path(document: Path) -> Path:
    """The rows of the run as JSON, beside the document (another run can merge them)."""
    return document.with_name(f"{document.stem}-rows.json")


def write(results: list[tuple[Scenario, Row]], mode: Mode, workload: Workload, seconds: float,
          path: Path = DOCUMENT) -> Path:
    path.write_text(render(results, mode, workload, seconds))
    rows = [{"name": chosen.name, "command": command_line(), "mode": mode.name,
             "row": asdict(row)} for chosen, row in results]
    rows_path(path).write_text(scrub(json.dumps(rows, indent=1)) + "\n")
    return path
