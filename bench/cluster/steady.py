"""Replicas in their steady state on emulated boards, the dispatch beside the turn-by-turn
dealing in the same run (root).

    python -m bench.cluster.steady [--boards 5] [--cpu 0.2] [--mixed 0.3,0.3,0.1,0.1,0.1]
                                   [--warmup 20] [--window 60] [--rounds 1] [--quick]
                                   [--link-mbps 0] [--write-docs]

Every run serves the whole model on replicas (one share group) in boards of bench/cluster/
boards.py, fed without pause by aiotedge's Camera (`--in-flight-per-board` frames in flight per
board): `--warmup` seconds, then a window of `--window` seconds in which the predictions are
counted. A round runs, each with the same window: one board (the base, at --cpu), N boards
with the replicas' shared subscription alone (`dispatch = false`: the broker deals frames in
turn) and N boards with the dispatch (`dispatch = true`: frames to the replica with room), then
each kind of board of the mixed layout alone and the mixed layout both ways. Each run checks
that every frame the camera sent got exactly one prediction (frame ids: none missing, none
twice) and the top-1 of a sample of photos against the whole model; it samples each board's
daemon CPU every second: its idle share is what it left of its quota. Writes
docs/cluster/steady.json, docs/cluster/idle.png and (--write-docs) a section of
docs/benchmarks.md whose figures all come from that JSON (bench/cluster/steady_report.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import BrokerConfig
from aiotedge.contracts.errors import AiotedgeError
from aiotedge.contracts.events import Prediction
from aiotedge.contracts.manifest import Manifest
from aiotedge.media.image import list_images, read_photo
from aiotedge.media.sources import Stills
from aiotedge.nodes.mqtt.broker import free_port
from aiotedge.nodes.mqtt.transport import Received
from bench.benchdoc import BENCHMARKS, command_line, machine, write_section
from bench.cluster import boards, layouts, start, steady_report
from bench.cluster.boards import Board, Link
from bench.cluster.measure import process_cpu_seconds
from bench.stagerun import StageRun
from support.broker import Broker
from support.daemons import StageLaunch
from support.paths import SHARED_IMAGES, SHARED_MODEL
from support.reference import whole_model_top

log = logging.getLogger("bench.cluster.steady")
PROGRAM = "python -m bench.cluster.steady"
#: seconds between two samples of the boards' CPU
SAMPLE_EVERY = 1.0
#: seconds the frames still in flight at the window's end may take
DRAIN_SECONDS = 120.0
NO_DISPATCH = "[stage]\ndispatch = false\n"


@dataclass(frozen=True)
class Settings:
    warmup: float
    window: float
    in_flight_per_board: int
    link: Link | None
    period_us: int | None = None


@dataclass
class BoardIdle:
    node: str
    cpu: float
    #: the share of its quota the board's daemon left unused over the window
    idle: float
    #: idle share per SAMPLE_EVERY over warm-up and window, from the run's start
    idle_over_time: list[float]
    #: the share of its quota the board got no CPU for at all (its idle loop included): the
    #: machine was busy elsewhere. Part of `idle`; the rest the daemon waited for frames
    starved: float


@dataclass
class SteadyRun:
    kind: str
    dispatch: bool
    cpus: list[float]
    fps: float
    frames_in_window: int
    published: int
    answered: int
    duplicates: int
    missing: int
    top1_checked: int
    top1_wrong: int
    load: float
    boards: list[BoardIdle] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SHARED_MODEL)
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--boards", type=int, default=5, help="N identical boards (5)")
    parser.add_argument("--cpu", type=float, default=0.2, help="their quota, cores (0.2)")
    parser.add_argument("--mixed", default="0.3,0.3,0.1,0.1,0.1",
                        help="the mixed layout's quotas, cores ('' for none)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=60.0, help="seconds counted (60)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--in-flight-per-board", type=int, default=4)
    parser.add_argument("--check", type=int, default=20,
                        help="photos whose top-1 is checked against the whole model")
    parser.add_argument("--link-mbps", type=float, default=0.0,
                        help="each board's link (tbf both ways); 0: loopback (0)")
    parser.add_argument("--quick", action="store_true",
                        help="2 boards, mixed 0.2,0.1, 1 s warm-up, 3 s window: checks that "
                             "the bench works, measures nothing")
    parser.add_argument("--out", type=Path, default=BENCHMARKS.parent / "cluster")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.boards, args.mixed, args.warmup, args.window = 2, f"{args.cpu:g},0.1", 1.0, 3.0
    return args


def expected_tops(split: Path, photos: list[tuple[str, bytes]], count: int) -> dict[str, int]:
    """The whole model's top-1 class for `count` photos (run before the boards are busy)."""
    manifest = Manifest.load(split)
    return {name: whole_model_top(manifest, photo, 1)[0].index
            for name, photo in photos[:count]}


