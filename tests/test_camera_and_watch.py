"""The camera node and `aiotedge watch`, against a real broker."""

from __future__ import annotations

import subprocess
import sys
import threading

import paho.mqtt.client as mqtt

from aiotedge.config.sections import CameraConfig
from aiotedge.contracts.events import Prediction, Score, StageTiming
from aiotedge.contracts.release import LiveRelease, ReleaseTopics
from aiotedge.contracts.topics import Topics
from aiotedge.contracts.wire import decode_photo
from aiotedge.media.sources import Stills
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.mqtt.session import MqttSession, wait_settled
from support.stages import AnsweringStage
from support.watch import Recorder


def connected(broker, client_id: str) -> MqttSession:
    session = MqttSession(broker.address, client_id)
    session.start()
    assert session.wait_connected(10)
    return session


def test_camera_at_a_frame_rate_publishes_every_photo_in_order_and_loops(
    broker, generated_frames
):
    pipeline = AnsweringStage(broker, "cams")
    session = connected(broker, "camera")
    camera = Camera(session, pipeline.topics, CameraConfig(name="porch", fps=200))
    count = len(generated_frames) + 2
    assert camera.run(Stills(generated_frames, loop=True), frames=count) == count  # and results
    session.stop()
    pipeline.stop()
    received = [decode_photo(payload) for payload in pipeline.frames]
    assert [f.seq for f in received] == list(range(count))
    assert {f.source for f in received} == {"porch"}
    assert [f.image for f in received] == [data for _, data in generated_frames] + [
        generated_frames[0][1], generated_frames[1][1]
    ]
    assert len({f.frame_id for f in received}) == count
    assert camera.counters.get("answered") == count


def prediction(frame_id: str, seq: int) -> str:
    return Prediction(frame_id, "cam0", seq, 1.0, [Score(3, "cat", 0.75)], 12.5,
                      [StageTiming(0, 0.5, 10.0)]).to_json()


def test_watch_prints_each_prediction_once_and_survives_junk(broker):
    watch = subprocess.Popen(
        [sys.executable, "-m", "aiotedge", "-v", "watch", "--broker", str(broker.address),
         "--pipeline", "home", "--count", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    publisher = connected(broker, "last-stage")
    topics = Topics("home")
    for line in watch.stderr:  # wait for the broker's SUBACK (logged at debug level)
        if "subscribed to aiotedge/home/predictions" in line:
            break
    for junk in (b"{}", b"[" * 100_000, b"\xff"):  # someone else's messages: ignored
        publisher.publish(topics.predictions, junk, qos=1)
    for frame_id, seq in (("a", 0), ("a", 0), ("b", 1)):  # a duplicate of "a" after a crash
        publisher.publish(topics.predictions, prediction(frame_id, seq), qos=1)
    out, _ = watch.communicate(timeout=30)
    publisher.stop()
    assert watch.returncode == 0
    assert out.splitlines() == ["cam0#0 cat 0.750 12.5 ms", "cam0#1 cat 0.750 12.5 ms"]


def test_the_final_stats_say_whether_the_source_ended_or_the_camera_stopped(
    broker, generated_frames
):
    pipeline = AnsweringStage(broker, "final")
    session = connected(broker, "camera-final")
    camera = Camera(session, pipeline.topics, CameraConfig(name="final"))
    assert camera.stats_snapshot()["source_state"] == "reading"
    camera.run(Stills(generated_frames))  # to the last photo
    ended = camera.stats_snapshot()
    camera.run(Stills(generated_frames, loop=True), frames=2)  # stopped after two
    stopped = camera.stats_snapshot()
    session.stop()
    pipeline.stop()
    assert ended["source_state"] == "ended" and ended["published"] == len(generated_frames)
    assert stopped["source_state"] == "stopped"


def session_kept(broker, client_id: str) -> bool:
    """Whether the broker still holds a session for `client_id` (CONNACK's session present,
    to a connection that asks to resume it; which then ends it)."""
    present = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.on_connect = lambda _c, _u, flags, _rc, _p: present.append(flags.session_present)
    client.connect(broker.address.host, broker.address.port, clean_start=False)
    while not present:
        client.loop(timeout=1.0)
    client.disconnect()
    return present[0]


def test_a_camera_that_exits_leaves_no_session_behind(broker, generated_photos):
    """Its session queued up to 1,000 predictions and events for nobody (4,133 dropped in one
    run): its next run numbers its frames anew and cannot use them."""
    pipeline = AnsweringStage(broker, "cams")
    camera = subprocess.run(
        [sys.executable, "-m", "aiotedge", "camera", "--source", str(generated_photos),
         "--frames", "2", "--broker", str(broker.address), "--pipeline", "cams",
         "--name", "porch"], capture_output=True, text=True, timeout=120, check=False)
    pipeline.stop()
    assert camera.returncode == 0, camera.stderr
    assert not session_kept(broker, "camera-porch")


def moved_pointer(broker, generated_frames, resend: bool, stop: threading.Event
                  ) -> tuple[Camera, AnsweringStage, threading.Thread]:
    """A camera (an hour's timeout) with its 3 frames in flight to a chain that answers
    nothing, when the live pointer moves to release r2, whose stage 0 answers."""
    topics = Topics("moving")
    silent = Recorder(broker, [topics.stage_input(0)])
    r2 = AnsweringStage(broker, "moving", topics=ReleaseTopics("moving", release="r2"))
    session = connected(broker, "camera-mover")
    camera = Camera(session, topics, CameraConfig(name="mover", in_flight=3, frame_timeout=3600))
    feeding = threading.Thread(target=camera.run, args=(Stills(generated_frames),),
                               kwargs={"frames": 3, "stop": stop}, daemon=True)
    feeding.start()
    silent.wait_for(lambda messages: len(messages) == 3)
    deployer = connected(broker, "deployer")
    deployer.publish(topics.live_release, LiveRelease("r2", resend=resend).to_json(), qos=1,
                     retain=True).wait_for_publish(10)
    deployer.stop()
    silent.session.stop()
    return camera, r2, feeding


def test_a_pointer_moving_with_resend_sends_the_frames_in_flight_again_at_once(
        broker, generated_frames):
    camera, r2, feeding = moved_pointer(broker, generated_frames, True, threading.Event())
    feeding.join(60)  # each answered by r2, long before the timeout
    assert not feeding.is_alive()
    assert camera.counters.get("resent") == 3 and camera.counters.get("answered") == 3
    assert sorted(decode_photo(p).attempt for p in r2.frames) == [2, 2, 2]
    camera.session.stop()
    r2.stop()


def test_a_pointer_moving_without_resend_sends_nothing_again(broker, generated_frames):
    """A rolling update: the release before drains, its answers are still to come."""
    stop = threading.Event()
    camera, r2, feeding = moved_pointer(broker, generated_frames, False, stop)
    wait_settled(camera.session, Topics("moving").probe("camera-mover"))  # the pointer is in
    assert camera.counters.get("resent") == 0 and camera.waiting == 3
    stop.set()
    feeding.join(60)
    camera.session.stop()
    r2.stop()
    assert r2.frames == []
