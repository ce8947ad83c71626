"""An emulated cluster of Raspberry-Pi-class boards: pipeline, replicas and the planner's plan
on 1 to N boards, as `make bench-cluster` runs it (root).

    python -m bench.cluster [--boards 5] [--rounds 3] [--cpu 0.2 | --target-ms 72]
                            [--link-mbps 1000] [--layout NAME=DIR[:R0,R1,..]] [--write-docs]

Each stage daemon runs in a board of its own (bench/cluster/boards.py): a cgroup CPU quota
calibrated so that the whole model takes --target-ms per frame there (or --cpu given), and a
network namespace joined to the broker's by a veth pair shaped to --link-mbps. The broker, the
camera (aiotedge's Camera in this process) and this bench run outside the quotas. For N = 1..
--boards it measures what `aiotedge-convert plan --boards N` chooses from a profile measured on
one emulated board, and the planner's pure pipeline (one board per stage) and pure replicas (the
whole model on N boards in one share group), each against the planner's forecast; a round
runs every layout once, in order of N, and ratios are to the one-board run of the same round.
Writes docs/cluster/cluster.json, the plots there, and (--write-docs) a section of
docs/benchmarks.md; a model of another kind than classification (detection, say) gets a folder
docs/cluster/KIND and a section of its own, so its run leaves the classifier's figures as they
were. Everything it made is removed at the end; `python -m bench.cluster.selftest
--cleanup` removes what a killed run left.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import CameraConfig
from aiotedge.contracts.errors import AiotedgeError
from aiotedge.media.image import list_images, read_photo
from aiotedge.tflite.graph import load_graph
from aiotedge.tflite.kinds import recognise_kind
from bench.benchdoc import BENCHMARKS, command_line, machine, write_section
from bench.cluster import boards, layouts, report, start, timing
from bench.cluster.measure import Cluster, Phases, RunResult
from support.paths import SHARED_IMAGES, SHARED_MODEL

log = logging.getLogger("bench.cluster")
HEADING = "Emulated cluster: pipeline, replicas and the planner's plan on 1 to N boards"
PROGRAM = "python -m bench.cluster"
#: seconds an `aiotedge profile` on one board may take
PROFILE_TIMEOUT = 900
CLUSTER_DOCS = BENCHMARKS.parent / "cluster"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SHARED_MODEL)
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--boards", type=int, default=5, help="N = 1 to this many (5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every layout (3)")
    parser.add_argument("--strategies", default=",".join(layouts.STRATEGIES),
                        help="which of pipeline,replicas,plan (all)")
    parser.add_argument("--layout", action="append", default=[], metavar="NAME=DIR[:R0,R1,..]",
                        help="also a layout given by hand: a split folder and boards per stage, "
                             "or a plan's folder with one node config per board")
    parser.add_argument("--profile", type=Path,
                        help="board profile for the planner (else measured on a board)")
    parser.add_argument("--no-plan", action="store_true",
                        help="no planner: the pipeline at split's balanced cuts, replicas")
    parser.add_argument("--stage0-input", choices=("photo", "jpeg", "tensor"), default="photo",
                        help="what the planner plans stage 0 to receive; match --camera's "
                             "preprocess (photo)")
    quota = parser.add_mutually_exclusive_group()
    quota.add_argument("--cpu", type=float, help="each board's quota, cores (else calibrated)")
    quota.add_argument("--target-ms", type=float, default=72.0,
                       help="calibrate the quota so the whole model takes this per frame (72, a "
                            "Raspberry Pi 4's range)")
    parser.add_argument("--period-us", type=int,
                        help="the quota's CFS period (the shortest the kernel takes for it)")
    parser.add_argument("--no-idle-fill", action="store_true",
                        help="leave a waiting board's quota unused (by default a lowest-"
                             "priority loop uses it, so a frame after a pause is not run at "
                             "full speed until the quota bites)")
    parser.add_argument("--link-mbps", type=float, default=1000.0,
                        help="each board's link, tbf each way; 0: no network namespaces, "
                             "loopback (1000, a Pi 4's Ethernet)")
    parser.add_argument("--frames-per-board", type=int, default=Phases.frames_per_board,
                        help="frames of the throughput phase per board of the layout")
    parser.add_argument("--lone-frames", type=int, default=Phases.lone_frames)
    parser.add_argument("--in-flight-per-board", type=int,
                        default=Phases.in_flight_per_board,
                        help="frames without a result at most, per board")
    parser.add_argument("--camera", default="", metavar="TOML",
                        help="camera settings as TOML keys of [camera], e.g. 'fps = 0.0'")
    parser.add_argument("--out", type=Path,
                        help="where the JSON and the plots go (docs/cluster, or docs/cluster/"
                             "KIND for a model that does not classify)")
    parser.add_argument("--write-docs", action="store_true",
                        help="write the section of docs/benchmarks.md")
    return parser.parse_args(argv)


def titled(kind: str, model: Path, out: Path | None) -> tuple[str, Path]:
    """The section's heading and the results' folder for a model of `kind`: a classifier's
    are the bench's own; another kind's are its own, so that one run does not replace the
    other's figures."""
    if kind == "classification":
        return HEADING, out or CLUSTER_DOCS
    return f"{HEADING}, {kind} ({model.name})", out or CLUSTER_DOCS / kind


