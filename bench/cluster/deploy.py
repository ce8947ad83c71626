"""From `aiotedge-convert deploy` to the first prediction of the new release, on 1 to N emulated
boards, and the bytes the broker carried meanwhile (root).

    python -m bench.cluster.deploy [--boards 5] [--cpu 0.2] [--link-mbps 1000] [--fps 4]
                                   [--rounds 3] [--no-warm] [--write-docs]

For N = 1..--boards: a broker of its own (its $SYS counters every second), N boards of
bench/cluster/boards.py each running one `aiotedge node` with a cache of its own that holds
no model (only the speed profile, the same for every node, written beforehand: equal boards
plan as equal, not as the busy machine's chance says), and aiotedge's Camera in this process
sending photos at --fps to whatever release is live. Then `aiotedge-convert deploy MODEL
--nodes N` on this machine as the workstation ("cold": every node fetches every chunk of the
model over its link) and, unless --no-warm, a second release of the same model ("warm": the
chunks are in every node's cache and retained on the broker; the first release serves until
the second is live). Each deploy measures the command's start to its exit (the release is
live then) and to the first prediction naming the release, and the broker's
$SYS/broker/bytes/received and /sent between the tick before the command and the first tick
after its exit, less what the camera and the nodes' chatter carried at the rate of the
seconds before the command. Writes docs/cluster/deploy.json and (--write-docs) a section of
docs/benchmarks.md. `python -m bench.cluster.selftest --cleanup` removes what a killed run left.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiotedge.config.sections import BrokerConfig, CameraConfig
from aiotedge.contracts.errors import AiotedgeError
from aiotedge.contracts.events import Prediction
from aiotedge.contracts.release import CHUNK_BYTES, NodeReport
from aiotedge.contracts.topics import Topics
from aiotedge.media.image import decode_image, list_images, read_photo
from aiotedge.media.prepare import encode_jpeg
from aiotedge.media.sources import Stills
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.daemons.speed import SPEED_FILE
from aiotedge.nodes.mqtt.broker import free_port
from aiotedge.nodes.mqtt.session import MqttSession, wait_settled
from aiotedge.nodes.mqtt.transport import Received
from bench.benchdoc import BENCHMARKS, command_line, machine, table, write_section
from bench.cluster import boards, start
from bench.cluster.measure import Cluster
from bench.cluster.report import Spread
from support.broker import Broker
from support.daemons import child_env, stop_process
from support.paths import SHARED_IMAGES, SHARED_LABELS, SHARED_MODEL

log = logging.getLogger("bench.cluster.deploy")
PROGRAM = "python -m bench.cluster.deploy"
HEADING = "Emulated cluster: from `aiotedge-convert deploy` to the first prediction"
PIPELINE = "deploybench"
RECEIVED, SENT = "$SYS/broker/bytes/received", "$SYS/broker/bytes/sent"
#: seconds of the broker's traffic before a deploy whose rate is taken as what is not the
#: deploy's (the camera's frames, the nodes' info and stats)
BACKGROUND_SECONDS = 5.0
#: seconds a node may take to announce itself, a deploy to end, its first prediction to come
NODE_TIMEOUT, DEPLOY_TIMEOUT, PREDICTION_TIMEOUT = 120.0, 600.0, 120.0
#: the nodes' speed profile (docs/fleet.md): any figure, the same for every node
EQUAL_SPEED = 1000.0
#: the camera's frames: the photos as JPEGs of at most this many pixels a side
CAMERA_SIDE = 320


@dataclass(frozen=True)
class Tick:
    """One $SYS publication of a byte counter: when it came (monotonic s) and its value."""

    at: float
    value: int


class ByteTicks:
    """The broker's byte counters ($SYS, one tick per counter every sys_interval) as they come."""

    def __init__(self) -> None:
        self.ticks: dict[str, list[Tick]] = {RECEIVED: [], SENT: []}
        self.changed = threading.Condition()

    def add(self, topic: str, payload: bytes, at: float) -> None:
        try:
            value = int(payload)
        except ValueError:
            return
        with self.changed:
            self.ticks.setdefault(topic, []).append(Tick(at, value))
            self.changed.notify_all()

    def first_after(self, topic: str, moment: float) -> Tick | None:
        with self.changed:
            return next((tick for tick in self.ticks[topic] if tick.at > moment), None)

    def wait_after(self, moment: float, timeout: float = 10.0) -> dict[str, Tick]:
        """Both counters' first ticks after `moment`, waited for."""
        with self.changed:
            if not self.changed.wait_for(
                    lambda: all(self.first_after(t, moment) for t in (RECEIVED, SENT)), timeout):
                raise RuntimeError(f"no $SYS byte counters from the broker within {timeout} s")
        return {topic: self.first_after(topic, moment) for topic in (RECEIVED, SENT)}

    def rate(self, topic: str, start: float, end: float) -> float:
        """Bytes/s of a counter between its first tick after `start` and its last before
        `end`; 0 with fewer than two ticks there."""
        with self.changed:
            inside = [tick for tick in self.ticks[topic] if start < tick.at <= end]
        if len(inside) < 2 or inside[-1].at <= inside[0].at:
            return 0.0
        return (inside[-1].value - inside[0].value) / (inside[-1].at - inside[0].at)


