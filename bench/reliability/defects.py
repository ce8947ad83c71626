"""One scenario per defect of the issue, each measuring the outcome rather than asserting it.

Defects are numbered in the order the issue lists them:
1 error events quoting a huge field, 2 shared subscriptions lost on a broker restart
(scenarios.stage_away), 3 frame stealing through `$share` by another broker user,
4 QoS 1 overload dropped by mosquitto's queue limit, 5 a msgpack memory bomb, 6 NaN
activations, 7 EXIF orientation, 8 camera tracebacks on symlink loops, 9 config values that
break paho, 10 invisible TLS failures, 11 no chain check of segments at start, 12 a camera
exiting 0 when every publish is refused.
"""

from __future__ import annotations

import io
import logging
import re
import secrets
import subprocess
import sys
import tempfile
import threading
from contextlib import nullcontext
from pathlib import Path

from PIL import Image, ImageOps

from bench.reliability import faults, storm
from bench.reliability.context import Context
from bench.reliability.harness import Run
from bench.reliability.injector import Injector
from bench.reliability.observer import frame_id_of
from bench.reliability.results import Row, bounded_memory, fill, tally
from bench.reliability.scenarios import MAX_EVENT_BYTES, OVERLOAD_FPS, STEADY_FPS, finish
from bench.reliability.secure import credentials
from bench.reliability.workload import Photos
from support.daemons import StageLaunch, child_env
from support.reference import whole_model_top

log = logging.getLogger(__name__)

#: how long a daemon or command gets to show what it does with a bad setting
VERDICT_TIMEOUT = 6.0
#: the broker's queue limit as shipped (aiotedge/mosquitto.conf)
SHIPPED_QUEUE = 1000


def _inject(run: Run, stage: int, payloads: list[bytes]) -> None:
    injector = Injector(run)
    for payload in payloads:
        injector.publish(stage, payload)


def _wait_errors(run: Run, count: int, timeout: float = 30.0) -> list[dict]:
    observer = run.observer
    assert observer is not None
    observer.wait(lambda: len(observer.errors) >= count, run.deadline, timeout, "error events")
    with observer.changed:
        return list(observer.errors)


# -- 1. error events quoting a huge field ------------------------------------------------------


def oversized_event(ctx: Context) -> Row:
    """Stage 1 gets a message whose `version` is a string of several MB, and one whose
    `frame_id` is; both are refused, and each error event should say why in a few hundred
    bytes rather than quote the field back to every subscriber of the errors topic."""
    huge = ctx.mode.huge_field_bytes
    manifest = ctx.workload.int8
    limit = huge + 1_000_000
    row = Row("error event quoting a huge field", f"2 messages with a {huge / 1e6:.0f} MB "
              "field, 10 good frames", "stage 1: version, frame_id of several MB", defect=1)
    with ctx.run("oversized-event", manifest,
                 stage_flags=("--max-message-bytes", str(limit))) as run:
        run.start_stages()
        target = storm.targets(manifest, b"", limit, huge)[1]
        _inject(run, 1, [storm.kind(name).build(target, f"huge:{n}") for n, name in
                         enumerate(("version huge string", "frame_id huge"))])
        run.feed(ctx.workload.test_photos, 10)
        _wait_errors(run, 2)
        run.settle()
        finish(run, row, ctx.workload.expected(manifest, ctx.workload.test_photos))
        largest = run.observer.largest_error_bytes if run.observer else 0
    row.note = "; ".join(filter(None, [f"largest error event {largest:,} bytes", row.note]))
    if largest > MAX_EVENT_BYTES:
        row.findings.append(f"an error event of {largest:,} bytes")
    return row


# -- 3. frame stealing through $share ------------------------------------------------------------