def camera_config(text: str) -> CameraConfig:
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"--camera {text!r}: not TOML: {exc}") from None
    return NodeConfig().override("camera", source="bench", loop=True, **values).camera


def make_layouts(args: argparse.Namespace, workdir: Path, profile: Path | None) -> list[
        layouts.Layout]:
    """Every layout of a round, in order of boards, the one-board run first. With a board's
    profile the planner plans each N, and the pipeline and replicas runs are its pure
    pipeline and pure replicas, with its forecasts."""
    wanted = args.strategies.split(",")
    chosen = [layouts.one_board(args.model, workdir)]
    options = plan_options(args)
    for count in range(2, args.boards + 1):
        plan = None
        if profile is not None:
            plan = layouts.plan_folder(args.model, count, workdir,
                                       ["--profile", str(profile), *options])
        if layouts.PIPELINE in wanted:
            chosen.append(layouts.pipeline(args.model, count, workdir, plan))
        if layouts.REPLICAS in wanted:
            chosen.append(layouts.replicas(args.model, count, workdir, plan))
        if layouts.PLAN in wanted and plan is not None:
            chosen.append(layouts.from_plan(layouts.PLAN, plan))
    chosen += [layouts.given(text) for text in args.layout]
    return chosen


def plan_options(args: argparse.Namespace) -> list[str]:
    """`aiotedge-convert plan`'s options for what the bench runs: stage 0's input, links."""
    options = ["--stage0-input", args.stage0_input]
    if args.link_mbps > 0:
        options += ["--link-mbps", f"{args.link_mbps:g}"]
    return options


def board_profile(args: argparse.Namespace, on_board: float, options: Sequence[str],
                  work: Path) -> tuple[Path, str]:
    """What the planner plans from: `aiotedge profile` with a photo of the median size as the
    camera's, run on one CPU of this machine without a quota, every time in it multiplied so
    that the planner's forecast for the whole model on one board is what one board did
    (`on_board` frames/s, measured before the rounds). The planner is then held to how 2 to N
    boards and their layouts scale.

    Not the profile measured under a quota: a piece of the model takes well under a quota's
    period, so most of its timed runs fall between throttled periods and run at full speed.
    Nor the quota's share of a core: a board's work runs in slices between other boards' and
    the idle loop's, with the caches they leave, and a stage daemon's work (photos, messages)
    suffers more from that than a model's invoke does.
    """
    photos = sorted(list_images(args.images), key=lambda path: path.stat().st_size)
    photo = photos[len(photos) // 2]
    measured = work / "cpu-profile.json"
    subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "aiotedge", "profile",
                    str(args.model), "--threads", "1", "--photo", str(photo), "--out",
                    str(measured)], check=True, stdout=subprocess.DEVNULL, timeout=PROFILE_TIMEOUT)
    full = layouts.forecast(layouts.plan_folder(args.model, 1, work / "cpu",
                                                ["--profile", str(measured), *options]))
    assert full is not None  # plan writes its forecast
    factor = full / on_board
    data = slowed(json.loads(measured.read_text()), factor)
    data["machine"] = f"emulated board (from {data.get('machine', '?')})"
    out = work / "board-profile.json"
    out.write_text(json.dumps(data, indent=1))
    return out, (f"The planner's profile: `aiotedge profile --threads 1 --photo {photo.name}` "
                 f"on one CPU of this machine, which forecasts {full:.1f} frames/s for the whole "
                 f"model there, its times multiplied by {factor:.2f}, so that it forecasts what "
                 f"one board did before the rounds ({on_board:.1f} frames/s); the forecasts for "
                 "2 boards and more are the planner's own.")


def slowed(data: Any, factor: float) -> Any:
    """A profile's times (every `*_ms`) multiplied by `factor`; `one_way_ms`, a message's
    time through the broker, which is not on the board, as it is."""
    if isinstance(data, dict):
        return {key: value * factor if key.endswith("_ms") and key != "one_way_ms"
                and isinstance(value, int | float) else slowed(value, factor)
                for key, value in data.items()}
    if isinstance(data, list):
        return [slowed(item, factor) for item in data]
    return data


