"""The fault scenarios: malformed messages, crashes, broker loss, slow consumers, a partition,
a soak. Each returns one Row; what it measures is in its docstring (docs/reliability.md shows
them). The scenarios of the issue's individual defects are in defects.py.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

from aiotedge.config.sections import MAX_IN_FLIGHT
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.wire import encode_frame
from aiotedge.nodes.mqtt.broker import free_port
from bench.reliability import faults, storm
from bench.reliability.context import Context
from bench.reliability.curve import growth
from bench.reliability.curve import plot as plot_curve
from bench.reliability.curve import save as save_curve
from bench.reliability.feeds import Feed
from bench.reliability.harness import BROKER_NODE, Run
from bench.reliability.injector import Injector
from bench.reliability.results import Row, Tally, bounded_memory, fill, tally
from bench.reliability.workload import Photos, stage_inputs
from support.daemons import StageLaunch

log = logging.getLogger(__name__)

#: one good activation injected into a stage 1..N-1 per this many malformed messages
GOOD_EVERY = 10
#: malformed messages awaiting their error event before the injector waits
STORM_WINDOW = 64
#: an error event above this is a defect: a normal one is a few hundred bytes
MAX_EVENT_BYTES = 16 * 1024
#: a frame rate well above what the pipeline computes
OVERLOAD_FPS = 150.0


def _frames_until(run: Run, count: int, timeout: float = 120.0) -> None:
    """Wait until `count` distinct frames have been predicted (a point mid-stream)."""
    observer = run.observer
    assert observer is not None
    observer.wait(lambda: len(observer.predictions) >= count, run.deadline, timeout,
                  f"{count} predictions")


def finish(run: Run, row: Row, expected: dict, *, broker_counters: bool = True) -> Tally:
    """Stop the stages (their final stats are retained), count, fill the row."""
    run.stop_all_stages()
    stats = run.status()
    counted = tally(run, run.sent_ids(), expected, stats, broker_counters=broker_counters)
    fill(row, counted)
    return counted


# -- 1. malformed-message storm ---------------------------------------------------------------


def malformed_storm(ctx: Context) -> Row:
    """Malformed messages of every kind in storm.py into every stage's input topic,
    interleaved with good frames (photos from a camera into stage 0, activations computed
    in-process into the others). Each malformed message must give exactly one error event and
    one `rejected` count in its stage's retained stats; each good frame's prediction must equal
    the whole model's. Runs on the float test CNN (whose activations can be NaN) and, in the
    full run, also on the main pipeline (quantized), half the messages each."""
    pipelines = [(ctx.workload.float32, ctx.workload.test_photos)]
    if ctx.mode.name == "full":
        pipelines.insert(0, (ctx.workload.main, ctx.workload.photos))
    row = Row("malformed-message storm", "", "")
    malformed = 0
    kinds: set[str] = set()
    for manifest, photos in pipelines:
        part, sent, sent_kinds = _storm_one(ctx, manifest, photos,
                                            ctx.mode.storm_messages // len(pipelines))
        _merge(row, part)
        malformed += sent
        kinds |= sent_kinds
    row.inputs = f"{malformed:,} malformed messages of {len(kinds)} kinds, {row.sent:,} good frames"
    row.faults = (f"{malformed:,} malformed messages into stages "
                  f"0..{len(ctx.workload.main.stages) - 1}")
    return row


def _merge(row: Row, part: Row) -> None:
    row.sent += part.sent
    row.lost += part.lost
    row.duplicates += part.duplicates
    row.crashes += part.crashes
    row.wrong += part.wrong
    row.peak_rss_mb = max(row.peak_rss_mb, part.peak_rss_mb)
    row.findings += part.findings
    row.note = "; ".join(n for n in (row.note, part.note) if n)


def _storm_one(ctx: Context, manifest: Manifest, photos: Photos,
               total: int) -> tuple[Row, int, set[str]]:
    """One pipeline's storm: (its row, malformed messages sent, their kinds)."""
    name = manifest.source.file
    largest = max(len(data) for _, data in photos)
    max_bytes = max(1_000_000, 2 * largest)
    smallest = min(photos, key=lambda p: len(p[1]))[1]
    targets = storm.targets(manifest, smallest, max_bytes, huge=max_bytes // 4)
    pairs = storm.plan(targets, total, ctx.mode.storm_heavy_repeats)
    inputs = {photo: stage_inputs(manifest, data) for photo, data in photos}
    expected = ctx.workload.expected(manifest, photos)
    row = Row("", "", "")
    with ctx.run("storm", manifest, stage_flags=("--max-message-bytes", str(max_bytes))) as run:
        run.start_stages()
        observer = run.observer
        assert observer is not None
        run.feed(photos, frames=max(len(photos), len(pairs) // GOOD_EVERY))
        injector = Injector(run, STORM_WINDOW)
        malformed: Counter[int] = Counter()
        readable: dict[str, str] = {}
        good: dict[str, str] = {}
        for n, message in enumerate(storm.messages(pairs)):
            injector.publish(message.stage, message.payload)
            malformed[message.stage] += 1
            if message.frame_id is not None:
                readable[message.frame_id] = message.kind
            if n % GOOD_EVERY == 0 and len(manifest.stages) > 1:
                stage = 1 + (n // GOOD_EVERY) % (len(manifest.stages) - 1)
                photo = photos[(n // GOOD_EVERY) % len(photos)][0]
                frame_id = f"good:{stage}:{n}"
                frame = storm.good_frame(targets[stage], frame_id, inputs[photo][stage])
                injector.publish(stage, encode_frame(frame))
                good[frame_id] = photo
        expected_events = sum(malformed.values())
        run.settle(good, until=lambda: len(observer.errors) >= expected_events)
        run.stop_all_stages()
        stats = run.status()
        fill(row, tally(run, {**run.sent_ids(), **good}, expected, stats))
        with observer.changed:
            events = list(observer.errors)
            largest_event = observer.largest_error_bytes
    _check_events(row, name, malformed, readable=readable, events=events, stats=stats)
    if largest_event > MAX_EVENT_BYTES:
        largest = f"largest error event {largest_event:,} bytes"
        row.note = "; ".join(filter(None, [row.note, largest]))
    return row, expected_events, {kind.name for kind, _ in pairs}


def _check_events(row: Row, model: str, malformed: Counter[int], *, readable: dict[str, str],
                  events: list[dict], stats: dict[str, dict]) -> None:
    """Findings for every stage whose events or `rejected` count differ from what it was sent,
    and for every kind whose messages (with a readable frame id) got no or several events."""
    by_stage = Counter(e.get("stage") for e in events)
    rejected = {s.get("stage"): int(s.get("rejected", 0)) for s in stats.values()}
    for stage, sent in sorted(malformed.items()):
        if by_stage[stage] != sent or rejected.get(stage) != sent:
            row.findings.append(
                f"{model} stage {stage}: {sent} malformed, {by_stage[stage]} error events, "
                f"{rejected.get(stage)} rejected")
    per_id = Counter(e.get("frame_id") for e in events if isinstance(e.get("frame_id"), str))
    wrong_kinds: Counter[str] = Counter()
    for frame_id, kind in readable.items():
        if per_id[frame_id] != 1:
            wrong_kinds[f"{kind} ({per_id[frame_id]} events)"] += 1
    for kind, count in sorted(wrong_kinds.items()):
        row.findings.append(f"{model}: {count} x {kind}")


# -- 3. stage SIGKILL and SIGTERM -------------------------------------------------------------


def stage_kills(ctx: Context) -> Row:
    """QoS 1, frames kept in flight at every stage; mid-stream a stage is killed (SIGKILL) or
    stopped (SIGTERM) and started again, several times, rotating over the stages. Nothing may be
    lost (unacknowledged frames are delivered again) and no prediction may reach subscribers
    twice (the next stage drops redeliveries by frame id). The last stage is SIGKILLed only in
    the full run: a prediction it published just before dying is published again after its
    restart, which the sinks drop (docs/architecture.md) and this row counts."""
    mode = ctx.mode
    with ctx.run("kills") as run:
        run.start_stages()
        nodes = [run.node_name(i) for i in range(len(run.manifest.stages))]
        killable = nodes if mode.name == "full" else nodes[:-1]
        plan = [(killable[i % len(killable)], True) for i in range(mode.kills)]
        plan += [(nodes[(i + 1) % len(nodes)], False) for i in range(mode.kills)]
        plan = [step for pair in zip(plan[: mode.kills], plan[mode.kills:], strict=True)
                for step in pair]
        run.feed(ctx.workload.photos, mode.frames)
        for step, (node, kill) in enumerate(plan, start=1):
            _frames_until(run, step * mode.frames // (len(plan) + 1))
            run.restart_stage(node, kill=kill)
        row = Row("stage SIGKILL / SIGTERM (QoS 1)", f"{mode.frames} frames",
                  f"{mode.kills} x SIGKILL + {mode.kills} x SIGTERM of a stage, restarted")
        run.settle()
        finish(run, row, ctx.workload.expected(run.manifest, ctx.workload.photos))
        return row


# -- 4. broker SIGTERM / SIGKILL with persistence ---------------------------------------------


#: frames per second for scenarios that must stay below the pipeline's rate
STEADY_FPS = 25.0


def broker_restarts(ctx: Context, kill: bool) -> Row:
    """A camera at a steady rate (QoS 1) while mosquitto, with persistence on, is stopped
    (SIGTERM: it saves its database) or killed (SIGKILL: what it acknowledged since its last
    save is gone), left down 2 s (1 s in the fast run) and started again, several times; every
    stage must come back online. Lost frames are explained: seen on a stage topic before a
    SIGKILL and never after means they were in the broker's memory when it died (counted apart:
    mosquitto saves only every autosave_interval); seen after a restart and never delivered
    means the broker had no subscription for them.

    Before a SIGKILL the broker saves its state once, with every node online (as its autosave
    does in a cluster that has been up for a while): a broker that died before it ever saved
    has forgotten the observer's session too, and predictions that went out before the
    observer subscribed again would count as lost though every other subscriber had them."""
    mode = ctx.mode
    signal = "SIGKILL" if kill else "SIGTERM"
    restarts = mode.broker_restarts
    with ctx.run(f"broker-{signal}") as run:
        run.start_stages()
        if kill:
            run.save_broker_state()
        feed = run.feed(ctx.workload.photos, mode.frames, fps=STEADY_FPS)
        kills: list[tuple[float, set[str]]] = []
        for step in range(1, restarts + 1):
            _frames_until(run, step * mode.frames // (restarts + 2))
            kills.append(_in_flight(run))
            run.restart_broker(kill=kill, down_for=mode.broker_down)
            run.wait_online()
        stops = [at for at, _ in kills]
        row = Row(f"broker {signal} with persistence", f"{mode.frames} frames at "
                  f"{STEADY_FPS:.0f} fps", f"{restarts} x broker {signal}, down "
                  f"{mode.broker_down:.0f} s each")
        run.settle()
        finish(run, row, ctx.workload.expected(run.manifest, ctx.workload.photos))
        resent = _resent_at_stop(run, stops)
        if resent:
            row.duplicates -= resent
            row.note += (f"; {resent} predictions delivered twice by design: the last stage's "
                         "QoS 1 publish was in flight when the broker stopped, and was sent "
                         "again (MQTT's at least once)")
        if kill:
            row.by_design = _lost_at_kill(run, feed.sent(), kills)
            if row.by_design:
                row.note += (f"; {row.by_design} of the lost were in mosquitto's memory, "
                             "acknowledged but not saved, when it was killed")
        return row


def _in_flight(run: Run) -> tuple[float, set[str]]:
    """(now, the frames seen on a stage topic and not yet predicted): what a kill may take."""
    observer = run.observer
    assert observer is not None
    with observer.changed:
        return time.monotonic(), set(observer.last_seen) - set(observer.predictions)


#: how near a broker stop (before it, or while it goes down) a prediction's first copy may
#: have come and still have been unacknowledged when the broker stopped
IN_FLIGHT_AT_STOP_S = 0.5


def _resent_at_stop(run: Run, stops: list[float]) -> int:
    """Repeated predictions whose first copy came just before a broker stop: the publisher
    had no PUBACK yet when the broker went, so it sent the prediction again after the restart
    (QoS 1 is at least once; the broker does not remember incoming QoS 1 ids)."""
    observer = run.observer
    assert observer is not None
    with observer.changed:
        return sum(
            count - 1 for frame_id, count in observer.predictions.items()
            if count > 1 and any(
                abs(observer.first_predicted[frame_id] - stop) <= IN_FLIGHT_AT_STOP_S
                for stop in stops)
        )


def _lost_at_kill(run: Run, sent: dict[str, str],
                  kills: list[tuple[float, set[str]]]) -> int:
    """Lost frames that were in flight at a broker SIGKILL and never seen after it."""
    observer = run.observer
    assert observer is not None
    with observer.changed:
        last_seen = dict(observer.last_seen)
        predicted = set(observer.predictions)
    return sum(
        1 for frame_id in sent
        if frame_id not in predicted and any(
            frame_id in in_flight and last_seen[frame_id][1] <= at for at, in_flight in kills)
    )


# -- 5. a stage away during a clean broker restart (defect 2) -----------------------------------


def _published_until(run: Run, feed: Feed, count: int, timeout: float = 120.0) -> None:
    observer = run.observer
    assert observer is not None
    observer.wait(lambda: feed.camera.published >= count, run.deadline, timeout,
                  f"{count} frames published")


#: longer than stage 1 is away, so the camera sees late results, not lost frames
AWAY_FRAME_TIMEOUT = 120.0


def stage_away(ctx: Context) -> Row:
    """Persistence on, a camera at a steady rate. Stage 1 is stopped (SIGTERM: its session and
    the frames queued for it stay with the broker), the broker is stopped cleanly (it saves
    them) and started again while stage 1 is still away, more frames follow, then stage 1
    starts again. Every frame must come out: those queued before the restart and those
    published after it."""
    mode = ctx.mode
    with ctx.run("away") as run:
        run.start_stages()
        away = run.node_name(1)
        # a window as large as the run (or the largest there is): the camera goes on
        # publishing while stage 1 is away
        # (the broker queues the frames for it), and waits for late results, not resending
        feed = run.feed(ctx.workload.photos, mode.frames, fps=STEADY_FPS,
                        in_flight=min(mode.frames, MAX_IN_FLIGHT),
                        frame_timeout=AWAY_FRAME_TIMEOUT)
        _frames_until(run, mode.frames // 4)
        run.stop_stage(away)
        _published_until(run, feed, mode.frames // 2)
        run.restart_broker(kill=False)
        run.wait_online([n for n in run.stages if n != away])
        _published_until(run, feed, 3 * mode.frames // 4)
        run.spawn(1)
        run.wait_online([away])
        row = Row("stage away during a clean broker restart", f"{mode.frames} frames at "
                  f"{STEADY_FPS:.0f} fps", "stage 1 SIGTERM, broker SIGTERM + start, "
                  "stage 1 started again", defect=2)
        run.settle()
        finish(run, row, ctx.workload.expected(run.manifest, ctx.workload.photos))
        return row


# -- 6. slow consumer ------------------------------------------------------------------------


#: the throttled stage's CPU quota, % of one core
SLOW_PERCENT = 5.0


def slow_consumer(ctx: Context, qos: int) -> Row:
    """The last stage throttled to 5% of a CPU (a cgroup CPU quota) while a camera publishes
    at 150 fps. At QoS 1 every frame must come out, late; at QoS 0 the stages drop the oldest
    waiting frame, so frames are lost by design, but each must be counted (a stage's `dropped`
    or the broker's $SYS dropped count)."""
    mode = ctx.mode
    row = Row(f"slow consumer, QoS {qos}", f"{mode.frames} frames at {OVERLOAD_FPS:.0f} fps",
              f"last stage limited to {SLOW_PERCENT:.0f}% of a CPU (cgroup)")
    with ctx.run(f"slow-qos{qos}", qos=qos) as run:
        run.start_stages()
        last = run.stages[run.node_name(len(run.manifest.stages) - 1)]
        assert last.process is not None
        try:
            throttle = faults.cpu_quota([last.process.pid], SLOW_PERCENT)
            throttle.__enter__()
        except faults.UnavailableError as exc:
            row.skipped = str(exc)
            return row
        try:
            run.feed(ctx.workload.photos, mode.frames, fps=OVERLOAD_FPS)
            run.settle()
        finally:
            throttle.__exit__(None, None, None)
        counted = finish(run, row, ctx.workload.expected(run.manifest, ctx.workload.photos))
        if qos == 0:
            row.by_design = min(row.lost, counted.dropped_by_stages + counted.dropped_by_broker)
        return row


# -- 7. broker down at start -------------------------------------------------------------------


#: how long the daemons run before there is a broker
BROKER_LATE_S = 3.0


def broker_down_at_start(ctx: Context) -> Row:
    """The stage daemons start first and find no broker; mosquitto starts 3 s later. They
    must connect on their own (paho's retries) and then lose nothing."""
    mode = ctx.mode
    with ctx.run("late-broker", start_broker=False) as run:
        run.start_stages(wait=False)
        time.sleep(BROKER_LATE_S)  # the fault: daemons running, no broker yet
        run.check_alive()
        run.start_broker()
        run.wait_online()
        run.feed(ctx.workload.photos, mode.frames)
        row = Row("broker down at start", f"{mode.frames} frames",
                  f"daemons started {BROKER_LATE_S:.0f} s before the broker")
        run.settle()
        finish(run, row, ctx.workload.expected(run.manifest, ctx.workload.photos))
        return row


# -- 8. network partition ------------------------------------------------------------------------


def partition(ctx: Context) -> Row:
    """Stage 1 runs in its own network namespace, joined to the broker by a veth pair (the
    broker listens on the pair's host address too); mid-stream the link goes down for 10 s and
    up again, while a camera keeps a steady rate. The stage's connection must survive or come
    back, and no frame may be lost."""
    mode = ctx.mode
    seconds = mode.partition_seconds
    row = Row("network partition of a stage", f"{mode.frames} frames at {STEADY_FPS:.0f} fps",
              f"stage 1's link down {seconds:.0f} s")
    if not seconds:
        row.skipped = "not in the fast run (a 10 s partition)"
        return row
    try:
        space_context = faults.namespace()
        space = space_context.__enter__()
    except faults.UnavailableError as exc:
        row.skipped = f"network namespaces not available: {exc}"
        return row
    try:
        port = free_port()
        launch = StageLaunch(wrap=space.wrap, broker=f"{space.host_address}:{port}")
        with ctx.run("partition", extra=f"listener {port} {space.host_address}\n",
                     launches={1: launch}) as run:
            run.start_stages()
            run.feed(ctx.workload.photos, mode.frames, fps=STEADY_FPS)
            _frames_until(run, mode.frames // 4)
            space.set_link(up=False)
            try:
                time.sleep(seconds)  # the fault's duration
            finally:
                space.set_link(up=True)
            run.settle()
            finish(run, row, ctx.workload.expected(run.manifest, ctx.workload.photos))
            return row
    finally:
        space_context.__exit__(None, None, None)


# -- 9. soak ---------------------------------------------------------------------------------


#: growth of open fds or threads from start to end that counts as a leak
LEAK_SLACK = 4
#: how often the soak keeps every daemon's RSS for its memory curve, seconds
CURVE_EVERY_S = 10.0
#: how often a timed soak writes its curve so far (a run cut short still leaves one)
CHECKPOINT_S = 60.0
#: RSS growth over a timed soak's second half above which a stage has not levelled off, MB
LEVEL_SLACK_MB = 1.0
#: frames the timed soak's camera keeps without a result (its rate is soak_fps below this)
SOAK_WINDOW = 32
#: the memory curve's files beside the report: NAME.json and NAME.png
SOAK_CURVE = "reliability-soak"


def soak(ctx: Context) -> Row:
    """Frames through the main pipeline for a long time, with every daemon's RSS, open file
    descriptors and threads sampled from /proc four times a second; start (once online), end
    and peak are reported. The full run feeds for an hour at 20 frames/s (a camera with a
    window of 32 frames), keeps every daemon's RSS every 10 s as a memory curve
    (docs/reliability-soak.json and .png) and compares each stage's growth over the second
    half with the first (levels: medians of 5 min of samples at the start, the middle and the
    end); the fast run sends a number of frames. Memory must stay within 1.5x its start, a
    stage must grow at most 1 MB over the second half of a timed soak (levelled off), fds and
    threads must not grow, every prediction must equal the whole model's."""
    mode = ctx.mode
    timed = mode.soak_seconds > 0
    with ctx.run("soak") as run:
        run.sampler.curve_every = CURVE_EVERY_S
        run.start_stages()
        if timed:
            feed = run.feed(ctx.workload.photos, int(2 * mode.soak_seconds * mode.soak_fps),
                            fps=mode.soak_fps, in_flight=SOAK_WINDOW)
            _feed_for(run, feed, mode.soak_seconds, ctx.artifacts)
        else:
            run.feed(ctx.workload.photos, mode.soak_frames)
        run.settle()
        usage = run.usage()
        counted = tally(run, run.sent_ids(), ctx.workload.expected(run.manifest,
                        ctx.workload.photos), {})
        if timed:
            inputs = (f"{counted.sent:,} frames in {mode.soak_seconds / 60:.0f} min "
                      f"({counted.sent / mode.soak_seconds:.1f} frames/s, "
                      f"{mode.soak_fps:.0f} asked)")
        else:
            inputs = f"{mode.soak_frames:,} frames"
        row = Row("soak", inputs, "none")
        fill(row, counted)
        run.stop_all_stages()
        curve = run.sampler.curve_snapshot()
    bounded_memory(row, counted)
    parts = []
    for node, u in sorted(usage.items()):
        parts.append(f"{node.rsplit('-', 1)[-1]} RSS {u.start.rss_mb:.0f}→{u.end.rss_mb:.0f} "
                     f"(peak {u.peak.rss_mb:.0f}) MB, fds {u.start.fds}→{u.end.fds}, "
                     f"threads {u.start.threads}→{u.end.threads}")
        if node != BROKER_NODE and (u.end.fds > u.start.fds + LEAK_SLACK
                                    or u.end.threads > u.start.threads + LEAK_SLACK):
            row.findings.append(f"{node}: fds {u.start.fds}→{u.end.fds}, threads "
                                f"{u.start.threads}→{u.end.threads}")
    if timed:
        parts.append(_levelling(row, curve))
        if ctx.artifacts is not None:
            _write_curve(curve, ctx.artifacts, row.inputs, plot=True)
    row.note = "; ".join([*parts, row.note] if row.note else parts)
    return row


def _feed_for(run: Run, feed: Feed, seconds: float, artifacts: Path | None) -> None:
    """Let the camera publish for `seconds`, then stop it; the curve so far is written every
    CHECKPOINT_S and every daemon checked alive."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        time.sleep(run.deadline.bound(min(left, CHECKPOINT_S)))  # the soak's length
        run.check_alive()
        if artifacts is not None:
            _write_curve(run.sampler.curve_snapshot(), artifacts,
                         f"{feed.camera.published:,} frames so far", plot=False)
    feed.stop()


def _write_curve(curve: dict, artifacts: Path, what: str, plot: bool) -> None:
    data = artifacts / f"{SOAK_CURVE}.json"
    title = f"soak: RSS of every daemon, {scrub_node_names(what)}"
    save_curve({scrub_node_names(n): p for n, p in curve.items()}, data, {"title": title})
    if plot:
        plot_curve(data, artifacts / f"{SOAK_CURVE}.png")


def scrub_node_names(text: str) -> str:
    """Node names without the run's random pipeline name: stage0, not relab12cd-stage0."""
    return text.rsplit("-", 1)[-1] if text.startswith("rel") else text


def _levelling(row: Row, curve: dict) -> str:
    """Each node's growth over the first and the second half; a finding for a stage still
    growing by more than LEVEL_SLACK_MB in the second."""
    parts = []
    for node, points in sorted(curve.items()):
        grew = growth(points)
        if grew is None:
            continue
        name = scrub_node_names(node)
        parts.append(f"{name} {grew.start:.1f}→{grew.middle:.1f}→{grew.end:.1f} MB "
                     f"({grew.first_half:+.1f} first half, {grew.second_half:+.1f} second)")
        if node != BROKER_NODE and grew.second_half > LEVEL_SLACK_MB:
            row.findings.append(f"{name} RSS still growing: {grew.second_half:+.1f} MB over "
                                "the second half")
    return "RSS levels at start→middle→end (medians of 5 min): " + ", ".join(parts)
