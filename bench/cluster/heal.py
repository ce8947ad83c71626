"""The fleet heals itself, on emulated boards under a steady camera (root).

    python -m bench.cluster.heal [--boards 5] [--cpu 0.2] [--keepalive 1] [--runs 1]
                                 [--coordinator '--join-settle 5'] [--quick] [--write-docs]

Five boards of bench/cluster/boards.py (the steady bench's quota, each in its own network
namespace), one `aiotedge node` per board, mosquitto, `aiotedge-convert deploy` of the model as
release `v1`, and one `aiotedge-convert heal` coordinator; aiotedge's Camera in this process
keeps frames flowing at QoS 1, and a recording subscriber of the predictions topic (a session
of its own) notes every prediction as it comes, with the live pointer's moves and each
release. Then, on a timeline: the warm-up, steady, SIGKILL one board's node, SIGKILL a second,
cut a third's link (`ip link set ... down`) for `--cut` seconds and plug it in again, start
the two killed nodes again, steady to the end. The camera then stops and every frame in flight
is awaited. Writes docs/cluster/heal.json, docs/cluster/heal-timeline.png and (--write-docs)
the sections of docs/benchmarks.md and docs/reliability.md, whose figures all come from the
JSON (bench/cluster/heal_report.py: the definitions of rate, settled rate, time to recover).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiotedge_converter.cluster import (
    ClusterPlan,
    Links,
    PlannedStage,
    cluster_from_profiles,
    predict,
)
from aiotedge_converter.fleet import forecast as coordinator_forecast

from aiotedge.config.sections import BrokerConfig, CameraConfig
from aiotedge.contracts.errors import AiotedgeError, ReleaseError
from aiotedge.contracts.events import Prediction
from aiotedge.contracts.profile import Profile
from aiotedge.contracts.release import LiveRelease, NodeReport, Release
from aiotedge.contracts.topics import ONLINE, Topics
from aiotedge.media.image import list_images, read_photo
from aiotedge.media.sources import Stills
from aiotedge.media.sources.base import CapturedFrame
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.mqtt.broker import free_port
from aiotedge.nodes.mqtt.session import MqttSession, wait_settled
from aiotedge.nodes.mqtt.transport import Received
from aiotedge.tflite.graph import Graph, load_graph
from bench.benchdoc import BENCHMARKS, command_line, machine
from bench.cluster import boards, heal_report, layouts, start
from bench.cluster.__main__ import slowed
from bench.cluster.boards import Board, Link
from bench.cluster.steady import expected_tops
from support.broker import Broker
from support.daemons import child_env, stop_process
from support.paths import SHARED_IMAGES, SHARED_LABELS, SHARED_MODEL

log = logging.getLogger("bench.cluster.heal")
PROGRAM = "python -m bench.cluster.heal"
#: the longest the bench waits for nodes online, a deploy, the last frames' answers
WAIT_SECONDS = 300.0
#: seconds an `aiotedge profile` may take
PROFILE_TIMEOUT = 900
#: boards whose nodes are killed, and the one cut off (by position)
KILLED = (1, 2)
CUT = 3


class Until(Stills):
    """The photos over and over until `ended` is set; then the source ends, and the camera, as
    at a folder's end, sends nothing new but follows its frames in flight to their results
    (sending again what is overdue), which a stopped camera would not."""

    def __init__(self, photos: list[tuple[str, bytes]], ended: threading.Event) -> None:
        super().__init__(photos, loop=True)
        self.ended = ended

    def frames(self, stop: threading.Event) -> Iterator[CapturedFrame]:
        for frame in super().frames(stop):
            if self.ended.is_set():
                return
            yield frame


class HealError(RuntimeError):
    """Something the scenario awaited did not come in time; the message says what."""


@dataclass(frozen=True)
class Timeline:
    """Seconds of each part of the scenario."""

    warmup: float = 20.0
    steady: float = 40.0
    after_kill: float = 40.0
    cut: float = 20.0
    #: after the link is back, before the killed nodes start again: the cut node, a bounce,
    #: waits 60 s before it is put to work, and is then re-planned in
    after_link: float = 75.0
    final: float = 60.0

    def describe(self) -> str:
        return (f"{self.warmup:g} s warm-up, {self.steady:g} s steady on 5 boards, SIGKILL of "
                f"one board's node, {self.after_kill:g} s, SIGKILL of a second, "
                f"{self.after_kill:g} s, a third's link down {self.cut:g} s then up, "
                f"{self.after_link:g} s, the two killed nodes started again, {self.final:g} s, "
                "then the camera stops and every frame in flight is awaited")


QUICK = Timeline(warmup=8.0, steady=10.0, after_kill=10.0, cut=8.0, after_link=15.0,
                 final=15.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SHARED_MODEL)
    parser.add_argument("--labels", type=Path, default=SHARED_LABELS)
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--boards", type=int, default=5, help="boards (5; at least 4)")
    parser.add_argument("--cpu", type=float, default=0.2, help="each board's quota, cores")
    parser.add_argument("--link-mbps", type=float, default=1000.0,
                        help="each board's link, tbf each way (1000)")
    parser.add_argument("--keepalive", type=int, default=1,
                        help="the nodes' MQTT keepalive, s: the broker gives up on a silent "
                             "link after 1.5x, as it checks (1)")
    parser.add_argument("--in-flight-per-board", type=int, default=4)
    parser.add_argument("--coordinator", default="", metavar="ARGS",
                        help="more arguments for `aiotedge-convert heal`, e.g. "
                             "'--join-settle 5 --min-gain 0.1' (none: its defaults)")
    parser.add_argument("--profile", type=Path,
                        help="a board's profile for the forecasts (else measured: see "
                             "board_profile)")
    parser.add_argument("--check", type=int, default=20,
                        help="photos whose top-1 is checked against the whole model")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="short phases: checks that the bench works, measures nothing")
    parser.add_argument("--logs", type=Path,
                        help="keep the nodes' and the coordinator's logs here, a folder per "
                             "run (else they go with the run)")
    parser.add_argument("--out", type=Path, default=BENCHMARKS.parent / "cluster")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    if args.boards < CUT + 1:
        parser.error(f"--boards must be at least {CUT + 1}")
    return args


def board_profile(args: argparse.Namespace, work: Path) -> tuple[Profile, str]:
    """What the forecasts are made from: `--profile`, or `aiotedge profile` with a photo of the
    median size, run on one CPU of this machine without a quota, every time in it divided by
    the board's quota (at 0.2 core, 5x). Measured apart from the runs it forecasts, as issue 18
    asks; a board's slices between the other boards' are not in it."""
    if args.profile:
        return Profile.load(args.profile), f"the profile given (`--profile {args.profile.name}`)"
    photos = sorted(list_images(args.images), key=lambda path: path.stat().st_size)
    photo = photos[len(photos) // 2]
    measured = work / "cpu-profile.json"
    subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "aiotedge", "profile",
                    str(args.model), "--threads", "1", "--photo", str(photo), "--out",
                    str(measured)], check=True, capture_output=True, env=child_env(),
                   timeout=PROFILE_TIMEOUT)
    board = work / "board-profile.json"
    board.write_text(json.dumps(slowed(json.loads(measured.read_text()), 1 / args.cpu)))
    return Profile.load(board), (
        f"`aiotedge profile --threads 1 --photo {photo.name}` on one CPU of this machine without "
        f"a quota, every time in it divided by the board's {args.cpu:g} core")


def forecast_fps(graph: Graph, release: Release, profile: Profile,
                 links: Links) -> float | None:
    """The planner's forecast (`aiotedge-convert plan`'s model) for a release's cuts and
    replicas on boards of `profile`; None when its cuts are not the profile's pieces'."""
    cluster = cluster_from_profiles(graph, [("board", profile)], len(release.nodes), links,
                                    stage0_input="photo")
    chain = cluster.chain
    try:
        stages = tuple(
            PlannedStage(chain.first_ops.index(stage.first_op),
                         chain.last_ops.index(stage.last_op), (len(members),),
                         stage.output_codec)
            for stage, members in zip(release.split().stages, release.assignments, strict=True))
    except ValueError:
        log.warning("release %s: its cuts are not between the profile's pieces",
                    release.release)
        return None
    return predict(ClusterPlan(stages), cluster).frames_per_s


@dataclass
class Recorder:
    """A subscriber of its own: every prediction as it came, the live pointer's moves, the
    releases, the nodes' availability and speeds; times are monotonic seconds."""

    topics: Topics
    arrivals: list[dict[str, Any]] = field(default_factory=list)
    live: list[dict[str, Any]] = field(default_factory=list)
    releases: dict[str, Release] = field(default_factory=dict)
    availability: list[dict[str, Any]] = field(default_factory=list)
    #: each node's announced speed proxy (millions of MACs/s), which the coordinator plans by
    speeds: dict[str, float] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def attach(self, session: MqttSession) -> None:
        session.subscribe(self.topics.predictions, self._on_prediction, qos=1)
        session.subscribe(self.topics.live_release, self._on_live, qos=1)
        session.subscribe(f"{self.topics.release_plan}/+", self._on_release, qos=1)
        session.subscribe(self.topics.all_availability, self._on_availability, qos=1)
        session.subscribe(self.topics.all_info, self._on_info, qos=1)

    def _on_prediction(self, message: Received) -> None:
        at = time.monotonic()
        prediction = Prediction.parse(message.payload)
        if prediction is None:
            return
        with self.changed:
            self.arrivals.append({"at": at, "frame_id": prediction.frame_id,
                                  "name": prediction.name, "release": prediction.release,
                                  "latency_ms": round(prediction.latency_ms, 1),
                                  "top1": prediction.top[0].index if prediction.top else None})

    def _on_live(self, message: Received) -> None:
        live = LiveRelease.parse(message.payload) if message.payload else None
        with self.changed:
            self.live.append({"at": time.monotonic(), "release": live.release if live else None,
                              "resend": bool(live and live.resend)})
            self.changed.notify_all()

    def _on_release(self, message: Received) -> None:
        if not message.payload:
            return
        try:
            release = Release.parse(message.payload)
        except ReleaseError as exc:
            log.warning("a release the bench cannot read: %s", exc)
            return
        with self.changed:
            self.releases[release.release] = release

    def _on_availability(self, message: Received) -> None:
        node = message.topic.rsplit("/", 1)[-1]
        with self.changed:
            self.availability.append({"at": time.monotonic(), "node": node,
                                      "online": message.payload == ONLINE.encode()})
            self.changed.notify_all()

    def _on_info(self, message: Received) -> None:
        report = NodeReport.parse(message.payload)
        if report is not None:
            with self.changed:
                self.speeds[report.node] = report.mmacs_per_s

    def online(self) -> set[str]:
        state: dict[str, bool] = {}
        for change in self.availability:
            state[change["node"]] = change["online"]
        return {node for node, up in state.items() if up}

    def wait(self, condition: Callable[[], bool], what: str,
             timeout: float = WAIT_SECONDS) -> None:
        with self.changed:
            if not self.changed.wait_for(condition, timeout):
                raise HealError(f"no {what} within {timeout:.0f} s")