def run_replicas(split: Path, cpus: list[float], *, dispatch: bool,
                 photos: list[tuple[str, bytes]], expected: dict[str, int],
                 settings: Settings, seed: int, kind: str, config_dir: Path) -> SteadyRun:
    """The whole model on one board per quota in `cpus`, fed for warm-up and window."""
    order = list(photos)
    random.Random(seed).shuffle(order)
    no_dispatch = config_dir / "no-dispatch.toml"
    no_dispatch.write_text(NO_DISPATCH)
    cores = os.cpu_count() or 1
    with ExitStack() as stack:
        made = [stack.enter_context(Board(f"steady{n}", cpu, settings.link,
                                          period_us=settings.period_us, on_cpu=n % cores))
                for n, cpu in enumerate(cpus)]
        for board in made:
            filler = board.fill_idle()
            stack.callback(_stop, filler)
        port = free_port()
        broker = Broker(port, extra_config="".join(
            f"listener {port} {board.broker_address}\n" for board in made
            if board.broker_address))
        stack.callback(broker.close)
        broker.start()
        group = "stage0" if len(made) > 1 else ""
        daemons = [StageLaunch(f"board{n}", 0, group,
                               _wrap(board, None if dispatch else no_dispatch),
                               BrokerConfig(board.broker_address, broker.port)
                               if board.broker_address else None)
                   for n, board in enumerate(made)]
        camera = NodeConfig().override("camera", source="bench", loop=True).camera
        run = stack.enter_context(StageRun(split, daemons, broker.address, camera=camera))
        return _measure(run, made, cpus, dispatch=dispatch, order=order, expected=expected,
                        settings=settings, kind=kind)


def _wrap(board: Board, config: Path | None):
    if config is None:
        return board.command
    return lambda argv: board.command([*argv, "--config", str(config)])


def _measure(run: StageRun, made: list[Board], cpus: list[float], *, dispatch: bool,
             order: list[tuple[str, bytes]], expected: dict[str, int], settings: Settings,
             kind: str) -> SteadyRun:
    nodes = [f"board{n}" for n in range(len(made))]
    if dispatch and len(made) > 1 and not run.camera.dispatch.book.wait_serving(set(nodes), 30):
        log.warning("%s: not every replica offered room within 30 s", kind)
    arrivals: list[tuple[float, Prediction]] = []
    lock = threading.Lock()

    def record(message: Received) -> None:
        prediction = Prediction.parse(message.payload)
        if prediction is not None:
            with lock:
                arrivals.append((time.monotonic(), prediction))

    run.session.subscribe(run.topics.predictions, record, qos=1)
    pids = {node: process.pid for node, process in run.processes.items()}
    run.camera.options = replace(run.camera.options, in_flight=settings.in_flight_per_board
                                 * len(made), frame_timeout=DRAIN_SECONDS)
    stop = threading.Event()
    sender = threading.Thread(target=run.camera.run, args=(Stills(order, loop=True), None, stop),
                              name="camera", daemon=True)
    samples: list[tuple[float, dict[str, float]]] = []
    used: list[dict[str, float]] = []  # each board's cgroup CPU seconds, its idle loop's too

    def sample() -> None:
        samples.append((time.monotonic(), {node: process_cpu_seconds(pid)
                                           for node, pid in pids.items()}))
        used.append({node: board.cpu_stats().usage_usec / 1e6
                     for node, board in zip(nodes, made, strict=True)})

    started = time.monotonic()
    sender.start()
    end = started + settings.warmup + settings.window
    while (now := time.monotonic()) < end:
        sample()
        time.sleep(min(SAMPLE_EVERY, max(0.0, end - now)))
    sample()
    stop.set()
    sender.join()
    run.wait(lambda: run.camera.waiting == 0, "every frame in flight answered", DRAIN_SECONDS)
    run.check_alive()
    with lock:
        got = list(arrivals)
    window_start = started + settings.warmup
    counted = sum(window_start <= at < end for at, _ in got)
    seqs = [prediction.seq for _, prediction in got]
    published = run.camera.published
    checked = [(prediction.name, prediction.top[0].index) for _, prediction in got
               if prediction.name in expected]
    return SteadyRun(
        kind=kind, dispatch=dispatch, cpus=list(cpus), fps=counted / settings.window,
        frames_in_window=counted, published=published, answered=len(set(seqs)),
        duplicates=len(seqs) - len(set(seqs)),
        missing=len(set(range(published)) - set(seqs)),
        top1_checked=len(checked),
        top1_wrong=sum(expected[name] != top for name, top in checked),
        load=os.getloadavg()[0],
        boards=[_idle(node, cpu, samples, used, window_start)
                for node, cpu in zip(nodes, cpus, strict=True)])


