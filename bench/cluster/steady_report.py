"""bench/cluster/steady.py's results: ratios within each round, the table, the prose and the plot,
all from the JSON the bench writes, so that a re-run cannot leave a figure stale."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.benchdoc import BENCHMARKS, table, write_section
from bench.cluster.report import Spread

HEADING = "Emulated cluster, steady state: replicas with the dispatch and in turn"
ONE, ALONE, MIXED = "one board", "alone", "mixed"


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def _find(runs: list[dict], kind: str, dispatch: bool | None = None,
          cpus: list[float] | None = None) -> dict | None:
    return next((run for run in runs if run["kind"] == kind
                 and (dispatch is None or run["dispatch"] == dispatch)
                 and (cpus is None or run["cpus"] == cpus)), None)


def alone_fps(runs: list[dict], cpu: float) -> float:
    """Frames/s of one board of `cpu` core alone in this round (the base, if it is that)."""
    run = _find(runs, ONE, cpus=[cpu]) or _find(runs, ALONE, cpus=[cpu])
    if run is None:
        raise ValueError(f"no run of a {cpu:g}-core board alone")
    return run["fps"]


def summarise(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per layout and dealing: frames/s, its ratio to what it is held to (one board
    times N, or the sum of each mixed board alone), each board's idle share; over rounds."""
    rounds = data["rounds"]
    rows = []
    for run in rounds[0]:
        if run["kind"] in (ONE, ALONE):
            continue
        same = [_find(runs, run["kind"], run["dispatch"]) for runs in rounds]
        held_to = [sum(alone_fps(runs, cpu) for cpu in run["cpus"]) for runs in rounds]
        rows.append({
            "kind": run["kind"], "dispatch": run["dispatch"], "cpus": run["cpus"],
            "fps": Spread.of(r["fps"] for r in same).__dict__,
            "ratio": Spread.of(r["fps"] / h for r, h in zip(same, held_to, strict=True)).__dict__,
            "held_to_fps": statistics.median(held_to),
            "idle": [statistics.median(r["boards"][n]["idle"] for r in same)
                     for n in range(len(run["cpus"]))],
            "starved": [statistics.median(r["boards"][n].get("starved", 0.0) for r in same)
                        for n in range(len(run["cpus"]))],
        })
    return rows


def checks(data: dict[str, Any]) -> dict[str, int]:
    runs = [run for runs in data["rounds"] for run in runs]
    return {key: sum(run[key] for run in runs)
            for key in ("published", "answered", "duplicates", "missing", "top1_checked",
                        "top1_wrong")}


def _waiting(row: dict[str, Any]) -> str:
    return " ".join(f"{max(0.0, idle - starved):.0%}"
                    for idle, starved in zip(row["idle"], row["starved"], strict=True))


def _loads(data: dict[str, Any]) -> str:
    loads = [run["load"] for runs in data["rounds"] for run in runs]
    return f"{min(loads):.1f} to {max(loads):.1f} at the runs' ends"


def _dealing(dispatch: bool) -> str:
    return "dispatch" if dispatch else "in turn"


def _cpus(cpus: list[float]) -> str:
    return "+".join(f"{cpu:g}" for cpu in cpus)