class Fleet:
    """The boards' node daemons: started (again), SIGKILLed, their links cut."""

    def __init__(self, made: list[Board], broker_port: int, pipeline: str, work: Path,
                 keepalive: int) -> None:
        self.made = made
        self.port = broker_port
        self.pipeline = pipeline
        self.work = work
        self.config = work / "node.toml"
        self.config.write_text(f"[broker]\nkeepalive = {keepalive}\n")
        self.processes: dict[str, subprocess.Popen] = {}

    def name(self, position: int) -> str:
        return f"board{position}"

    def start(self, position: int) -> None:
        board, node = self.made[position], self.name(position)
        with open(self.work / f"{node}.log", "ab") as out:
            self.processes[node] = board.popen(
                [sys.executable, "-m", "aiotedge", "node", "--config", str(self.config),
                 "--broker", f"{board.broker_address}:{self.port}", "--pipeline", self.pipeline,
                 "--node", node, "--cache", str(self.work / "cache" / node), "--threads", "1",
                 "--stats-interval", "1"], stdout=out, stderr=subprocess.STDOUT, env=child_env())

    def kill(self, position: int) -> None:
        """SIGKILL: the wrapper execs the node under the same pid, so this is the node."""
        process = self.processes[self.name(position)]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def cut(self, position: int, up: bool) -> None:
        self.made[position].set_link(up)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def heal_available() -> bool:
    """Whether this checkout's `aiotedge-convert` has the `heal` command."""
    done = subprocess.run([sys.executable, "-m", "aiotedge_converter", "heal", "--help"],
                          capture_output=True, env=child_env(), check=False)
    return done.returncode == 0