def frame_stealing(ctx: Context) -> Row:
    """A broker with users and the shipped ACL; 5 stages (the ACL's stage0..stage4) log in as
    their users, the camera as cam0. Another user of that broker, `watcher` (read-only tools:
    dashboards, `aiotedge status`), subscribes to `$share/stage0/<stage 0's topic>`, joining
    stage 0's share group: the broker then hands it part of the camera's frames, which never
    reach stage 0. Counts the frames it receives."""
    mode = ctx.mode
    manifest = ctx.workload.int8_five
    row = Row("frame stealing through $share", f"{mode.frames} frames",
              "user `watcher` joins stage 0's share group", defect=3)
    with tempfile.TemporaryDirectory(prefix="aiotedge-rel-acl-") as scratch:
        pipeline = f"rel{secrets.token_hex(3)}"
        creds = credentials(Path(scratch), pipeline)
        launches = {
            k: StageLaunch(node=f"stage{k}",
                           flags=("--config", str(creds.node_config(f"stage{k}", f"s{k}"))))
            for k in range(len(manifest.stages))
        }
        with ctx.run("stealing", manifest, pipeline=pipeline, credentials=creds,
                     launches=launches) as run:
            run.start_stages()
            stolen: set[str] = set()
            lock = threading.Lock()

            def steal(message) -> None:
                frame_id = frame_id_of(message.payload)
                with lock:
                    stolen.add(frame_id or f"unreadable-{len(stolen)}")

            thief = run.session("dashboard", user="watcher")
            thief.subscribe(run.topics.stage_input(0), steal, qos=1, share_group="stage0")
            run.feed(ctx.workload.test_photos, mode.frames, fps=STEADY_FPS)
            run.settle()
            run.stop_all_stages()
            counted = tally(run, run.sent_ids(),
                            ctx.workload.expected(manifest, ctx.workload.test_photos),
                            run.status(), broker_counters=False)
    fill(row, counted)
    lost = set(counted.lost)
    with lock:
        taken = len(stolen)
        lost_to_it = len(stolen & lost)
    row.note = "; ".join(filter(None, [f"the other user received {taken} frames", row.note]))
    if lost_to_it:
        row.findings.append(f"another broker user took {lost_to_it} frames away from stage 0")
    return row


# -- 4. QoS 1 overload ---------------------------------------------------------------------------


#: stage 0's CPU quota where the pipeline (the small test CNN) would otherwise outrun 150 fps
OVERLOAD_PERCENT = 10.0


def overload(ctx: Context) -> Row:
    """A camera publishing at 150 fps at QoS 1 into a pipeline that computes fewer frames per
    second: the frames stage 0 has not taken pile up in the broker until its queue limit
    (max_queued_messages), where mosquitto drops them although they are QoS 1. Measures the
    frames lost, what the broker says it dropped, and stage 0's memory. The real MobileNetV2 is
    slower than 150 fps by itself; the small test CNN gets stage 0 limited to 10% of a CPU,
    and the fast run lowers the queue limit to 50 so the limit is reached within 300 frames."""
    mode = ctx.mode
    queue = mode.overload_queue or SHIPPED_QUEUE
    extra = f"max_queued_messages {queue}\n" if mode.overload_queue else ""
    throttled = not ctx.workload.uses_shared or mode.name == "fast"
    manifest = ctx.workload.int8 if throttled else ctx.workload.main
    photos = ctx.workload.test_photos if throttled else ctx.workload.photos
    row = Row("QoS 1 overload at 150 fps", f"{mode.overload_frames:,} frames at "
              f"{OVERLOAD_FPS:.0f} fps", f"broker queue limit {queue}"
              + (f", stage 0 limited to {OVERLOAD_PERCENT:.0f}% of a CPU" if throttled else ""),
              defect=4)
    with ctx.run("overload", manifest, extra=extra) as run:
        run.start_stages()
        stage0 = run.stages[run.node_name(0)]
        assert stage0.process is not None
        try:
            with (faults.cpu_quota([stage0.process.pid], OVERLOAD_PERCENT) if throttled
                  else nullcontext()):
                run.feed(photos, mode.overload_frames, fps=OVERLOAD_FPS)
                run.settle()
        except faults.UnavailableError as exc:
            row.skipped = f"the pipeline must be slower than 150 fps: {exc}"
            return row
        run.stop_all_stages()
        counted = tally(run, run.sent_ids(), ctx.workload.expected(manifest, photos),
                        run.status())
    fill(row, counted)
    bounded_memory(row, counted)
    return row


# -- 5. msgpack memory bomb ----------------------------------------------------------------------


#: copies of a message of the size limit a stage may hold while reading it: paho's joined
#: chunks (the old and the new), the payload copied out of the packet, the unpacker's buffer
BOMB_COPIES = 4


def memory_bomb(ctx: Context) -> Row:
    """Stage 1 gets an msgpack array of empty maps just under its max_message_bytes: one byte
    per map on the wire, a Python dict per map once decoded, before the stage can see it is
    not a frame. Measures the stage's peak RSS (the kernel's high-water mark) against its RSS
    once ready, and that it still serves frames after."""
    limit = 8 * 1024 * 1024 if ctx.mode.name == "full" else 2 * 1024 * 1024
    manifest = ctx.workload.int8
    row = Row("msgpack memory bomb", f"1 array of {limit - 16:,} empty maps, 10 good frames",
              f"stage 1, max_message_bytes {limit:,}", defect=5)
    with ctx.run("bomb", manifest, stage_flags=("--max-message-bytes", str(limit))) as run:
        run.start_stages()
        _inject(run, 1, [storm.memory_bomb(limit - 16)])
        _wait_errors(run, 1)
        run.feed(ctx.workload.test_photos, 10)
        run.settle()
        run.stop_all_stages()
        counted = tally(run, run.sent_ids(),
                        ctx.workload.expected(manifest, ctx.workload.test_photos), run.status())
    fill(row, counted)
    bounded_memory(row, counted, message_mb=BOMB_COPIES * limit / 2**20)
    return row


