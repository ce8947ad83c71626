"""bench/cluster/heal.py's results: per-second rates, each event's time to recover, each
phase's rate against the planner's forecast, frames lost and answered twice, the prose and the
timeline plot, all from the JSON the bench writes (one or several runs), so that a re-run
cannot leave a figure stale.

    python -m bench.cluster.heal_report RUN.json [MORE.json] [--out docs/cluster/heal.json]
                                        [--write-docs]

Definitions (also in the prose the docs get):
- a frame's **rate** counts each frame id once, at its first prediction, in one-second bins;
- a phase runs from one event to the next (the first from the end of the warm-up); its
  **settled rate** is its frames/s over its last `SETTLED_SECONDS` (half the phase at most);
- an event's **time to recover** is the start of the first window of `RECOVERED_SECONDS`
  (sliding by a second from the event) whose frames/s reach `RECOVERED_SHARE` of its phase's
  settled rate: predictions flowing at the new plan's rate;
- **seen** is when the broker said the event's node offline (or online again), and **re-planned**
  when the live pointer next moved, both from the event;
- **lost**: frame ids the camera sent and no prediction came for; **duplicates**: predictions
  beyond the first for a frame id, as a raw subscriber of the predictions topic got them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.benchdoc import BENCHMARKS, table, write_section
from bench.cluster.report import Spread

HEADING = "Emulated cluster heals itself: boards lost, cut off and added back"
RELIABILITY_HEADING = "The fleet heals itself (emulated cluster)"
#: a phase's settled rate: its frames/s over its last this many seconds
SETTLED_SECONDS = 20
#: recovered: the first window of this many seconds at this share of the settled rate
RECOVERED_SECONDS = 3
RECOVERED_SHARE = 0.9
#: the issue's goals
GOAL_RECOVERY_S = 5.0
GOAL_FORECAST_SHARE = 0.10
#: events after which the plan is held back on purpose (a bounced node waits), with why
HELD_BACK = {"link-up": "a node back from a bounce is put to work only after it stayed 60 s"}
#: what the JSON keeps of each prediction, a row each (its top-1 is checked in `counts`)
ARRIVAL_FIELDS = ("at", "frame_id", "latency_ms")
#: events that bring nodes (back) in
JOINS = ("link-up", "add")


@dataclass(frozen=True)
class Phase:
    """From one event to the next: what it was, what the plan at its end forecast, what came."""

    event: str
    boards: tuple[str, ...]
    start: float
    end: float
    #: the release live at the phase's end, the nodes it names and their forecast
    release: str | None
    planned: tuple[str, ...]
    forecast_fps: float | None
    settled_fps: float
    recovery_s: float | None
    #: from the event to the broker saying its node offline (online for a join), and to the
    #: live pointer's next move
    seen_s: float | None = None
    replanned_s: float | None = None
    #: a frame's time from capture to its prediction, median over the settled seconds
    latency_ms: float | None = None

    @property
    def of_forecast(self) -> float | None:
        return self.settled_fps / self.forecast_fps if self.forecast_fps else None


def first_answers(arrivals: list[dict[str, Any]]) -> list[float]:
    """When each frame id got its first prediction (seconds from the run's start)."""
    return [arrival["at"] for arrival in first_arrivals(arrivals)]


def first_arrivals(arrivals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each frame id's first prediction, in order of arrival."""
    first: dict[str, dict[str, Any]] = {}
    for arrival in arrivals:
        first.setdefault(arrival["frame_id"], arrival)
    return sorted(first.values(), key=lambda arrival: arrival["at"])


def settled_window(start: float, end: float) -> tuple[float, float]:
    """The phase's last seconds, over which its settled rate is taken."""
    seconds = max(1, min(SETTLED_SECONDS, math.floor(end - start) // 2))
    return math.floor(end - start) + start - seconds, math.floor(end - start) + start


def settled_latency(arrivals: list[dict[str, Any]], start: float,
                    end: float) -> float | None:
    """The median latency of the frames answered in the phase's settled seconds."""
    low, high = settled_window(start, end)
    latencies = [arrival["latency_ms"] for arrival in first_arrivals(arrivals)
                 if low <= arrival["at"] < high and arrival.get("latency_ms") is not None]
    return statistics.median(latencies) if latencies else None


def per_second(times: list[float], start: float, end: float) -> list[int]:
    """How many of `times` fall in each one-second bin [start + i, start + i + 1) before end."""
    counts = [0] * max(0, math.floor(end - start))
    for at in times:
        index = math.floor(at - start)
        if start <= at and 0 <= index < len(counts):
            counts[index] += 1
    return counts


def settled_rate(times: list[float], start: float, end: float) -> float:
    """Frames/s over the phase's last seconds: its rate once the plan of its end serves."""
    low, high = settled_window(start, end)
    return sum(low <= at < high for at in times) / (high - low)


def recovery_seconds(times: list[float], event: float, end: float,
                     settled: float) -> float | None:
    """Seconds from the event to the start of the first RECOVERED_SECONDS window (sliding by
    a second) whose frames/s reach RECOVERED_SHARE of `settled`; None when the phase has
    none. A window, not a second: a pipeline's answers come in bursts."""
    if settled <= 0:
        return None
    bins = per_second(times, event, end)
    wanted = RECOVERED_SHARE * settled * RECOVERED_SECONDS
    for index in range(len(bins) - RECOVERED_SECONDS + 1):
        if sum(bins[index:index + RECOVERED_SECONDS]) >= wanted:
            return float(index)
    return None


def seen_seconds(run: dict[str, Any], event: dict[str, Any]) -> float | None:
    """From the event to the broker's word on its last node: offline after a loss, online
    after a join."""
    online = event["kind"] in JOINS
    first = {}
    for change in sorted(run["availability"], key=lambda change: change["at"]):
        if change["node"] in event["boards"] and change["online"] == online \
                and change["at"] >= event["at"]:
            first.setdefault(change["node"], change["at"])
    return max(first.values()) - event["at"] if len(first) == len(event["boards"]) else None


def unexplained_offline(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The broker saying a node offline with no event to explain it: not between the node's
    kill or cut and 10 s after it joined again, nor after the run (a node the bench stops)."""
    events = sorted(run["events"], key=lambda event: event["at"])
    windows = []
    for position, event in enumerate(events):
        if event["kind"] in JOINS:
            continue
        for node in event["boards"]:
            back = next((later["at"] for later in events[position + 1:]
                         if later["kind"] in JOINS and node in later["boards"]), run["end"])
            windows.append((node, event["at"], back + 10.0))
    return [change for change in run["availability"]
            if not change["online"] and 0 <= change["at"] <= run["end"]
            and not any(node == change["node"] and start <= change["at"] <= end
                        for node, start, end in windows)]


def replanned_seconds(run: dict[str, Any], event: dict[str, Any], end: float) -> float | None:
    """From the event to the live pointer's next move within the phase."""
    moves = [change["at"] for change in run["live"] if event["at"] <= change["at"] < end]
    return min(moves) - event["at"] if moves else None


def frame_counts(sent: list[str], arrivals: list[dict[str, Any]],
                 expected: dict[str, int]) -> dict[str, int]:
    """Sent, answered, lost (sent, never answered), duplicates (answers beyond the first),
    answers for a frame never sent, and top-1 checked / wrong against the whole model."""
    answers = Counter(arrival["frame_id"] for arrival in arrivals)
    checked = [arrival for arrival in arrivals if arrival.get("name") in expected]
    return {
        "sent": len(sent),
        "answered": len(set(sent) & set(answers)),
        "lost": len(set(sent) - set(answers)),
        "duplicates": sum(count - 1 for count in answers.values()),
        "unknown": len(set(answers) - set(sent)),
        "top1_checked": len(checked),
        "top1_wrong": sum(expected[a["name"]] != a["top1"] for a in checked),
    }


def live_at(run: dict[str, Any], at: float) -> str | None:
    """The release the live pointer named at `at` (seconds from the run's start)."""
    current = None
    for change in run["live"]:
        if change["at"] <= at:
            current = change["release"]
    return current


def phases(run: dict[str, Any]) -> list[Phase]:
    """The run's phases, from the end of the warm-up to the end of the last."""
    times = first_answers(run["arrivals"])
    events = sorted(run["events"], key=lambda event: event["at"])
    marks = [{"at": run["steady_from"], "kind": "steady", "boards": []}, *events]
    ends = [event["at"] for event in events] + [run["end"]]
    out = []
    for mark, end in zip(marks, ends, strict=True):
        release = live_at(run, end)
        record = run["releases"].get(release or "", {})
        settled = settled_rate(times, mark["at"], end)
        event = mark["kind"] != "steady"
        out.append(Phase(
            event=mark["kind"], boards=tuple(mark["boards"]), start=mark["at"], end=end,
            release=release, planned=tuple(n for stage in record.get("assignments", [])
                                           for n in stage),
            forecast_fps=record.get("forecast_fps"), settled_fps=settled,
            recovery_s=recovery_seconds(times, mark["at"], end, settled) if event else None,
            seen_s=seen_seconds(run, mark) if event else None,
            replanned_s=replanned_seconds(run, mark, end) if event else None,
            latency_ms=settled_latency(run["arrivals"], mark["at"], end)))
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per phase over the runs (matched by position): the figures and their spread."""
    per_run = [phases(run) for run in runs]
    rows = []
    for position, phase in enumerate(per_run[0]):
        same = [found[position] for found in per_run if len(found) > position]
        recoveries = [p.recovery_s for p in same if p.recovery_s is not None]
        ratios = [p.of_forecast for p in same if p.of_forecast is not None]
        rows.append({
            "event": phase.event, "boards": list(phase.boards),
            "planned": sorted({node for p in same for node in p.planned}),
            "releases": [p.release for p in same],
            "seconds": Spread.of(p.end - p.start for p in same).__dict__,
            "forecast_fps": Spread.of(p.forecast_fps for p in same).__dict__
            if all(p.forecast_fps for p in same) else None,
            "coordinator_fps": _spread_of(
                run["releases"].get(p.release or "", {}).get("coordinator_fps")
                for run, p in zip(runs, same, strict=False)),
            "settled_fps": Spread.of(p.settled_fps for p in same).__dict__,
            "latency_ms": _spread_of(p.latency_ms for p in same),
            "of_forecast": Spread.of(ratios).__dict__ if ratios else None,
            "recovery_s": Spread.of(recoveries).__dict__ if recoveries else None,
            "seen_s": _spread_of(p.seen_s for p in same),
            "replanned_s": _spread_of(p.replanned_s for p in same),
            "recovered_in": f"{len(recoveries)}/{len(same)}",
        })
    totals = Counter()
    for run in runs:
        totals.update(run["counts"])
        totals["unexplained_offline"] += len(unexplained_offline(run))
    return {"rows": rows, "counts": dict(totals)}


def _spread_of(values: Iterable[float | None]) -> dict[str, float] | None:
    known = [value for value in values if value is not None]
    return Spread.of(known).__dict__ if known else None


def _spread(value: dict[str, float] | None, digits: int = 1, unit: str = "",
            runs: int = 1) -> str:
    if value is None:
        return "none"
    spread = Spread(**value)
    return spread.text(digits, unit) if runs > 1 else f"{spread.median:.{digits}f}{unit}"


def _event_text(row: dict[str, Any]) -> str:
    boards = ", ".join(row["boards"])
    return {"steady": "steady, 5 boards", "kill": f"SIGKILL {boards}",
            "cut": f"link of {boards} down", "link-up": f"link of {boards} up",
            "add": f"{boards} started again"}.get(row["event"], f"{row['event']} {boards}")


def _loads(runs: list[dict[str, Any]]) -> str:
    loads = [run["header"].get("load", 0.0) for run in runs]
    return f"{min(loads):.1f}" if len(runs) == 1 else f"{min(loads):.1f} to {max(loads):.1f}"


def goals(summary: dict[str, Any]) -> list[str]:
    """Each goal of the issue, met or not, in the run's own figures."""
    rows, counts = summary["rows"], summary["counts"]
    recoveries = [(row, row["recovery_s"]) for row in rows if row["event"] != "steady"
                  and row["event"] not in HELD_BACK]
    slow = [f"{_event_text(row)}: {_spread(value, 0, ' s', 1 + (value['low'] != value['high']))}"
            if value else
            f"{_event_text(row)}: never within its phase" for row, value in recoveries
            if value is None or value["high"] > GOAL_RECOVERY_S]
    off = [f"{_event_text(row)}: {Spread(**row['of_forecast']).median:.2f}x"
           for row in rows if row["of_forecast"]
           and abs(Spread(**row["of_forecast"]).median - 1) > GOAL_FORECAST_SHARE]
    return [
        f"recovery within {GOAL_RECOVERY_S:g} s: "
        + ("met for every loss and join" if not slow else "not met, " + "; ".join(slow)),
        f"throughput within {GOAL_FORECAST_SHARE:.0%} of the forecast: "
        + ("met in every phase" if not off else "not met, " + "; ".join(off)),
        f"frames lost: {counts['lost']} (goal 0)",
        f"duplicates delivered: {counts['duplicates']} (goal 0)",
    ]


def markdown(runs: list[dict[str, Any]], plot: str) -> str:
    """The docs' section: the table per phase, the goals, how it was measured."""
    header = runs[0]["header"]
    summary = summarise(runs)
    many = len(runs) > 1
    lines = [table(
        ("phase (from its event)", "seconds", "release at its end", "boards it plans for",
         "forecast frames/s", "settled frames/s", "x forecast", "latency ms", "seen",
         "re-planned", "time to recover"),
        [(_event_text(row), _spread(row["seconds"], 0, "", len(runs)),
          " ".join(r or "none" for r in row["releases"]), len(row["planned"]),
          _spread(row["forecast_fps"], 2, "", len(runs)),
          _spread(row["settled_fps"], 1, "", len(runs)),
          _spread(row["of_forecast"], 2, "x", len(runs)),
          _spread(row["latency_ms"], 0, "", len(runs)),
          *(("", "") if row["event"] == "steady" else
            (_spread(row["seen_s"], 1, " s", len(runs)),
             _spread(row["replanned_s"], 1, " s", len(runs)))),
          "" if row["event"] == "steady" else
          (_spread(row["recovery_s"], 0, " s", len(runs))
           + (f" ({row['recovered_in']} runs)" if many else "")))
         for row in summary["rows"]])]
    counts = summary["counts"]
    commands = sorted({re.sub(re.escape(tempfile.gettempdir()) + r"/\S+", "<tmp>",
                              run["header"]["command"]) for run in runs})
    prose = [
        f"{'; '.join(f'`{c}`' for c in commands)}: {len(runs)} run(s) on {header['machine']}, "
        f"{max(run['header']['minutes'] for run in runs):g} minutes each or less, load "
        f"average {_loads(runs)} at the end; "
        + ("medians of the runs (lowest to highest)." if many else "one run.")
        + f" Model `{header['model']}`, {header['photos']} photos looped by aiotedge's Camera "
        f"(QoS 1, {header['in_flight']} frames in flight) in this process; "
        f"{header['boards']} emulated boards of {header['cpu']:g} core each (the steady "
        f"bench's quota: {header['quota']}), each in its own network namespace"
        + (f" with a {header['link_mbps']:g} Mbit/s link" if header['link_mbps'] else "")
        + f", one `aiotedge node` per board with `[broker] keepalive = {header['keepalive']}` "
        f"(the broker publishes a node's Last Will {1.5 * header['keepalive']:g} s after its "
        "link goes silent; a SIGKILLed node's socket closes at once), mosquitto, "
        "`aiotedge-convert deploy` of release `v1` and one `aiotedge-convert heal` "
        f"coordinator ({header['coordinator'] or 'its defaults'}) outside the quotas.",
        f"Timeline: {header['timeline']}.",
        f"Checked: {counts['sent']} frames sent, {counts['answered']} answered, "
        f"**{counts['lost']} lost**, **{counts['duplicates']} duplicates delivered**, "
        f"{counts['unknown']} answers for a frame never sent; top-1 of "
        f"{counts['top1_checked']} predictions of the sampled photos against the whole model: "
        f"{counts['top1_wrong']} differ. Nodes the broker said offline with no kill or cut "
        f"to explain it (a keepalive missed under load): {counts['unexplained_offline']}.",
        "Goals of the issue: " + "; ".join(goals(summary)) + ".",
        f"How it is counted: a frame counts once, at its first prediction; a phase runs from "
        f"its event to the next; its settled rate is its frames/s over its last "
        f"{SETTLED_SECONDS} s (half the phase at most), its latency the median of those "
        "seconds' frames from capture to prediction; an event's time to recover is the "
        f"start of the first {RECOVERED_SECONDS}-second window (sliding by 1 s from the "
        f"event) whose frames/s reach {RECOVERED_SHARE:.0%} of that phase's settled rate; "
        "seen: from the event to the broker saying the node offline (its Last Will) or, for "
        "a join, online; re-planned: from the event to the live pointer's next move. A join "
        "is re-planned only once the node has stayed online (its settle time, 60 s after a "
        "bounce) and the old plan serves meanwhile, so its time to recover is 0 s when the "
        "old plan's rate is already 90% of the new one's. The "
        "forecast is the planner's (`aiotedge-convert plan`'s cost model) for the cuts and "
        "replicas of the release live at the phase's end, from a board's profile: "
        f"{header.get('profile', 'not said')}. "
        + " ".join(f"After `{event}` the plan is held back on purpose: {why}."
                   for event, why in HELD_BACK.items()),
    ]
    said = [f"{_event_text(row)} {Spread(**row['coordinator_fps']).median:.0f}"
            for row in summary["rows"] if row.get("coordinator_fps")]
    if said:
        prose.append(
            "The coordinator plans by its own forecast, each stage's MACs over its nodes' "
            "announced speed proxy (a float32 matrix product's MAC/s), which is not frames/s: "
            "for the same releases it said " + ", ".join(said) + " frames/s.")
    if header.get("notes"):
        prose.append(header["notes"])
    prose.append(f"![frames/s per second with the events marked]({plot})")
    return "\n\n".join([lines[0], *prose]) + "\n"


def plot_timeline(path: Path, run: dict[str, Any]) -> None:
    """Frames/s per second over the run, the events and live-pointer moves marked, the
    forecast of the live release as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = first_answers(run["arrivals"])
    counts = per_second(times, 0.0, run["end"])
    window = [sum(counts[n:n + RECOVERED_SECONDS]) / RECOVERED_SECONDS
              for n in range(len(counts) - RECOVERED_SECONDS + 1)]
    figure, axis = plt.subplots(figsize=(11, 4.2))
    axis.step(range(len(counts)), counts, where="post", lw=0.8, alpha=0.6,
              label="predictions per second")
    axis.plot(range(len(window)), window, lw=1.4, color="tab:blue",
              label=f"over the {RECOVERED_SECONDS} s from each second")
    steps = [(change["at"], run["releases"].get(change["release"], {}).get("forecast_fps"))
             for change in run["live"]]
    if steps:
        xs = [at for at, _ in steps] + [run["end"]]
        ys = [value or 0 for _, value in steps]
        axis.step(xs, [*ys, ys[-1]], where="post", color="tab:green", ls="--", lw=1,
                  label="forecast of the live release")
    forecasts = [value for _, value in steps if value]
    top = max([*counts, *forecasts, 1]) * 1.15
    for event in run["events"]:
        axis.axvline(event["at"], color="tab:red", lw=1)
        axis.text(event["at"], top, f" {event['kind']} {','.join(event['boards'])}",
                  rotation=90, va="top", fontsize=7, color="tab:red")
    for change in run["live"]:
        axis.axvline(change["at"], color="tab:green", lw=0.6, ls=":")
    axis.axvline(run["steady_from"], color="k", lw=0.8, ls="--")
    axis.set_ylim(0, top * 1.05)
    axis.set_xlim(0, run["end"])
    axis.set_xlabel("seconds from the camera's start (red: events; green dotted: the live "
                    "pointer moved; dashed: end of warm-up)")
    axis.set_ylabel("frames/s")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_json(path: Path, runs: list[dict[str, Any]]) -> None:
    """The runs, each prediction as a row of ARRIVAL_FIELDS (thousands of them), their phases
    and the summary, compact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    compact = [{**run, "arrivals": [[round(arrival["at"], 3), arrival["frame_id"],
                                     arrival.get("latency_ms")] for arrival in run["arrivals"]]}
               for run in runs]
    data = {"arrival_fields": ARRIVAL_FIELDS, "runs": compact,
            "phases": [phase_dicts(run) for run in runs], "summary": summarise(runs)}
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for path in paths:
        data = json.loads(path.read_text())
        for run in data["runs"]:
            run["arrivals"] = [dict(zip(data["arrival_fields"], row, strict=True))
                               for row in run["arrivals"]]
            runs.append(run)
    return runs


def publish(runs: list[dict[str, Any]], out: Path, *, write_docs: bool) -> str:
    """The plot of the first run, the section; with write_docs, into both documents."""
    plot = out.with_name("heal-timeline-quick.png" if runs[0]["header"].get("quick")
                         else "heal-timeline.png")
    plot_timeline(plot, runs[0])
    body = markdown(runs, os.path.relpath(plot, BENCHMARKS.parent))
    if write_docs:
        write_section(HEADING, body)
        write_section(RELIABILITY_HEADING, body, document=BENCHMARKS.with_name("reliability.md"))
    return body


def main(argv: list[str] | None = None) -> int:
    """Write the docs' sections again from JSON the bench wrote; several files: their runs
    together, kept as one JSON (--out) with the plot of the first beside it."""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster.heal_report",
                                     description=main.__doc__)
    parser.add_argument("json", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=BENCHMARKS.parent / "cluster" / "heal.json")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    runs = load_runs(args.json)
    write_json(args.out, runs)
    print(publish(runs, args.out, write_docs=args.write_docs))
    return 0


def phase_dicts(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's phases as JSON (for a reader of heal.json without this module)."""
    return [{**asdict(phase), "of_forecast": phase.of_forecast} for phase in phases(run)]


if __name__ == "__main__":
    sys.exit(main())
