"""docs/reliability.md: the table of one run, what each scenario does, the command, the machine."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from aiotedge.nodes.mqtt.broker import mosquitto_binary
from bench.benchdoc import command_line, keep_others, machine, table
from bench.reliability.results import Row
from bench.reliability.scenarios import SOAK_CURVE
from bench.reliability.suite import SCENARIOS, Scenario, scenario
from bench.reliability.workload import Mode, Workload
from support.paths import REPO, SHARED_DATA

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


@dataclass(frozen=True)
class Entry:
    """One scenario's row and the run it came from (the rows file keeps them between runs)."""

    name: str
    row: Row
    command: str
    mode: str
    main: str
    uses_shared: bool
    minutes: float
    machine: str
    note: str = ""

    def to_json(self) -> dict:
        return {**asdict(self), "row": asdict(self.row)}

    @classmethod
    def from_json(cls, data: dict) -> Entry:
        return cls(**{**data, "row": Row(**data["row"])})

    @property
    def run(self) -> tuple:
        return (self.command, self.mode, self.main, self.minutes, self.machine, self.note)


def mosquitto_version() -> str:
    try:
        done = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "mosquitto (version unknown)"
    found = re.search(r"mosquitto version (\S+)", done.stdout + done.stderr)
    return f"mosquitto {found.group(1)}" if found else "mosquitto (version unknown)"


def _run_line(entry: Entry, names: list[str]) -> str:
    main = f"`{entry.main}` in 3 stages" + (
        "" if entry.uses_shared else " (the int8 test CNN: ../shared/data was absent)")
    rows = ", ".join(f"`{name}`" for name in names)
    note = f" {entry.note}" if entry.note else ""
    return scrub(f"- `{entry.command}` ({entry.mode} run, {entry.minutes:.0f} min) on "
                 f"{entry.machine}; main pipeline {main}; rows {rows}.{note}")


def render(entries: list[Entry], artifacts: Path) -> str:
    """The report of `entries` (in the suite's order), which may come from several runs."""
    order = {s.name: n for n, s in enumerate(SCENARIOS)}
    entries = sorted(entries, key=lambda e: order.get(e.name, len(order)))
    rows = [entry.row for entry in entries]
    runs: dict[tuple, list[str]] = {}
    for entry in entries:
        runs.setdefault(entry.run, []).append(entry.name)
    first = {entry.run: entry for entry in reversed(entries)}
    soak_curve = artifacts / f"{SOAK_CURVE}.png"
    parts = [
        "# Reliability",
        "Real stage daemons (`python -m aiotedge stage`) against a real mosquitto on loopback, "
        "under faults. Every scenario starts its own broker and daemons, injects its faults, "
        "counts what came out, and stops everything it started, also when it fails; each has a "
        "hard timeout. `bench/tests/test_reliability.py` runs the same scenarios with the `--fast` "
        "counts as part of `make test` and asserts 0 lost frames (beyond those counted as "
        "dropped by design), 0 duplicates, 0 crashes, memory bounded relative to each daemon's "
        "start, and no problems found; the rows that measure a defect of an issue are marked "
        "with it (a number: the first round; R2-n: the second round's defect n).",
        "The rows below come from these runs (`make reliability` runs the full suite, "
        f"`{PROGRAM} --fast` the small one, `--only NAME` one scenario, whose row replaces its "
        "row here and keeps the others):",
        "\n".join(_run_line(first[run], names) for run, names in runs.items()),
        "The small test CNNs of support/models.py (int8 in 3 and 5 stages, float32 in 3) run "
        "where a scenario needs them.",
        "## Results",
        rows_table(rows),
        "**frames sent**: frames a camera published, or good frames injected; **frames lost**: "
        "those of them no prediction came out for (in brackets, those a node dropped and "
        "counted on purpose: a QoS 0 stage keeping the newest frame, what mosquitto held "
        "unsaved when it was SIGKILLed, or what it dropped at its queue limit and stage 0 "
        "counted as `missed`); **duplicates**: predictions a raw MQTT subscriber on "
        "the predictions topic received more than once for a frame id; **crashes**: daemon "
        "exits nobody asked for, a SIGTERM that did not end in exit 0, or a traceback; "
        "**peak RSS**: the largest high-water mark (VmHWM) of a stage daemon. The note says who "
        "counted the lost frames: a stage (`dropped`, `missed`, an error event naming the "
        "frame), the broker (`$SYS/broker/publish/messages/dropped`), another subscriber, or "
        "the last stage topic an observer saw the frame on.",
    ]
    if any(entry.name == "soak" for entry in entries) and soak_curve.is_file():
        parts += ["## The soak's memory curve",
                  f"![RSS of every daemon during the soak]({soak_curve.name})",
                  f"Every daemon's RSS every 10 s; the data: [{SOAK_CURVE}.json]"
                  f"({SOAK_CURVE}.json) (node -> [seconds, MB])."]
    parts += [
        "## The defects of the issues, as measured",
        defects_section(rows),
        "## What each scenario does",
        "\n".join(f"- **{entry.row.scenario}** (`--only {entry.name}`): "
                  f"{scenario(entry.name).description}" for entry in entries),
    ]
    return "\n\n".join(parts) + "\n"


def rows_path(document: Path) -> Path:
    """The rows behind the document, as JSON beside it."""
    return document.with_name(f"{document.stem}-rows.json")


def load(path: Path) -> list[Entry]:
    """The entries kept beside the document at `path` (none if there is no rows file)."""
    rows = rows_path(path)
    if not rows.is_file():
        return []
    return [Entry.from_json(data) for data in json.loads(rows.read_text())]


def write(results: list[tuple[Scenario, Row]], mode: Mode, workload: Workload, seconds: float,
          path: Path = DOCUMENT, *, note: str = "") -> Path:
    """This run's rows in place of those of the same scenarios; the others stay."""
    now = [Entry(chosen.name, row, command_line(), mode.name, workload.main.source.file,
                 workload.uses_shared, round(seconds / 60, 1),
                 f"{machine()}, {mosquitto_version()}", note)
           for chosen, row in results]
    names = {entry.name for entry in now}
    entries = [entry for entry in load(path) if entry.name not in names] + now
    save(entries, path)
    return path


def save(entries: list[Entry], path: Path) -> None:
    """The rows file and the document rendered from it."""
    rows_path(path).write_text(
        scrub(json.dumps([entry.to_json() for entry in entries], indent=1)) + "\n")
    old = path.read_text() if path.is_file() else ""
    path.write_text(keep_others(old, render(entries, path.parent)))


if __name__ == "__main__":  # the document again from its rows file, nothing run
    save(load(DOCUMENT), DOCUMENT)
