"""Faults that once lost frames or stopped a stage for good, against real daemons and mosquitto."""

from __future__ import annotations

import dataclasses
import queue
import subprocess
import threading
import time

import msgpack
import pytest
from aiotedge_converter.cli import main as convert

from aiotedge.config.sections import CameraConfig
from aiotedge.contracts.events import ErrorEvent, Prediction
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import BROKER_DROPPED, Topics
from aiotedge.contracts.wire import Frame, encode_frame
from aiotedge.media.sources import Stills
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.daemons.local import LOCAL_CAMERA, LocalPipeline
from aiotedge.nodes.daemons.status import collect_status, format_status, read_pipeline
from aiotedge.nodes.mqtt.broker import LocalBroker
from aiotedge.nodes.mqtt.session import MqttSession
from support.daemons import aiotedge_command, stage_command
from support.reference import whole_model_top
from support.watch import wait_all_online

#: frames without a result are sent again after 5 s, not the default 30
QUICK_RESENDS = dataclasses.replace(LOCAL_CAMERA, frame_timeout=5.0)

#: bound for one awaited event (a message, a line of log); never a synchronisation
TIMEOUT = 60.0


def connected(broker, client_id: str, session_expiry: int = 0) -> MqttSession:
    session = MqttSession(broker.address, client_id, session_expiry=session_expiry)
    session.start()
    assert session.wait_connected(TIMEOUT)
    return session


def test_a_huge_field_gives_a_short_error_event_and_the_stage_keeps_serving(
    broker, split3, generated_frames
):
    """A 7 MB field once made a 40 MB error event: refused by the broker, re-sent forever."""
    topics = Topics("local")
    events: queue.Queue[bytes] = queue.Queue()
    injector = connected(broker, "injector")
    injector.subscribe(topics.errors, lambda message: events.put(message.payload))
    hostile = msgpack.packb({"version": "v" * 7_000_000, "frame_id": "f" * 1_000_000})
    expected = {name: whole_model_top(split3, data) for name, data in generated_frames}
    with LocalPipeline(split3, broker=broker.address) as pipeline:
        injector.publish(topics.stage_input(1), hostile, qos=1)
        payload = events.get(timeout=TIMEOUT)
        results = dict(pipeline.predict(generated_frames))
    injector.stop()
    assert len(payload) < 2048
    event = ErrorEvent.parse(payload)
    assert event is not None and event.stage == 1
    assert "larger than the wire format allows" in event.reason
    assert {name: p.top for name, p in results.items()} == expected


def test_frames_for_a_stage_away_during_a_broker_restart_wait_for_it(
    broker, split3, generated_frames
):
    """Shared subscriptions are not kept by mosquitto across a restart: 100 of 100 frames were
    lost this way. A stage without replicas subscribes plainly, which the broker keeps."""
    topics = Topics("local")
    handed_on: queue.Queue[bytes] = queue.Queue()
    # its own copy of what stage 0 hands on, in a session the broker keeps across its restart
    observer = connected(broker, "observer", session_expiry=600)
    observer.subscribe(topics.stage_input(1), lambda message: handed_on.put(message.payload))
    expected = {name: whole_model_top(split3, data) for name, data in generated_frames}
    with LocalPipeline(split3, broker=broker.address) as pipeline:
        pipeline.stop_stage("local-stage1")
        broker.stop()  # SIGTERM: mosquitto saves its state
        broker.start()
        wait_all_online(broker, ["local-stage0", "local-stage2"])
        results: dict = {}
        feeder = threading.Thread(target=lambda: results.update(
            pipeline.predict(generated_frames, in_flight=len(generated_frames))))
        feeder.start()
        for _ in generated_frames:  # every frame is past stage 0 while stage 1 is away
            handed_on.get(timeout=TIMEOUT)
        pipeline.start_stage("local-stage1")
        feeder.join(timeout=TIMEOUT)
    observer.stop()
    assert {name: p.top for name, p in results.items()} == expected