def small_jpeg(photo: bytes, side: int = CAMERA_SIDE) -> bytes:
    """A photo as a small camera's JPEG: the camera's frames then carry little beside the
    deploy's chunks, so that what is taken off as their share is small and steady, not the
    chance of which photos (0.2 to 0.9 MB each) went during the deploy."""
    picture = decode_image(photo)
    picture.thumbnail((side, side))
    return encode_jpeg(picture, 90)


def carried(before: Tick, after: Tick, background_per_s: float) -> int:
    """What a counter grew by between two ticks, less the background's rate over that time
    (never below 0)."""
    return max(0, round(after.value - before.value - background_per_s * (after.at - before.at)))


def first_of_release(arrivals: Sequence[tuple[float, str | None]], release: str) -> float | None:
    """When the first prediction naming `release` came (monotonic s), of (when, release)."""
    return min((at for at, named in arrivals if named == release), default=None)


def stages_said(output: str) -> int:
    """How many stages the deploy's summary lists (its `  stage K: nodes` lines)."""
    return len(re.findall(r"^\s+stage \d+:", output, re.M))


@dataclass
class DeployResult:
    boards: int
    release: str
    #: the model's chunks were in every node's cache already
    warm: bool
    stages: int
    #: the deploy command's start to its exit (the release live)
    live_s: float
    #: the deploy command's start to the first prediction naming the release
    first_prediction_s: float | None
    #: what the broker read and wrote over the deploy, the background's rate taken off
    received_bytes: int
    sent_bytes: int
    #: the rates taken off, bytes/s
    background_received: float
    background_sent: float
    #: seconds between the two $SYS ticks the bytes are counted between
    counted_s: float
    load: float


@dataclass
class FleetRun:
    """One round at N boards: the cold deploy and, given, the warm one."""

    boards: int
    deploys: list[DeployResult] = field(default_factory=list)