def _idle(node: str, cpu: float, samples: list[tuple[float, dict[str, float]]],
          used: list[dict[str, float]], window_start: float) -> BoardIdle:
    """What the daemon left of its quota, over the window and per sample from the start; and
    what the board as a whole did not get over the window."""
    def unused(first: int, last: int, seconds: list[dict[str, float]]) -> float:
        span = samples[last][0] - samples[first][0]
        spent = seconds[last][node] - seconds[first][node]
        return max(0.0, 1 - spent / (cpu * span)) if span > 0 else 0.0

    daemon = [cpu_s for _, cpu_s in samples]
    over_time = [unused(n, n + 1, daemon) for n in range(len(samples) - 1)]
    inside = [n for n, (at, _) in enumerate(samples) if at >= window_start] or [0]
    first, last = inside[0], len(samples) - 1
    return BoardIdle(node, cpu, round(unused(first, last, daemon), 4),
                     [round(share, 3) for share in over_time],
                     round(unused(first, last, used), 4))


def _stop(process) -> None:
    process.kill()
    process.wait()


def one_round(args: argparse.Namespace, split: Path, photos: list[tuple[str, bytes]], *,
              expected: dict[str, int], settings: Settings, number: int,
              config_dir: Path) -> list[SteadyRun]:
    """One board, N boards both ways, each kind of mixed board alone, the mixed layout both
    ways: every run with the same window."""
    mixed = [float(cpu) for cpu in args.mixed.split(",")] if args.mixed else []
    plan: list[tuple[str, list[float], bool]] = [("one board", [args.cpu], True)]
    plan += [(f"{args.boards} boards", [args.cpu] * args.boards, dispatch)
             for dispatch in (False, True)]
    plan += [("alone", [cpu], True) for cpu in sorted(set(mixed)) if cpu != args.cpu]
    if mixed:
        plan += [("mixed", mixed, dispatch) for dispatch in (False, True)]
    runs = []
    for position, (kind, cpus, dispatch) in enumerate(plan):
        result = run_replicas(split, cpus, dispatch=dispatch, photos=photos,
                              expected=expected, settings=settings,
                              seed=number * 100 + position, kind=kind, config_dir=config_dir)
        log.info("round %d %-10s %-28s %s %6.2f frames/s, idle %s, %d dup, %d missing, "
                 "top-1 %d/%d wrong", number + 1, kind, "+".join(f"{c:g}" for c in cpus),
                 "dispatch" if dispatch else "in turn ", result.fps,
                 " ".join(f"{b.idle:.2f}" for b in result.boards), result.duplicates,
                 result.missing, result.top1_wrong, result.top1_checked)
        runs.append(result)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.model.is_file():
        raise SystemExit(f"bench-cluster-steady: no model at {args.model} (give --model)")
    link = Link(args.link_mbps) if args.link_mbps > 0 else None
    if not start.ready("bench-cluster-steady", link):
        return 0
    photos = [(path.name, read_photo(path)) for path in list_images(args.images)]
    settings = Settings(args.warmup, args.window, args.in_flight_per_board, link)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aiotedge-steady-") as work:
        split = layouts.one_board(args.model, Path(work)).split
        expected = expected_tops(split, photos, args.check)
        rounds = [one_round(args, split, photos, expected=expected, settings=settings,
                            number=number, config_dir=Path(work))
                  for number in range(args.rounds)]
    header = {"command": command_line(), "machine": machine(), "model": args.model.name,
              "photos": len(photos), "cpu": args.cpu, "boards": args.boards,
              "mixed": args.mixed, "warmup_s": args.warmup, "window_s": args.window,
              "in_flight_per_board": args.in_flight_per_board, "link_mbps": args.link_mbps,
              "sample_s": SAMPLE_EVERY, "quick": args.quick,
              "minutes": round((time.monotonic() - started) / 60, 1)}
    data = {"header": header, "rounds": [[asdict(run) for run in runs] for runs in rounds]}
    out = args.out / ("steady-quick.json" if args.quick else "steady.json")
    steady_report.write_json(out, data)
    plot = out.with_name("idle-quick.png" if args.quick else "idle.png")
    steady_report.plot_idle(plot, data)
    body = steady_report.markdown(data, os.path.relpath(plot, BENCHMARKS.parent))
    print(body)
    if args.write_docs:
        write_section(steady_report.HEADING, body)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (AiotedgeError, layouts.LayoutError, boards.BoardError) as exc:
        print(f"bench-cluster-steady: {exc}", file=sys.stderr)
        sys.exit(2)