def run_once(args: argparse.Namespace, timeline: Timeline, graph: Graph, profile: Profile, *,
             photos: list[tuple[str, bytes]], expected: dict[str, int], seed: int,
             work: Path) -> dict[str, Any]:
    """One scenario from boards to drained camera: the run's record for heal_report."""
    order = list(photos)
    random.Random(seed).shuffle(order)
    cores = os.cpu_count() or 1
    link = Link(args.link_mbps) if args.link_mbps > 0 else Link(1000.0)
    links = Links(board_mbps=link.rate_mbit)
    topics = Topics(f"heal{secrets.token_hex(3)}")
    coordinator_argv: list[str] = []
    with ExitStack() as stack:
        made = [stack.enter_context(Board(f"heal{n}", args.cpu, link, on_cpu=n % cores))
                for n in range(args.boards)]
        for board in made:
            filler = board.fill_idle()
            stack.callback(_stop, filler)
        port = free_port()
        broker = Broker(port, extra_config="".join(
            f"listener {port} {board.broker_address}\n" for board in made))
        stack.callback(broker.close)
        broker.start()
        address = BrokerConfig("127.0.0.1", port)
        recorder = Recorder(topics)
        session = MqttSession(address, f"heal-recorder-{secrets.token_hex(3)}")
        recorder.attach(session)
        session.start()
        stack.callback(session.stop)
        fleet = Fleet(made, port, topics.pipeline, work, args.keepalive)
        stack.callback(fleet.stop)
        for position in range(args.boards):
            fleet.start(position)
        names = {fleet.name(n) for n in range(args.boards)}
        recorder.wait(lambda: names <= recorder.online(), "node online on every board")
        log.info("%d nodes online; deploying v1", len(names))
        deploy = [sys.executable, "-m", "aiotedge_converter", "deploy", str(args.model),
                  "--broker", f"127.0.0.1:{port}", "--pipeline", topics.pipeline,
                  "--nodes", str(args.boards), "--release", "v1", "--timeout",
                  f"{WAIT_SECONDS:g}"]
        if args.labels.is_file():
            deploy += ["--labels", str(args.labels)]
        subprocess.run(deploy, check=True, env=child_env(), timeout=WAIT_SECONDS + 60,
                       stdout=subprocess.DEVNULL)
        log.info("v1 live on %d nodes", len(names))
        if heal_available():
            coordinator_argv = ["heal", "--broker", f"127.0.0.1:{port}", "--pipeline",
                                topics.pipeline, *args.coordinator.split()]
            coordinator_log = open(work / "coordinator.log", "ab")  # noqa: SIM115
            stack.callback(coordinator_log.close)
            coordinator = subprocess.Popen(
                [sys.executable, "-m", "aiotedge_converter", *coordinator_argv],
                stdout=coordinator_log, stderr=subprocess.STDOUT, env=child_env())
            stack.callback(stop_process, coordinator)
        else:
            log.warning("this checkout has no `aiotedge-convert heal`: nothing re-plans")
        camera_session = MqttSession(address, f"heal-camera-{secrets.token_hex(3)}")
        options = CameraConfig(source="bench", loop=True,
                               in_flight=args.in_flight_per_board * args.boards)
        camera = Camera(camera_session, topics, options, qos=1)
        camera_session.start()
        stack.callback(camera_session.stop)
        if not camera_session.wait_connected(10):
            raise HealError("the camera cannot reach the broker")
        # as `aiotedge camera` does: the retained live pointer in before the first frame
        wait_settled(camera_session, topics.probe(camera_session.client_id))
        ended, stop = threading.Event(), threading.Event()
        sender = threading.Thread(target=camera.run, args=(Until(order, ended), None, stop),
                                  name="camera", daemon=True)
        started = time.monotonic()
        sender.start()
        events, end = _play(timeline, fleet, started)
        ended.set()
        sender.join(WAIT_SECONDS)  # the camera follows its frames in flight until answered
        drained = not sender.is_alive()
        if not drained:
            log.warning("%d frames still without a result after %.0f s", camera.waiting,
                        WAIT_SECONDS)
            stop.set()
            sender.join()
        sent = [camera.frame_id(seq) for seq in range(camera.published)]
        with recorder.changed:
            arrivals = [{**a, "at": a["at"] - started} for a in recorder.arrivals]
            live = [{**c, "at": c["at"] - started} for c in recorder.live]
            availability = [{**c, "at": c["at"] - started} for c in recorder.availability]
            releases = dict(recorder.releases)
            speeds = dict(recorder.speeds)
        coordinator_lines = _tail(work / "coordinator.log")
    return {
        "header": _header(args, timeline, coordinator_argv),
        "steady_from": timeline.warmup, "end": end, "drained": drained, "events": events,
        "live": live, "availability": availability, "arrivals": arrivals,
        "releases": {rid: {"assignments": [list(stage) for stage in release.assignments],
                           "forecast_fps": forecast_fps(graph, release, profile, links),
                           "coordinator_fps": coordinator_forecast(graph, release, speeds)}
                     for rid, release in releases.items()},
        "counts": heal_report.frame_counts(sent, arrivals, expected),
        "coordinator_log": coordinator_lines,
    }