# -- 6. NaN activations ----------------------------------------------------------------------------


def nan_activation(ctx: Context) -> Row:
    """The float test CNN: stages 1 and 2 get activations of exactly the right dtype and shape
    holding NaN or infinity. Each should be refused with an error event; today they are
    computed, and a prediction of NaN scores is published (`NaN` is not JSON to most
    consumers)."""
    manifest = ctx.workload.float32
    row = Row("NaN and infinite activations", "4 non-finite activations, 10 good frames",
              "stages 1 and 2: NaN, +inf", defect=6)
    kinds = [storm.kind("NaN activation"), storm.kind("infinite activation")]
    with ctx.run("nan", manifest) as run:
        run.start_stages()
        targets = storm.targets(manifest, b"", 1_000_000, 0)
        ids = []
        for stage in (1, 2):
            payloads = []
            for kind in kinds:
                ids.append(f"nan:{stage}:{kind.name}")
                payloads.append(kind.build(targets[stage], ids[-1]))
            _inject(run, stage, payloads)
        run.feed(ctx.workload.test_photos, 10)
        observer = run.observer
        assert observer is not None
        run.settle(until=lambda: sum(1 for e in observer.errors if e.get("frame_id") in ids)
                   + sum(1 for i in ids if i in observer.predictions) >= len(ids))
        finish(run, row, ctx.workload.expected(manifest, ctx.workload.test_photos))
        with observer.changed:
            refused = sum(1 for e in observer.errors if e.get("frame_id") in ids)
            predicted = sum(1 for i in ids if i in observer.predictions)
            not_json = observer.not_strict_json
    row.note = "; ".join(filter(None, [
        f"{refused} refused, {predicted} computed into a prediction, {not_json} predictions "
        "not strict JSON", row.note]))
    if refused != len(ids):
        row.findings.append(f"{len(ids) - refused} non-finite activations not refused")
    if not_json:
        row.findings.append(f"{not_json} predictions with NaN or Infinity")
    return row


# -- 7. EXIF orientation -------------------------------------------------------------------------


def exif_photos(photos: Photos) -> tuple[Photos, Photos]:
    """(JPEGs stored sideways with an EXIF orientation tag, the same pixels turned upright).

    What a phone writes: the sensor's pixels and a tag saying "rotate 90° to view". Upright
    versions are PNGs of exactly the decoded JPEG's pixels, turned as the tag says.
    """
    tagged, upright = [], []
    for name, data in photos:
        with Image.open(io.BytesIO(data)) as image:
            sideways = image.convert("RGB").transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
        buffer = io.BytesIO()
        sideways.save(buffer, "JPEG", quality=95, exif=exif)
        jpeg = buffer.getvalue()
        with Image.open(io.BytesIO(jpeg)) as decoded:
            turned = ImageOps.exif_transpose(decoded)
        png = io.BytesIO()
        turned.save(png, "PNG")
        stem = name.rsplit(".", 1)[0]
        tagged.append((f"{stem}-exif6.jpg", jpeg))
        upright.append((f"{stem}-exif6.jpg", png.getvalue()))
    return tagged, upright


def exif_orientation(ctx: Context) -> Row:
    """Every photo of the main pipeline, saved as a phone does: pixels sideways plus an EXIF
    orientation tag. Each prediction should equal the whole model's on the photo turned
    upright as the tag says; counts those that differ."""
    manifest = ctx.workload.main
    tagged, upright = exif_photos(ctx.workload.photos)
    expected = {name: whole_model_top(manifest, data) for name, data in upright}
    row = Row("EXIF orientation", f"{len(tagged)} photos with EXIF orientation 6",
              "none (the photos themselves)", defect=7)
    with ctx.run("exif", manifest) as run:
        run.start_stages()
        run.feed(tagged, len(tagged))
        run.settle()
        finish(run, row, expected)
    row.note = "; ".join(filter(None, [
        f"{row.wrong} of {row.sent} predictions are of the sideways picture", row.note]))
    return row


# -- 8, 9, 10, 12: commands and daemons with a bad setup -------------------------------------------