def calibrate(args: argparse.Namespace) -> tuple[float, str]:
    if args.cpu:
        return args.cpu, f"{args.cpu:g} core per board, as given (--cpu)"
    found = timing.calibrate(
        [sys.executable, "-m", "bench.cluster.probe", str(args.model), "--frames", "20"],
        args.target_ms / 1000, period_us=args.period_us)
    return found.fraction, (
        f"{found.fraction:.3f} core per board, calibrated: the whole model took "
        f"{found.probe_seconds * 1000:.1f} ms per frame at {found.probe_fraction:g} core, so "
        f"{args.target_ms:g} ms needs {found.fraction:.3f}; checked at that quota: "
        f"{found.check_seconds * 1000:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.model.is_file():
        raise SystemExit(f"bench-cluster: no model at {args.model} (give --model)")
    heading, out = titled(recognise_kind(load_graph(args.model)), args.model, args.out)
    link = boards.Link(args.link_mbps) if args.link_mbps > 0 else None
    if not start.ready("bench-cluster", link):
        return 0
    photos = [(path.name, read_photo(path)) for path in list_images(args.images)]
    phases = Phases(lone_frames=args.lone_frames, frames_per_board=args.frames_per_board,
                    in_flight_per_board=args.in_flight_per_board)
    camera = camera_config(args.camera)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aiotedge-cluster-") as work:
        cpu, calibration = calibrate(args)
        log.info("%s", calibration)
        count = max([args.boards, *(layouts.given(text).boards for text in args.layout)])
        if cpu * count > (os.cpu_count() or 1) - 0.5:
            log.warning("%d boards of %.2f core leave less than half a core for the broker "
                        "and the camera", count, cpu)
        notes = []
        rounds: list[list[RunResult]] = []
        with Cluster(count, cpu, link, period_us=args.period_us,
                     fill_idle=not args.no_idle_fill) as cluster:
            wake = cluster.wake_lateness()
            profile = args.profile
            if profile is None and not args.no_plan:
                base = layouts.one_board(args.model, Path(work))
                on_board = cluster.run(base, photos, phases, seed=0, camera=camera).fps
                profile, note = board_profile(args, on_board, plan_options(args), Path(work))
                notes.append(note)
            chosen = make_layouts(args, Path(work), None if args.no_plan else profile)
            for number in range(args.rounds):
                runs = []
                for position, layout in enumerate(chosen):
                    result = cluster.run(layout, photos, phases, seed=number * 100 + position,
                                         camera=camera)
                    log.info("round %d %-12s %-32s %6.1f frames/s, lone %6.1f ms, load %.1f",
                             number + 1, layout.name, layout.describe(), result.fps,
                             result.lone_latency_ms, result.load_after)
                    runs.append(result)
                rounds.append(runs)
    minutes = (time.monotonic() - started) / 60
    summaries = report.summarise(rounds)
    loads = [run.load_after for runs in rounds for run in runs]
    header = {"command": command_line(), "machine": machine(), "cpu": cpu,
              "calibration": calibration, "wake_lateness_ms": wake, "link_mbps": args.link_mbps,
              "phases": phases.__dict__, "minutes": minutes}
    report.write_json(out / "cluster.json", header, rounds, summaries)
    images = {"throughput": out / "throughput.png", "cpu": out / "cpu.png"}
    report.plot_throughput(images["throughput"], summaries)
    report.plot_cpu(images["cpu"], summaries)
    notes = [describe_setup(args, calibration, count=count, cpu=cpu, loads=loads,
                            minutes=minutes, wake=wake), *notes]
    relative = {key: os.path.relpath(path, BENCHMARKS.parent) for key, path in images.items()}
    body = report.markdown(summaries, notes, relative)
    print(body)
    if args.write_docs:
        write_section(heading, body)
    return 0


def describe_setup(args: argparse.Namespace, calibration: str, *, count: int, cpu: float,
                   loads: list[float], minutes: float, wake: list[float]) -> str:
    link = (f"each in its own network namespace with a {args.link_mbps:g} Mbit/s link (tbf "
            "both ways) to the broker" if args.link_mbps > 0 else "all on loopback")
    period = args.period_us or boards.shortest_period_us(cpu)
    fill = (f"; board k pinned to CPU k mod {os.cpu_count()}, and a lowest-priority loop "
            "uses what the daemon leaves of the quota, so a frame arriving after a pause runs at "
            "the quota's rate from its start, as on a slower CPU, not at full speed until the "
            "quota bites" if not args.no_idle_fill else
            "; a board idle before a frame runs its first quota at full speed, so a lone "
            "frame's short stages are slowed less than the quota says")
    return (
        f"`{args.model.name}`, {len(list_images(args.images))} photos (shuffled per run), "
        f"1 interpreter thread per daemon. Boards: {calibration} (a quota of "
        f"{round(cpu * period)} µs every {period} µs{fill}; a process asleep on a board woke "
        f"{statistics.median(wake):.2f} ms late, median of {len(wake)} sleeps, 90th percentile "
        f"{statistics.quantiles(wake, n=10)[-1]:.2f} ms); {link}. Together the "
        f"{count} boards' quotas are {cpu * count:.2f} of this machine's {os.cpu_count()} "
        "cores; mosquitto, the camera (aiotedge's Camera, pacing itself by "
        f"{args.in_flight_per_board} frames in flight per board) and the bench run outside "
        "them on what is left. A quota is a ceiling, not a guarantee: the machine is shared, "
        "so a busy moment slows a board below its quota (load average over the runs "
        f"{min(loads):.1f} to {max(loads):.1f}). Each run: {args.lone_frames} lone frames, "
        f"then {args.frames_per_board} frames per board for the throughput; {args.rounds} "
        f"rounds, {minutes:.0f} minutes in all."
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (AiotedgeError, layouts.LayoutError, boards.BoardError) as exc:
        print(f"bench-cluster: {exc}", file=sys.stderr)
        sys.exit(2)