# -- a stage checks at start that it fits between the stages that are online ---------------


@pytest.fixture(scope="module")
def other_split(test_models, tmp_path_factory) -> Manifest:
    """The int8 test model cut elsewhere (after ops 4 and 8, the default split after 5 and 8)."""
    out = tmp_path_factory.mktemp("other-split")
    assert convert(["split", str(test_models["int8"]), "--cuts", "4,8", "--out", str(out)]) == 0
    return Manifest.load(out)


class StageProcess:
    """`aiotedge stage` as a board runs it; its log lines are read as they come."""

    def __init__(self, broker, manifest: Manifest, index: int, node: str, *flags: str) -> None:
        self.process = subprocess.Popen(
            stage_command(aiotedge_command(node), *flags, manifest=manifest.directory,
                          index=index, node=node, broker=broker.address, pipeline="chain"),
            stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for_line(self, text: str) -> str:
        seen = []
        while text not in (line := self.lines.get(timeout=TIMEOUT)):
            seen.append(line)
        return line

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=TIMEOUT)


def test_a_stage_of_another_split_refuses_to_start(broker, split3, other_split):
    first = StageProcess(broker, split3, 0, "stage0")
    first.wait_for_line("stage 0 ready")
    second = StageProcess(broker, other_split, 1, "stage1")
    line = second.wait_for_line("not starting")
    assert second.process.wait(timeout=TIMEOUT) == 2
    assert first.stop() == 0
    assert "node stage0 (stage 0" in line
    assert "different splits" in line


def test_a_second_copy_of_a_stage_needs_the_same_share_group(broker, split3):
    first = StageProcess(broker, split3, 1, "stage1-a", "--share-group", "s1")
    first.wait_for_line("stage 1 ready")
    stray = StageProcess(broker, split3, 1, "stage1-b")
    line = stray.wait_for_line("not starting")
    assert stray.process.wait(timeout=TIMEOUT) == 2
    assert "node stage1-a (stage 1" in line and "share_group" in line
    replica = StageProcess(broker, split3, 1, "stage1-c", "--share-group", "s1")
    replica.wait_for_line("stage 1 ready")
    assert replica.stop() == 0
    assert first.stop() == 0


def test_a_stage_says_why_the_broker_cannot_be_reached(broker):
    session = MqttSession(broker.address, "unreachable")
    broker.stop()
    session.start()
    try:
        problem = session.first_attempt(TIMEOUT)
    finally:
        session.stop()
    assert problem == f"connection refused: nothing listens on {broker.address}"


def test_a_camera_faster_than_the_pipeline_loses_no_frame_at_qos1(split3, generated_frames):
    """At 150 fps against a pipeline taking 85, mosquitto dropped a third of the frames
    (beyond max_queued_messages, 20 here to show it with few frames) and nobody noticed."""
    frames = 200
    with LocalBroker(extra_config="max_queued_messages 20") as small_queues, \
            LocalPipeline(split3, broker=small_queues.address) as pipeline:
        session = connected(small_queues, "fast-camera")
        camera = Camera(session, pipeline.topics,
                        CameraConfig(name="fast", fps=1000.0))
        assert camera.run(Stills(generated_frames, loop=True), frames=frames) == frames
        session.stop()
    assert camera.counters.get("answered") == frames
    assert camera.counters.get("unanswered") == 0