def _command(args: list[str], timeout: float = VERDICT_TIMEOUT) -> tuple[int | None, str]:
    """Run `python -m aiotedge ARGS`; (exit code or None if still running at `timeout`, output)."""
    process = subprocess.Popen([sys.executable, "-m", "aiotedge", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=child_env())
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return None, output


def symlink_loop(ctx: Context) -> Row:
    """`aiotedge camera` on a folder of good photos plus `loop.jpg`, a symbolic link to itself
    (reading it fails with ELOOP). The camera should skip it or stop with a one-line error, not
    a traceback."""
    row = Row("camera on a symlink loop", "a folder of photos + loop.jpg -> loop.jpg",
              "none (the folder)", defect=8)
    with ctx.run("symlink", ctx.workload.int8) as run, \
            tempfile.TemporaryDirectory(prefix="aiotedge-rel-photos-") as folder:
        for name, data in ctx.workload.test_photos:
            (Path(folder) / name).write_bytes(data)
        (Path(folder) / "loop.jpg").symlink_to("loop.jpg")
        code, output = _command(["camera", "--images", folder, "--broker",
                                 str(run.broker.address), "--pipeline", run.topics.pipeline,
                                 "--fps", "50", "--frames", "5"])
    row.note = f"exit code {code}; {_last_line(output)}"
    if "Traceback" in output:
        row.crashes = 1
        row.findings.append("traceback")
    return row


def _last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "(no output)")[:160].replace("|", "\\|")


#: node config values that pass aiotedge's own checks but not paho's or MQTT's limits
PAHO_BREAKERS = {
    "[broker] keepalive = 70000": "[broker]\nkeepalive = 70000\n",
    "[pipeline] session_expiry = 2**32": "[pipeline]\nsession_expiry = 4294967296\n",
    "[stage] queue_size = 70000": "[stage]\nqueue_size = 70000\n",
}


def _daemon_verdict(run: Run, config: Path, node: str, index: int = 1) -> str:
    """Start a stage with `config`; what it did within VERDICT_TIMEOUT: 'online', 'exit N',
    'exit N with a traceback' or 'running, never online'."""
    run.launches[index] = StageLaunch(node=node, flags=("--config", str(config)))
    daemon = run.spawn(index)
    daemon.stop_requested = True  # whatever it does is the measurement, not a crash
    observer = run.observer
    assert observer is not None and daemon.process is not None
    process = daemon.process
    observer.wait(lambda: node in observer.online or process.poll() is not None
                  or "Traceback" in daemon.log_tail(100_000),
                  run.deadline, VERDICT_TIMEOUT, f"{node} online, gone or failing")
    traceback = "Traceback" in daemon.log_tail(100_000)
    if node in observer.online:
        verdict = "online"
    elif process.poll() is not None:
        verdict = f"exit {process.returncode}" + (" with a traceback" if traceback else "")
    else:
        verdict = "running, never online" + (" (traceback in its log)" if traceback else "")
    run.stop_stage(node, kill=True)  # measured already; SIGTERM would wait for its broker loop
    return verdict


def paho_config(ctx: Context) -> Row:
    """A stage started with each of these node configs, which aiotedge's config checks accept
    but MQTT cannot encode. It should refuse the value with a one-line error (exit 2) naming
    the key; today paho fails inside its network thread and the daemon waits for a broker it
    never reaches, or dies with a traceback."""
    row = Row("config values that break paho", f"{len(PAHO_BREAKERS)} node configs: "
              + ", ".join(PAHO_BREAKERS), "none (the configs)", defect=9)
    verdicts = {}
    with ctx.run("paho-config", ctx.workload.int8) as run:
        for n, (label, text) in enumerate(PAHO_BREAKERS.items()):
            config = run.workdir / f"breaker{n}.toml"
            config.write_text(text)
            verdicts[label] = _daemon_verdict(run, config, f"breaker{n}")
    row.note = "; ".join(f"{label}: {verdict}" for label, verdict in verdicts.items())
    for label, verdict in verdicts.items():
        if "traceback" in verdict or "never online" in verdict:
            row.findings.append(f"{label}: {verdict}")
    return row


TLS_MESSAGE = re.compile(r"\b(ssl|tls)\b|certificate|handshake", re.IGNORECASE)