class Watch:
    """This process's view of the broker: the nodes' reports, the predictions' releases, the
    $SYS byte counters."""

    def __init__(self, broker: BrokerConfig, topics: Topics) -> None:
        self.reports: dict[str, NodeReport] = {}
        self.arrivals: list[tuple[float, str | None]] = []
        self.bytes = ByteTicks()
        self.changed = threading.Condition()
        self.session = MqttSession(broker, "deploy-bench-watch")
        self.session.subscribe(topics.all_info, self._on_info, qos=1)
        self.session.subscribe(topics.predictions, self._on_prediction, qos=1)
        for topic in (RECEIVED, SENT):
            self.session.subscribe(topic, self._on_bytes, qos=0)
        self.session.start()
        if not self.session.wait_connected(10):
            raise RuntimeError(f"cannot connect to the broker at {broker}")
        wait_settled(self.session, topics.probe("deploy-bench-watch"))

    def _on_info(self, message: Received) -> None:
        report = NodeReport.parse(message.payload)
        if report is not None:
            with self.changed:
                self.reports[report.node] = report
                self.changed.notify_all()

    def _on_prediction(self, message: Received) -> None:
        prediction = Prediction.parse(message.payload)
        if prediction is not None:
            with self.changed:
                self.arrivals.append((time.monotonic(), prediction.release))
                self.changed.notify_all()

    def _on_bytes(self, message: Received) -> None:
        self.bytes.add(message.topic, message.payload, time.monotonic())

    def wait(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(condition, timeout):
                raise RuntimeError(f"not within {timeout:.0f} s: {what}")

    def stop(self) -> None:
        self.session.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SHARED_MODEL)
    parser.add_argument("--labels", type=Path,
                        default=SHARED_LABELS if SHARED_LABELS.is_file() else None,
                        help="the model's labels, if any (the shared ImageNet labels)")
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--boards", type=int, default=5, help="N = 1 to this many (5)")
    parser.add_argument("--cpu", type=float, default=0.2, help="each board's quota, cores (0.2)")
    parser.add_argument("--link-mbps", type=float, default=1000.0,
                        help="each board's link, tbf both ways; 0: loopback (1000)")
    parser.add_argument("--fps", type=float, default=4.0, help="the camera's frame rate (4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over N = 1 to --boards (3)")
    parser.add_argument("--no-warm", action="store_true",
                        help="no second release onto the warm caches")
    parser.add_argument("--out", type=Path, default=BENCHMARKS.parent / "cluster",
                        help="where deploy.json goes (docs/cluster)")
    parser.add_argument("--write-docs", action="store_true",
                        help="write the section of docs/benchmarks.md")
    return parser.parse_args(argv)


def start_node(board: boards.Board, broker: BrokerConfig, name: str, cache: Path,
               log_dir: Path) -> subprocess.Popen:
    """`aiotedge node` inside the board; its cache holds only the speed profile."""
    cache.mkdir(parents=True)
    (cache / SPEED_FILE).write_text(json.dumps(
        {"mmacs_per_s": EQUAL_SPEED, "machine": platform.machine()}))
    with open(log_dir / f"{name}.log", "ab") as out:
        return board.popen(
            [sys.executable, "-m", "aiotedge", "node", "--broker", str(broker),
             "--pipeline", PIPELINE, "--node", name, "--cache", str(cache),
             "--stats-interval", "0"],
            stdout=subprocess.DEVNULL, stderr=out, env=child_env())


def deploy_once(args: argparse.Namespace, watch: Watch, broker: BrokerConfig, *, count: int,
                release: str, warm: bool, log_dir: Path) -> DeployResult:
    """One `aiotedge-convert deploy`, timed, its bytes counted."""
    quiet_from = time.monotonic()
    time.sleep(BACKGROUND_SECONDS)  # the background's rate: ticks over these seconds
    before = watch.bytes.wait_after(time.monotonic())
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "aiotedge_converter", "deploy", str(args.model),
         *(["--labels", str(args.labels)] if args.labels else []),
         "--broker", str(broker), "--pipeline", PIPELINE,
         "--nodes", str(count), "--release", release, "--timeout", str(DEPLOY_TIMEOUT)],
        check=False, capture_output=True, text=True, env=child_env(),
        timeout=DEPLOY_TIMEOUT + 60)
    ended = time.monotonic()
    (log_dir / f"deploy-{release}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"deploy {release} failed ({done.returncode}): "
                           f"{(done.stdout + done.stderr)[-1500:]}")
    after = watch.bytes.wait_after(ended)
    watch.wait(lambda: first_of_release(watch.arrivals, release) is not None,
               f"a prediction of {release}", PREDICTION_TIMEOUT)
    with watch.changed:
        first = first_of_release(watch.arrivals, release)
    rates = {topic: watch.bytes.rate(topic, quiet_from, started) for topic in (RECEIVED, SENT)}
    result = DeployResult(
        boards=count, release=release, warm=warm, stages=stages_said(done.stdout),
        live_s=round(ended - started, 3),
        first_prediction_s=round(first - started, 3) if first is not None else None,
        received_bytes=carried(before[RECEIVED], after[RECEIVED], rates[RECEIVED]),
        sent_bytes=carried(before[SENT], after[SENT], rates[SENT]),
        background_received=round(rates[RECEIVED]), background_sent=round(rates[SENT]),
        counted_s=round(after[SENT].at - before[SENT].at, 2), load=os.getloadavg()[0])
    log.info("%d board(s) %-5s %-12s live after %6.2f s, first prediction after %6.2f s, "
             "broker in %7.2f MB out %7.2f MB, load %.1f", count, "warm" if warm else "cold",
             release, result.live_s, result.first_prediction_s or math.nan,
             result.received_bytes / 1e6, result.sent_bytes / 1e6, result.load)
    return result