def _play(timeline: Timeline, fleet: Fleet, started: float) -> tuple[list[dict[str, Any]],
                                                                      float]:
    """The events at their times (seconds from `started`): what was done and when, and when
    the last phase ended."""
    events: list[dict[str, Any]] = []
    killed = [fleet.name(n) for n in KILLED]
    cut = fleet.name(CUT)

    def at(offset: float, kind: str, names: list[str], action: Callable[[], None]) -> None:
        time.sleep(max(0.0, started + offset - time.monotonic()))
        when = time.monotonic() - started
        action()
        log.info("%6.1f s: %s %s", when, kind, " ".join(names))
        events.append({"at": round(when, 3), "kind": kind, "boards": names})

    t = timeline.warmup + timeline.steady
    at(t, "kill", killed[:1], lambda: fleet.kill(KILLED[0]))
    t += timeline.after_kill
    at(t, "kill", killed[1:], lambda: fleet.kill(KILLED[1]))
    t += timeline.after_kill
    at(t, "cut", [cut], lambda: fleet.cut(CUT, up=False))
    t += timeline.cut
    at(t, "link-up", [cut], lambda: fleet.cut(CUT, up=True))
    t += timeline.after_link

    def add() -> None:
        for position in KILLED:
            fleet.start(position)

    at(t, "add", killed, add)
    t += timeline.final
    time.sleep(max(0.0, started + t - time.monotonic()))
    return events, round(time.monotonic() - started, 3)