def tls_failure(ctx: Context) -> Row:
    """A stage configured for TLS (`[broker] tls = true`) pointed at the broker's plain MQTT
    port, so every TLS handshake fails. Its log should say so within 6 s; today it only says
    it is waiting for the broker."""
    row = Row("invisible TLS failure", "a stage with tls = true against a plain listener",
              "none (the config)", defect=10)
    with ctx.run("tls", ctx.workload.int8) as run:
        config = run.workdir / "tls.toml"
        config.write_text("[broker]\ntls = true\n")
        verdict = _daemon_verdict(run, config, "tls-stage")
        log_text = run.stages["tls-stage"].log_tail(100_000)
    told = [line for line in log_text.splitlines()
            if TLS_MESSAGE.search(line) and "connecting to" not in line]
    row.note = f"{verdict}; " + (f"log: {_last_line(told[0])}" if told
                                 else "nothing in its log about TLS")
    if not told:
        row.findings.append("the TLS failure is not logged")
    return row


def refused_camera(ctx: Context) -> Row:
    """`aiotedge camera` logging in as cam0 to a broker with the shipped ACL, but for another
    pipeline name than the ACL's: the broker refuses every publish (PUBACK 0x87 Not
    authorized). The camera should fail (non-zero exit); today it reports the frames as
    published and exits 0."""
    frames = 10
    row = Row("camera whose every publish is refused", f"{frames} frames",
              "ACL refuses every publish", defect=12)
    with tempfile.TemporaryDirectory(prefix="aiotedge-rel-acl-") as scratch:
        pipeline = "relcam"
        creds = credentials(Path(scratch), pipeline)
        with ctx.run("refused", ctx.workload.int8, pipeline=pipeline, credentials=creds) as run, \
                tempfile.TemporaryDirectory(prefix="aiotedge-rel-photos-") as folder:
            for name, data in ctx.workload.test_photos:
                (Path(folder) / name).write_bytes(data)
            config = creds.node_config("cam0", "camera")
            code, output = _command(["camera", "--config", str(config), "--images", folder,
                                     "--broker", str(run.broker.address),
                                     "--pipeline", "other", "--name", "cam0",
                                     "--fps", "50", "--frames", str(frames)],
                                    timeout=VERDICT_TIMEOUT + frames / 50)
    row.sent = row.lost = row.by_design = frames  # refused by the ACL: the scenario's point
    row.note = f"exit code {code}; {_last_line(output)}"
    if code == 0:
        row.findings.append("exit code 0 although the broker refused every frame")
    elif "refused" not in output:
        row.findings.append(f"exit code {code}, but not for the refusal: {_last_line(output)}")
    return row


# -- 11. no chain check of segments at start -----------------------------------------------------


def chain_check(ctx: Context) -> Row:
    """Three boards whose manifests come from different splits: stage 0 from the 5-stage
    split of the int8 test CNN (its output is 1x20x16x16), stages 1 and 2 from the 3-stage split
    (stage 1 takes 1x10x8x32). Each stage's own segment matches its own manifest, so each starts;
    started at the same moment, none may see the others online at its check at start. The
    pipeline is broken all the same. It should be found before the first frame (a stage
    refusing to start, or an error event from a running stage whose neighbour does not fit);
    otherwise every frame is refused one by one."""
    first, rest = ctx.workload.int8_five, ctx.workload.int8
    assert not first.stages[0].output.matches(rest.stages[1].input)
    frames = 10
    row = Row("segments from different splits", f"{frames} frames",
              "stage 0 of another split", defect=11)
    with ctx.run("chain", rest, launches={0: StageLaunch(manifest=first.directory)}) as run:
        run.start_stages(wait=False)
        for daemon in run.stages.values():
            daemon.stop_requested = True  # refusing to start is the hoped-for outcome
        observer = run.observer
        assert observer is not None
        nodes = set(run.stages)
        observer.wait(lambda: nodes <= observer.online or any(
            d.process is not None and d.process.poll() is not None for d in run.stages.values()),
            run.deadline, 30, "stages online or refusing")
        with observer.changed:
            refused = sorted(nodes - observer.online)  # exited, or staying offline
        if not refused:  # all serving: the running stages should report their neighbours
            observer.wait(lambda: bool(observer.errors), run.deadline, 30,
                          "an error event about the chain")
        with observer.changed:
            early_events = len(observer.errors)
        if not refused and not early_events:  # not found: frames show what happens instead
            run.feed(ctx.workload.test_photos, frames, fps=STEADY_FPS)
            run.settle()
        expected = ctx.workload.expected(rest, ctx.workload.test_photos)
        counted = tally(run, run.sent_ids(), expected, {})
    fill(row, counted)
    detected = bool(refused or early_events)
    row.note = "; ".join(filter(None, [
        f"not serving: {', '.join(refused) or 'none'}; {early_events} error events before "
        "the first frame", row.note]))
    if not detected:
        row.findings.append(f"not found at start: {row.sent - row.lost} of {row.sent} frames "
                            "predicted, the rest refused one by one")
    return row