def fleet_run(args: argparse.Namespace, cluster: Cluster, *, count: int, number: int,
              photos: list[tuple[str, bytes]], work: Path) -> FleetRun:
    """A broker, `count` nodes with empty caches and a camera; the cold deploy, the warm one."""
    topics = Topics(PIPELINE)
    run_dir = work / f"round{number}-n{count}"
    run_dir.mkdir()
    made = cluster.boards[:count]
    result = FleetRun(count)
    with ExitStack() as stack:
        for board in made:  # a waiting board's quota in use, as in the cluster bench
            stack.callback(stop_process, board.fill_idle())
        port = free_port()
        broker = Broker(port, extra_config="sys_interval 1\n" + "".join(
            f"listener {port} {board.broker_address}\n" for board in made
            if board.broker_address))
        stack.callback(broker.close)
        broker.start()
        watch = Watch(broker.address, topics)
        stack.callback(watch.stop)
        names = [f"board{n}" for n in range(count)]
        for name, board in zip(names, made, strict=True):
            seen_at = BrokerConfig(board.broker_address, port) if board.broker_address \
                else broker.address
            stack.callback(stop_process,
                           start_node(board, seen_at, name, run_dir / "cache" / name, run_dir))
        watch.wait(lambda: set(names) <= set(watch.reports), "every node announced",
                   NODE_TIMEOUT)
        session = MqttSession(broker.address, "deploy-bench-camera")
        camera = Camera(session, topics, CameraConfig(
            name="cam", fps=args.fps, in_flight=64, frame_timeout=5.0, resends=0))
        session.start()
        stack.callback(session.stop)
        if not session.wait_connected(10):
            raise RuntimeError("the camera cannot connect to the broker")
        wait_settled(session, topics.probe("deploy-bench-camera"))
        stop = threading.Event()
        sender = threading.Thread(target=camera.run, args=(Stills(photos, loop=True), None,
                                                           stop), name="camera", daemon=True)
        sender.start()
        stack.callback(sender.join, 60)
        stack.callback(stop.set)
        stem = f"r{number + 1}n{count}"
        result.deploys.append(deploy_once(args, watch, broker.address, count=count,
                                          release=f"{stem}-cold", warm=False, log_dir=run_dir))
        if not args.no_warm:
            result.deploys.append(deploy_once(args, watch, broker.address, count=count,
                                              release=f"{stem}-warm", warm=True,
                                              log_dir=run_dir))
    return result