def _tail(path: Path, lines: int = 200) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _header(args: argparse.Namespace, timeline: Timeline,
            coordinator: list[str]) -> dict[str, Any]:
    return {
        "command": command_line(), "machine": machine(), "model": args.model.name,
        "photos": len(list_images(args.images)), "boards": args.boards, "cpu": args.cpu,
        "quota": f"{round(args.cpu * boards.shortest_period_us(args.cpu))} µs every "
                 f"{boards.shortest_period_us(args.cpu)} µs, an idle loop using what the node "
                 "leaves",
        "link_mbps": args.link_mbps, "keepalive": args.keepalive,
        "in_flight": args.in_flight_per_board * args.boards,
        "coordinator": f"`aiotedge-convert heal` {args.coordinator}".strip()
        if coordinator else "",
        "timeline": timeline.describe(), "quick": args.quick,
        "notes": "" if coordinator else (
            "No `aiotedge-convert heal` in the checkout that ran: nothing re-planned, so the "
            "figures show the fleet without it."),
    }


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.model.is_file():
        raise SystemExit(f"bench-heal: no model at {args.model} (give --model)")
    if not start.ready("bench-heal", Link(args.link_mbps or 1000.0)):
        return 0
    timeline = QUICK if args.quick else Timeline()
    photos = [(path.name, read_photo(path)) for path in list_images(args.images)]
    graph = load_graph(args.model)
    runs = []
    with tempfile.TemporaryDirectory(prefix="aiotedge-heal-") as work:
        profile, profile_note = board_profile(args, Path(work))
        split = layouts.one_board(args.model, Path(work)).split
        expected = expected_tops(split, photos, args.check)
        for number in range(args.runs):
            started = time.monotonic()
            folder = (args.logs or Path(work)) / f"run{number}"
            folder.mkdir(parents=True, exist_ok=True)
            run = run_once(args, timeline, graph, profile, photos=photos, expected=expected,
                           seed=number, work=folder)
            run["header"]["minutes"] = round((time.monotonic() - started) / 60, 1)
            run["header"]["load"] = os.getloadavg()[0]
            run["header"]["profile"] = profile_note
            log.info("run %d: %s", number + 1, run["counts"])
            runs.append(run)
    out = args.out / ("heal-quick.json" if args.quick else "heal.json")
    heal_report.write_json(out, runs)
    print(heal_report.publish(runs, out, write_docs=args.write_docs))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (AiotedgeError, layouts.LayoutError, boards.BoardError, HealError,
            subprocess.CalledProcessError) as exc:
        print(f"bench-heal: {exc}", file=sys.stderr)
        sys.exit(2)