def test_frames_another_publisher_lost_at_the_broker_are_counted_at_stage_zero(
    split3, generated_frames
):
    """A script publishing at 150 fps lost 1,899 of 3,000 QoS 1 frames at the broker's queue
    limit, visible only in the broker's $SYS counter: no aiotedge counter moved."""
    frames = 200
    photo = generated_frames[0][1]
    answered: queue.Queue[str] = queue.Queue()
    with LocalBroker(extra_config="max_queued_messages 20\nsys_interval 1") as small_queues:
        with LocalPipeline(split3, broker=small_queues.address) as pipeline:
            script = connected(small_queues, "a-script")
            script.subscribe(pipeline.topics.predictions, lambda message: answered.put(
                Prediction.parse(message.payload).frame_id))
            for seq in range(frames):  # as fast as it can: far beyond what the stages take
                script.publish(pipeline.topics.stage_input(0),
                               encode_frame(Frame(f"s-{seq}", "script", seq, time.time(),
                                                  image=photo)), qos=1)
            # then one more at a time, each numbered on, until one is answered (the broker
            # drops them too while stage 0's queue is full): every frame before it has come
            # to stage 0 or been dropped by then
            for seq in range(frames, frames + 12):
                script.publish(pipeline.topics.stage_input(0),
                               encode_frame(Frame(f"s-{seq}", "script", seq, time.time(),
                                                  image=photo)), qos=1)
                try:
                    while answered.get(timeout=TIMEOUT / 12) != f"s-{seq}":
                        pass
                    break
                except queue.Empty:
                    continue
            script.stop()
        stats = collect_status(small_queues.address, pipeline.topics)["local-stage0"]["stats"]
        # the broker says what it dropped every second (sys_interval): wait for its count
        counts: queue.Queue[int] = queue.Queue()
        broker_side = connected(small_queues, "broker-side")
        broker_side.subscribe(BROKER_DROPPED, lambda message: counts.put(int(message.payload)))
        while counts.get(timeout=TIMEOUT) < stats["missed"]:
            pass
        broker_side.stop()
        view = read_pipeline(small_queues.address, pipeline.topics)
    # every number up to the last, answered, came to stage 0 or was counted missed
    assert stats["missed"] > 0
    assert stats["frames_in"] + stats["missed"] == seq + 1, (seq, stats)
    assert view.broker_dropped >= stats["missed"]
    assert (f"broker: {view.broker_dropped} messages dropped at its queue limits"
            in format_status(view, "local"))


@pytest.mark.parametrize("kill", [False, True], ids=["SIGTERM", "SIGKILL"])
def test_a_broker_restart_mid_stream_loses_no_frame(broker, split3, generated_frames, kill):
    """After a SIGKILL mosquitto forgets what it had not saved: cameras send such frames again."""
    frames = 40
    expected = {name: whole_model_top(split3, data) for name, data in generated_frames}
    seqs = []
    with LocalPipeline(split3, broker=broker.address, camera=QUICK_RESENDS) as pipeline:
        for count, (name, prediction) in enumerate(
            pipeline.predict(generated_frames, frames=frames, in_flight=6), start=1
        ):
            assert prediction.top == expected[name]
            seqs.append(prediction.seq)
            if count == 10:  # frames are in flight at every stage
                broker.stop(kill=kill)
                broker.start()
    assert sorted(seqs) == list(range(frames))


def test_a_stage_given_a_share_group_drops_its_earlier_plain_subscription(
    broker, split3, generated_frames
):
    """The broker keeps a stage's subscriptions: the old one would deliver every frame twice."""
    stages = [StageProcess(broker, split3, k, f"stage{k}") for k in range(3)]
    for index, stage in enumerate(stages):
        stage.wait_for_line(f"stage {index} ready")
    assert stages[1].stop() == 0
    stages[1] = StageProcess(broker, split3, 1, "stage1", "--share-group", "replicas")
    stages[1].wait_for_line("stage 1 ready")
    topics = Topics("chain")
    session = connected(broker, "camera")
    camera = Camera(session, topics, CameraConfig(name="cam"))
    assert camera.run(Stills(generated_frames)) == len(generated_frames)
    session.stop()
    assert camera.counters.get("answered") == len(generated_frames)
    assert all(stage.stop() == 0 for stage in stages)
    stats = collect_status(broker.address, topics)["stage1"]["stats"]
    assert stats["frames_in"] == len(generated_frames)
    assert stats["duplicates"] == 0