def markdown(data: dict) -> str:
    """The section: the setup, then a table per kind of deploy, every figure from `data`."""
    header, runs = data["header"], data["runs"]
    rounds = header["rounds"]
    model_mb = header["model_bytes"] / 1e6
    lines = [
        f"`{header['model']}` ({model_mb:.2f} MB, {header['chunks']} chunks of at most "
        f"{CHUNK_BYTES // 1024} KiB), {header['photos']} photos. Boards: {header['cpu']:g} core "
        f"each, {header['link']}; one `aiotedge node` per board with a cache of its own holding "
        "no model (only its speed profile, the same on every node, written beforehand). The "
        "broker (its $SYS counters every second), the deploy command (this machine as the "
        "workstation) and aiotedge's Camera, sending the photos as JPEGs of at most "
        f"{header['camera_side']} px a side ({header['frame_kb']:.0f} KB on average) at "
        f"{header['fps']:g} frames/s to the live release, run outside the quotas. \"cold\": "
        "the first release onto the empty caches; \"warm\": a second release of the same model "
        "while the first serves (the chunks in every cache and retained on the broker). "
        "*live*: the command's start to its exit (the release live); *first prediction*: to "
        "the first prediction naming the release "
        f"(the camera sends every {1 / header['fps']:.2f} s, so up to that is the camera's "
        "wait); the broker's MB read and written between the $SYS tick before the command and "
        f"the first after its exit, less the rate of the {BACKGROUND_SECONDS:g} s before it "
        "(the camera's frames, the nodes' reports). "
        f"{rounds} round{'s' * (rounds > 1)}"
        f"{'; figures: median (lowest to highest)' * (rounds > 1)}"
        f"; load average {header['load_min']:.1f} to {header['load_max']:.1f}; "
        f"{header['minutes']:.0f} minutes in all.",
    ]
    for warm in (False, True):
        chosen = [d for run in runs for d in run["deploys"] if d["warm"] == warm]
        if not chosen:
            continue
        rows = []
        for count in sorted({d["boards"] for d in chosen}):
            mine = [d for d in chosen if d["boards"] == count]
            rows.append((
                count, figure([d["stages"] for d in mine], 0),
                figure([d["live_s"] for d in mine], 1),
                figure([d["first_prediction_s"] for d in mine
                        if d["first_prediction_s"] is not None], 1),
                figure([d["received_bytes"] / 1e6 for d in mine], 2),
                figure([d["sent_bytes"] / 1e6 for d in mine], 2),
                figure([(d["received_bytes"] + d["sent_bytes"]) / header["model_bytes"]
                        for d in mine], 1, "x"),
            ))
        lines += ["", f"**{'Warm' if warm else 'Cold'}** "
                  f"({'chunks cached' if warm else 'empty caches'}):", "",
                  table(("boards", "stages", "live, s", "first prediction, s",
                         "broker read, MB", "broker wrote, MB", "both / model size"), rows)]
    return "\n".join(lines)


def figure(values: Sequence[float], digits: int, unit: str = "") -> str:
    """One round's figure, or the median of rounds with the lowest and highest."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}{unit}"
    return Spread.of(values).text(digits, unit)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for what, path in (("model", args.model), ("labels", args.labels or args.model)):
        if not path.is_file():
            raise SystemExit(f"bench-cluster-deploy: no {what} at {path} (give --{what})")
    link = boards.Link(args.link_mbps) if args.link_mbps > 0 else None
    if not start.ready("bench-cluster-deploy", link):
        return 0
    photos = [(path.name, small_jpeg(read_photo(path))) for path in list_images(args.images)]
    started = time.monotonic()
    runs: list[FleetRun] = []
    with tempfile.TemporaryDirectory(prefix="aiotedge-deploy-") as work, \
            Cluster(args.boards, args.cpu, link) as cluster:
        for number in range(args.rounds):
            for count in range(1, args.boards + 1):
                runs.append(fleet_run(args, cluster, count=count, number=number,
                                      photos=photos, work=Path(work)))
    loads = [d.load for run in runs for d in run.deploys]
    model_bytes = args.model.stat().st_size
    header = {
        "command": command_line(), "machine": machine(), "model": args.model.name,
        "model_bytes": model_bytes, "chunks": math.ceil(model_bytes / CHUNK_BYTES),
        "photos": len(photos), "camera_side": CAMERA_SIDE,
        "frame_kb": sum(len(photo) for _, photo in photos) / len(photos) / 1000,
        "cpu": args.cpu, "fps": args.fps, "rounds": args.rounds,
        "link": (f"a {args.link_mbps:g} Mbit/s link to the broker (tbf both ways) in its own "
                 "network namespace" if link else "on loopback"),
        "load_min": min(loads), "load_max": max(loads),
        "minutes": round((time.monotonic() - started) / 60, 1)}
    data = {"header": header, "runs": [asdict(run) for run in runs]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy.json").write_text(json.dumps(data, indent=1) + "\n")
    body = markdown(data)
    print(body)
    if args.write_docs:
        write_section(HEADING, body)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (AiotedgeError, boards.BoardError) as exc:
        print(f"bench-cluster-deploy: {exc}", file=sys.stderr)
        sys.exit(2)
