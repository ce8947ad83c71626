"""Releases over the broker: `aiotedge node` daemons (real processes), `deploy`, a rolling
update under a camera at QoS 1, a node restarted mid-release, a release withdrawn and one that
lost a board replaced by hand as a self-healing coordinator does it (docs/fleet.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter

import pytest
from aiotedge_converter.fleet import Deployer, build_release, deploy

from aiotedge.contracts.release import Release, sha256_hex
from aiotedge.contracts.topics import Topics
from aiotedge.media.sources import Stills
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.mqtt.session import MqttSession, wait_settled
from aiotedge.tflite.graph import load_graph
from support.fleet import NODES, PIPELINE, Results, camera_for, deployer, expected_top1
from support.models import LABELS
from support.watch import retained_now

OTHER_LABELS = tuple(f"other-{label}" for label in reversed(LABELS))


def self_checks(broker, release: Release) -> dict[str, str]:
    """Node -> what its stage of `release` says, in its retained info, of its self-check on
    its reference at start ("" for a stage that ran none)."""
    topics = release.topics(Topics(PIPELINE))
    retained = retained_now(broker, topics)
    return {node: json.loads(retained[topics.info(f"{node}.{release.release}")]).get(
        "self_check", "") for node in release.nodes}


def test_deploy_serves_the_whole_models_answers_and_a_restarted_node_resumes_its_role(
        fleet, broker, test_models, generated_frames):
    model = test_models["int8"]
    done = deploy(deployer(broker), load_graph(model), "v1", labels=LABELS, timeout=120)
    release = done.release
    assert sorted(release.nodes) == sorted(NODES) and len(release.assignments) == 3
    # the deployer heard every node ready; this test's own subscriber hears it a moment later
    fleet.wait(lambda reports: {r.node: (r.release, r.state) for r in reports.values()} == {
        node: ("v1", "ready") for node in NODES}, "every node ready for v1")
    # every stage checked the segment its node cut on the reference that came with the release
    assert all(self_checks(broker, release).values()), self_checks(broker, release)

    results = Results(broker, fleet.topics)
    camera, session = camera_for(broker, "cam")
    assert camera.run(Stills(generated_frames)) == len(generated_frames)
    results.wait_for(lambda p: len(p) >= len(generated_frames))
    by_seq = {p.seq: p for p in results.predictions}
    for seq, (_, photo) in enumerate(generated_frames):
        assert by_seq[seq].release == "v1"
        assert by_seq[seq].top[0].name == expected_top1(model, release, photo)

    status = subprocess.run(
        [sys.executable, "-m", "aiotedge", "status", "--broker", str(broker.address),
         "--pipeline", PIPELINE], capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 0, status.stdout + status.stderr  # v1's 3 stages serve
    assert "live release: v1" in status.stdout
    for node in NODES:
        stage = release.role(node)
        assert f"node {node}: release v1 ready (stage {stage}, serving v1)" in status.stdout

    # a node killed mid-release comes back to its role from the retained release
    middle = release.assignments[1][0]
    fleet.processes[middle].send_signal(signal.SIGKILL)
    fleet.processes[middle].wait(30)
    fleet.start(middle)
    fleet.wait(lambda r: middle in r and (r[middle].release, r[middle].state,
                                          r[middle].stage) == ("v1", "ready", 1),
               "the restarted node serves stage 1 of v1 again")
    log = (fleet.cache / f"{middle}.log").read_text()
    assert log.count("fetching the model") == 1  # from its cache the second time
    assert camera.run(Stills(generated_frames)) == len(generated_frames)
    results.wait_for(lambda p: len(p) >= 2 * len(generated_frames))
    assert all(p.release == "v1" for p in results.predictions)
    assert not results.errors
    session.stop()
    results.session.stop()


def test_a_rolling_update_loses_no_frame_and_mixes_no_release(
        fleet, broker, test_models, generated_frames):
    v1_model, v2_model = test_models["int8"], test_models["float"]
    v1 = deploy(deployer(broker), load_graph(v1_model), "v1", labels=LABELS,
                timeout=120).release
    results = Results(broker, fleet.topics)
    camera, session = camera_for(broker, "cam", fps=20)
    stop = threading.Event()
    sent: list[int] = []
    feeding = threading.Thread(
        target=lambda: sent.append(camera.run(Stills(generated_frames, loop=True), stop=stop)))
    feeding.start()
    results.wait_for(lambda p: len(p) >= 5)  # v1 serves the camera

    v2 = deploy(deployer(broker), load_graph(v2_model), "v2", labels=OTHER_LABELS,
                timeout=120).release
    assert v2.split().labels == OTHER_LABELS
    results.wait_for(lambda p: sum(x.release == "v2" for x in p) >= 5)  # v2 serves now
    stop.set()
    feeding.join(60)
    published = camera.counters.get("published")
    expected = {camera.frame_id(seq) for seq in range(published)}
    results.wait_for(lambda p: expected <= {x.frame_id for x in p})  # 0 lost

    releases = {"v1": (v1, v1_model), "v2": (v2, v2_model)}
    photos = [photo for _, photo in generated_frames]
    frame_ids = [p.frame_id for p in results.predictions]
    assert len(frame_ids) == len(set(frame_ids)) == published  # each answered once
    for prediction in results.predictions:  # every one made by one release, end to end
        release, model = releases[prediction.release]
        photo = photos[prediction.seq % len(photos)]
        assert prediction.top[0].name == expected_top1(model, release, photo), prediction
    order = [p.release for p in sorted(results.predictions, key=lambda p: p.seq)]
    assert order == sorted(order)  # v1 until the switch, v2 after it
    assert not results.errors

    # v1 drains, then its stages stop: the nodes serve v2 alone
    fleet.wait(lambda r: all(r[n].serving == ("v2",) for n in NODES), "v1 stopped")
    v1_topics = v1.topics(fleet.topics)
    left = {t for t in retained_now(broker, v1_topics) if t.startswith(v1_topics.base)}
    assert left <= {v1_topics.pipeline_availability}, left  # its stages' messages cleared
    session.stop()
    results.session.stop()


def test_a_node_refuses_a_release_it_cannot_run_and_the_live_one_stays(
        fleet, broker, test_models):
    model = test_models["int8"]
    deploy(deployer(broker), load_graph(model), "v1", labels=LABELS, timeout=120)
    graph = load_graph(model)
    from aiotedge_converter import fleet as fleet_module
    from aiotedge_converter.fleet import DeployError

    original = fleet_module.min_runtime
    fleet_module.min_runtime = lambda _graph: "999.0"
    try:
        with pytest.raises(DeployError, match="runtime too old"):
            deploy(deployer(broker), graph, "v2", labels=LABELS, timeout=120)
    finally:
        fleet_module.min_runtime = original
    # withdrawn: the nodes follow v1 alone again, which stays live
    fleet.wait(lambda r: all(r[n].release == "v1" and r[n].state == "ready" for n in NODES),
               "back on v1")


def test_a_split_folder_deploys_as_it_is_and_its_chunks_stay_under_the_pipeline(
        fleet, broker, test_models, split3):
    done = deploy(deployer(broker), split3.directory, "v1", nodes=3, timeout=120)
    # every node cut the segment the split wrote (its sha256) and serves it, checked on the
    # split's reference files, which came with the release
    assert done.release.split().stages == split3.stages
    assert all(self_checks(broker, done.release).values()), self_checks(broker, done.release)
    assert done.release.split().labels == LABELS == split3.labels
    assert all(len(nodes) == 1 for nodes in done.release.assignments)
    topics = fleet.topics
    retained = retained_now(broker, topics)
    release = Release.parse(retained[f"{topics.release_plan}/v1"])
    assert json.loads(retained[topics.live_release])["release"] == "v1"
    session = MqttSession(broker.address, "chunk-reader")
    session.start()
    assert session.wait_connected(10)
    from aiotedge.nodes.mqtt.session import read_retained

    chunks = read_retained(session, [topics.model_chunk(c) for c in release.chunks],
                           topics.probe("chunk-reader"))
    session.stop()
    model = release.assemble({t.rsplit("/", 1)[-1]: p for t, p in chunks.items()})
    assert model == test_models["int8"].read_bytes()
    assert os.path.getsize(test_models["int8"]) == release.model_bytes


def test_a_node_refuses_a_release_whose_chunk_has_a_bad_hash(fleet, broker, test_models):
    from aiotedge_converter.fleet import build_release

    graph = load_graph(test_models["int8"])
    release, _chunks = build_release(graph, "tampered", [fleet.reports[n] for n in NODES],
                                     labels=LABELS, kind="classification")
    forger = MqttSession(broker.address, "forger")
    forger.start()
    assert forger.wait_connected(10)
    topics = fleet.topics
    forger.publish(topics.model_chunk(release.chunks[0]), b"not the model", 1,
                   retain=True).wait_for_publish(10)
    forger.publish(f"{topics.release_plan}/tampered", release.to_json(), 1,
                   retain=True).wait_for_publish(10)
    forger.stop()
    fleet.wait(lambda r: all(r[n].release == "tampered" and r[n].state == "refused"
                             and "bad hash" in r[n].reason for n in NODES), "refused")


def test_a_node_refuses_a_release_whose_reference_chunk_has_a_bad_hash_and_the_live_one_stays(
        fleet, broker, test_models):
    v1 = deploy(deployer(broker), load_graph(test_models["int8"]), "v1", labels=LABELS,
                timeout=120).release
    v2, chunks = build_release(load_graph(test_models["float"]), "v2",
                               [fleet.reports[n] for n in NODES], labels=LABELS,
                               kind="classification")
    assert v2.references and not set(v2.reference_chunks) & set(v1.reference_chunks)
    forger = MqttSession(broker.address, "forger")
    forger.start()
    assert forger.wait_connected(10)
    topics = fleet.topics
    for chunk in chunks[:len(v2.chunks)]:  # the model's chunks as they are
        forger.publish(topics.model_chunk(sha256_hex(chunk)), chunk, 1,
                       retain=True).wait_for_publish(10)
    for digest in v2.reference_chunks:
        forger.publish(topics.model_chunk(digest), b"not the reference", 1,
                       retain=True).wait_for_publish(10)
    forger.publish(f"{topics.release_plan}/v2", v2.to_json(), 1,
                   retain=True).wait_for_publish(10)
    forger.stop()
    fleet.wait(lambda r: all(
        (r[n].release, r[n].state, r[n].serving) == ("v2", "refused", ("v1",))
        and "reference" in r[n].reason and "bad hash" in r[n].reason for n in v2.nodes),
        "v2 refused for its reference, v1 served still")
    assert json.loads(retained_now(broker, topics)[topics.live_release])["release"] == "v1"


def test_a_node_left_over_serves_as_a_replica_of_a_stage(fleet, broker, test_models,
                                                          generated_frames):
    fleet.start("n4")
    fleet.wait(lambda r: "n4" in r, "n4 announced")
    model = test_models["int8"]
    release = deploy(deployer(broker), load_graph(model), "v1", labels=LABELS, stages=3,
                     nodes=4, timeout=120).release
    replicated = [k for k, nodes in enumerate(release.assignments) if len(nodes) == 2]
    assert len(replicated) == 1 and sorted(release.nodes) == [*NODES, "n4"]
    results = Results(broker, fleet.topics)
    camera, session = camera_for(broker, "cam", in_flight=8)
    photos = generated_frames * 4
    assert camera.run(Stills(photos)) == len(photos)
    results.wait_for(lambda p: len(p) >= len(photos))
    assert len({p.frame_id for p in results.predictions}) == len(photos)
    for prediction in results.predictions:
        assert prediction.top[0].name == expected_top1(model, release,
                                                       photos[prediction.seq][1])
    assert not results.errors
    session.stop()
    results.session.stop()


def feed(camera: Camera, photos: list[tuple[str, bytes]]) -> tuple[threading.Thread,
                                                                   threading.Event]:
    """The camera sending the photos in a loop until the event is set."""
    stop = threading.Event()
    feeding = threading.Thread(target=camera.run, args=(Stills(photos, loop=True),),
                               kwargs={"stop": stop})
    feeding.start()
    return feeding, stop


def test_a_withdrawn_release_stops_at_once_under_a_steady_camera(
        fleet, broker, test_models, generated_frames):
    """A drain waits for the frames to stop coming, which they never do while the pointer
    stays: withdrawn, the release stops at once, and what is sent to it then is left alone."""
    v1 = deploy(deployer(broker), load_graph(test_models["int8"]), "v1", labels=LABELS,
                timeout=120).release
    results = Results(broker, fleet.topics)
    camera, session = camera_for(broker, "cam", fps=20, in_flight=4, frame_timeout=3600)
    feeding, stop = feed(camera, generated_frames)
    results.wait_for(lambda p: len(p) >= 3)  # v1 serves the camera

    with Deployer(deployer(broker), "withdrawer") as withdrawer:
        withdrawer.withdraw("v1")
    fleet.wait(lambda r: all("v1" not in r[n].serving for n in NODES), "v1 stopped at once",
               timeout=60)
    stop.set()
    feeding.join(60)
    wait_settled(results.session, fleet.topics.probe("results"))  # v1's last answers are in
    answered = {p.frame_id for p in results.predictions}
    seq = camera.counters.get("published")
    late = camera.publish(seq, next(Stills(generated_frames).frames(threading.Event())))
    wait_settled(results.session, fleet.topics.probe("results"))
    assert late not in {p.frame_id for p in results.predictions}
    assert {p.frame_id for p in results.predictions} == answered
    assert camera.waiting >= 1  # the camera's to send again, to the release after
    assert camera.counters.get("resent") == 0

    v1_topics = v1.topics(fleet.topics)
    left = {t for t in retained_now(broker, v1_topics) if t.startswith(v1_topics.base)}
    assert left <= {v1_topics.pipeline_availability}, left  # its stages' messages cleared
    session.stop()
    results.session.stop()


def test_a_release_that_lost_a_board_is_replaced_and_the_camera_resends_at_once(
        fleet, broker, test_models, generated_frames):
    """The switch a self-healing coordinator makes, by hand: a release for the nodes left,
    ready; the old one withdrawn and stopped on every node left; then the pointer, with
    `resend`. The camera's timeout is far beyond this test's waits: its frames come back
    because the pointer said so, each answered once, none lost."""
    model = test_models["int8"]
    v1 = deploy(deployer(broker), load_graph(model), "v1", labels=LABELS, timeout=120).release
    results = Results(broker, fleet.topics)
    camera, session = camera_for(broker, "cam", fps=20, in_flight=6, frame_timeout=3600)
    feeding, stop = feed(camera, generated_frames)
    results.wait_for(lambda p: len(p) >= 5)  # v1 serves the camera

    lost = v1.assignments[1][0]
    fleet.processes[lost].send_signal(signal.SIGKILL)
    fleet.processes[lost].wait(30)
    left = [node for node in NODES if node != lost]
    with Deployer(deployer(broker), "healer") as healer:
        v2, chunks = build_release(load_graph(model), "v2", [fleet.reports[n] for n in left],
                                   labels=LABELS, kind="classification")
        healer.publish_release(v2, chunks)
        healer.wait_ready(v2, 120)
        healer.withdraw(v1.release)
        fleet.wait(lambda r: all(v1.release not in r[n].serving for n in left),
                   "v1 stopped on the nodes left", timeout=60)
        healer.go_live(v2, resend=True)
    results.wait_for(lambda p: sum(x.release == "v2" for x in p) >= 10)
    stop.set()
    feeding.join(60)

    published = camera.counters.get("published")
    expected = {camera.frame_id(seq) for seq in range(published)}
    results.wait_for(lambda p: expected <= {x.frame_id for x in p})  # 0 lost
    wait_settled(results.session, fleet.topics.probe("results"))
    answers = Counter(p.frame_id for p in results.predictions)
    assert set(answers) == expected and set(answers.values()) == {1}  # each answered once
    releases = {"v1": v1, "v2": v2}
    photos = [photo for _, photo in generated_frames]
    for prediction in results.predictions:
        photo = photos[prediction.seq % len(photos)]
        assert prediction.top[0].name == expected_top1(model, releases[prediction.release],
                                                       photo), prediction
    assert camera.counters.get("resent") > 0  # at once: its timeout is an hour
    assert camera.counters.get("unanswered") == 0
    session.stop()
    results.session.stop()
