"""The dispatch on a real mosquitto with real segments: frames go to the replica of stage 0 that
has room. A slow board gets what it has room for and no more, a board that stops or dies gets
no more frames, a board that joins gets its share, and frames any client publishes to stage 0's
topic still go through. The bookkeeping alone, on fakes: test_dispatch.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import CameraConfig, PipelineConfig, StageConfig, StatsConfig
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import Topics
from aiotedge.contracts.wire import Frame, encode_frame
from aiotedge.media.sources import Stills
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.daemons.stage import StageNode, stage_session
from aiotedge.nodes.mqtt.session import MqttSession, wait_settled
from aiotedge.tflite.runtime import Segment, open_segment
from tests.test_faults import StageProcess

#: bound for one awaited event; never a synchronisation
TIMEOUT = 60.0
#: StageProcess's pipeline
TOPICS = Topics("chain")


class GatedSegment:
    """A real segment that waits for its gate before each frame: a board as slow as a test
    wants it."""

    def __init__(self, segment: Segment) -> None:
        self._segment = segment
        self.path = segment.path
        self.gate = threading.Event()

    def run(self, tensor):
        assert self.gate.wait(TIMEOUT)
        return self._segment.run(tensor)


class Cluster:
    """Stage daemons of a split in this process: stage 0 replicated, stages 1.. alone."""

    def __init__(self, broker, manifest: Manifest) -> None:
        self.broker = broker
        self.manifest = manifest
        self.nodes: dict[str, StageNode] = {}

    def start(self, node: str, index: int, share_group: str = "", gated: bool = False
              ) -> StageNode:
        config = NodeConfig(broker=self.broker.address, pipeline=PipelineConfig(name="chain"),
                            stage=StageConfig(manifest=str(self.manifest.directory), index=index,
                                              node=node, share_group=share_group, queue_size=2,
                                              threads=1),
                            stats=StatsConfig(interval=0))
        segment = open_segment(self.manifest, index, 1)
        stage = StageNode(config, self.manifest, stage_session(config),
                          GatedSegment(segment) if gated else segment)
        stage.start()
        assert stage.session.wait_connected(TIMEOUT)
        stage.serve()
        stage.announce_online()
        self.nodes[node] = stage
        return stage

    def stop(self, node: str) -> None:
        self.nodes.pop(node).stop()

    def stop_all(self) -> None:
        for node in list(self.nodes):
            self.stop(node)


@pytest.fixture
def cluster(broker, split3) -> Iterator[Cluster]:
    running = Cluster(broker, split3)
    for index in (1, 2):
        running.start(f"stage{index}", index)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def camera(broker) -> Iterator[Camera]:
    session = MqttSession(broker.address, "camera-cam")
    session.start()
    assert session.wait_connected(TIMEOUT)
    yield Camera(session, TOPICS, CameraConfig(name="cam", in_flight=4, frame_timeout=600.0))
    session.stop()


def frames_in(stage: StageNode) -> int:
    return stage.counters.get("frames_in")


def test_a_slow_board_gets_what_it_has_room_for_and_the_free_one_the_rest(
        cluster, camera, generated_frames):
    fast = cluster.start("fast", 0, "g")
    slow = cluster.start("slow", 0, "g", gated=True)
    assert camera.dispatch.book.wait_serving({"fast", "slow"}, TIMEOUT)
    photos = (generated_frames * 3)[:12]
    sent: list[int] = []
    running = threading.Thread(target=lambda: sent.append(camera.run(Stills(photos))))
    running.start()
    with camera._changed:  # the camera's own notice of each result
        assert camera._changed.wait_for(
            lambda: camera.counters.get("answered") == len(photos) - 2, TIMEOUT)
    # the slow board holds the two frames it had room for (the second one perhaps still unread,
    # behind the first on its connection); every other one went to the free board
    assert frames_in(fast) == len(photos) - 2
    slow.segment.gate.set()
    running.join(TIMEOUT)
    assert sent == [len(photos)] and camera.counters.get("answered") == len(photos)
    assert frames_in(slow) == 2
    assert cluster.nodes["stage2"].counters.get("duplicates") == 0


def test_a_board_that_stops_or_dies_gets_no_more_frames_and_one_that_joins_gets_its_share(
        broker, split3, cluster, camera, generated_frames):
    first = cluster.start("first", 0, "g")
    died = StageProcess(broker, split3, 0, "died", "--share-group", "g", "--queue-size", "2")
    died.wait_for_line("stage 0 ready")
    leaving = cluster.start("leaving", 0, "g")
    assert camera.dispatch.book.wait_serving({"first", "died", "leaving"}, TIMEOUT)
    died.process.kill()  # no goodbye: its Last Will says it is offline
    died.process.wait(TIMEOUT)
    cluster.stop("leaving")
    assert camera.dispatch.book.wait_serving({"first"}, TIMEOUT)
    photos = generated_frames[:6]
    assert camera.run(Stills(photos)) == len(photos)
    assert (frames_in(first), frames_in(leaving)) == (len(photos), 0)
    joined = cluster.start("joined", 0, "g")
    assert camera.dispatch.book.wait_serving({"first", "joined"}, TIMEOUT)
    assert camera.run(Stills(photos)) == len(photos)
    assert frames_in(joined) >= 1 and frames_in(first) + frames_in(joined) == 2 * len(photos)
    assert camera.counters.get("answered") == 2 * len(photos)


def test_a_sender_that_starts_after_the_replicas_knows_their_room_at_once(broker, cluster):
    """A stage or camera that starts later must not send everything to the first replica it
    hears from until the others speak again: the room is retained."""
    cluster.start("a", 0, "g")
    cluster.start("b", 0, "g")
    session = MqttSession(broker.address, "camera-late")
    late = Camera(session, TOPICS, CameraConfig(name="late"))
    session.start()
    assert session.wait_connected(TIMEOUT)
    try:
        wait_settled(session, TOPICS.probe("camera-late"))  # its retained messages are in
        assert late.dispatch.book.serving() == {"a", "b"}
    finally:
        session.stop()


def test_frames_a_foreign_client_publishes_to_stage_0_still_go_through(
        broker, cluster, generated_frames):
    replicas = [cluster.start(name, 0, "g") for name in ("a", "b")]
    answered = threading.Semaphore(0)
    client = MqttSession(broker.address, "foreign")
    client.subscribe(TOPICS.predictions, lambda _message: answered.release(), qos=1)
    client.start()
    assert client.wait_connected(TIMEOUT)
    for seq, (name, photo) in enumerate(generated_frames[:4]):
        frame = Frame(f"foreign-{seq}", "foreign", seq, 1.0, name=name, image=photo)
        client.publish(TOPICS.stage_input(0), encode_frame(frame), qos=1)
    try:
        assert all(answered.acquire(timeout=TIMEOUT) for _ in range(4))
    finally:
        client.stop()
    assert sum(frames_in(replica) for replica in replicas) == 4