def markdown(data: dict[str, Any], plot: str) -> str:
    header, rows = data["header"], summarise(data)
    base = Spread.of(alone_fps(runs, header["cpu"]) for runs in data["rounds"])
    lines = [table(
        ("layout", "boards (cores)", "dealing", "frames/s", "x what it is held to",
         "idle share per board", "of it, starved"),
        [(row["kind"], _cpus(row["cpus"]), _dealing(row["dispatch"]),
          Spread(**row["fps"]).text(2), Spread(**row["ratio"]).text(3, "x"),
          " ".join(f"{idle:.0%}" for idle in row["idle"]),
          " ".join(f"{starved:.0%}" for starved in row["starved"])) for row in rows])]
    count = checks(data)
    n = header["boards"]
    prose = [
        f"`{header['command']}`. Each run: {header['warmup_s']:g} s of warm-up, then a window of "
        f"{header['window_s']:g} s in which predictions are counted, the camera keeping "
        f"{header['in_flight_per_board']} frames in flight per board; "
        f"{len(data['rounds'])} round(s), {header['minutes']:g} minutes in all, on "
        f"{header['machine']}. The base, one board of {header['cpu']:g} core over the same "
        f"window: {base.text(2)} frames/s. `x what it is held to`: N identical boards against "
        f"N times one board, the mixed layout against the sum of each of its boards alone "
        f"(each measured over the same window in the same round); median of rounds (lowest "
        f"to highest).",
        f"Checked in every run: {count['published']} frames sent, {count['answered']} "
        f"answered, {count['duplicates']} predictions twice, {count['missing']} missing; "
        f"top-1 of {count['top1_checked']} predictions of the sampled photos against the whole "
        f"model: {count['top1_wrong']} differ.",
        "`idle share`: the share of its quota a board's daemon did not use over the window; "
        "`of it, starved`: the share the board got no CPU for at all, its idle loop included "
        f"(the machine was busy elsewhere: load average {_loads(data)}). The rest of the idle "
        "share the daemon waited for frames.",
    ]
    for kind in dict.fromkeys(row["kind"] for row in rows):
        turn = next((r for r in rows if r["kind"] == kind and not r["dispatch"]), None)
        dispatch = next((r for r in rows if r["kind"] == kind and r["dispatch"]), None)
        if turn is None or dispatch is None:
            continue
        goal = f" (the goal: 0.95, {0.95 * n:.2f}x one board)" if kind != MIXED else \
            " (the goal: 0.95 of the sum)"
        prose.append(
            f"{kind.capitalize()} ({_cpus(dispatch['cpus'])} core): with the dispatch "
            f"{Spread(**dispatch['fps']).median:.2f} frames/s, "
            f"{Spread(**dispatch['ratio']).median:.3f} of {dispatch['held_to_fps']:.2f}{goal}; "
            f"dealt in turn {Spread(**turn['fps']).median:.2f}, "
            f"{Spread(**turn['ratio']).median:.3f}. Idle share per board in turn "
            f"{' '.join(f'{i:.0%}' for i in turn['idle'])}, with the dispatch "
            f"{' '.join(f'{i:.0%}' for i in dispatch['idle'])}; of it waiting for frames (idle "
            f"less starved) in turn {_waiting(turn)}, with the dispatch {_waiting(dispatch)}.")
    if header.get("quick"):
        prose.append("A `--quick` run: it checks that the bench works; its figures measure "
                     "nothing.")
    prose.append(f"![idle share of each board over time]({plot})")
    return "\n\n".join([lines[0], *prose]) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the doc's section again from a JSON the bench wrote (after a change of prose)."""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster.steady_report",
                                     description=main.__doc__)
    parser.add_argument("json", type=Path)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    plot = args.json.with_name("idle-quick.png" if data["header"].get("quick") else "idle.png")
    plot_idle(plot, data)
    body = markdown(data, os.path.relpath(plot, BENCHMARKS.parent))
    print(body)
    if args.write_docs:
        write_section(HEADING, body)
    return 0


def plot_idle(path: Path, data: dict[str, Any]) -> None:
    """Each board's idle share over time, in turn beside the dispatch, for each layout of the
    first round (the window starts at the dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run for run in data["rounds"][0] if run["kind"] not in (ONE, ALONE)]
    kinds = list(dict.fromkeys(run["kind"] for run in runs))
    figure, axes = plt.subplots(len(kinds), 2, figsize=(10, 3.2 * len(kinds)), squeeze=False,
                                sharey=True)
    step, warmup = data["header"]["sample_s"], data["header"]["warmup_s"]
    for row, kind in enumerate(kinds):
        for column, dispatch in enumerate((False, True)):
            axis = axes[row][column]
            run = _find(runs, kind, dispatch)
            if run is None:
                continue
            for board in run["boards"]:
                times = [step * (i + 1) for i in range(len(board["idle_over_time"]))]
                axis.plot(times, board["idle_over_time"], lw=1,
                          label=f"{board['node']} ({board['cpu']:g} core)")
            axis.axvline(warmup, color="k", ls="--", lw=0.8)
            axis.set_title(f"{kind}, {_dealing(dispatch)}: {run['fps']:.2f} frames/s")
            axis.set_xlabel("seconds")
            axis.set_ylim(0, 1)
            axis.grid(alpha=0.3)
        axes[row][0].set_ylabel("idle share of the quota")
        axes[row][1].legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
