"""Releases over the broker: `aiotedge node` daemons (real processes), `deploy`, a rolling
update under a camera at QoS 1, a node restarted mid-release (docs/fleet.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace

import pytest
from aiotedge_converter.fleet import deploy

from aiotedge.contracts.release import Release
from aiotedge.media.sources import Stills
from aiotedge.nodes.mqtt.session import MqttSession
from aiotedge.tflite.graph import load_graph
from support.fleet import NODES, PIPELINE, Results, camera_for, deployer, expected_top1
from support.models import LABELS

OTHER_LABELS = tuple(f"other-{label}" for label in reversed(LABELS))


def test_deploy_serves_the_whole_models_answers_and_a_restarted_node_resumes_its_role(
        fleet, broker, test_models, generated_frames):
    model = test_models["int8"]
    done = deploy(deployer(broker), load_graph(model), "v1", labels=LABELS, timeout=120)
    release = done.release
    assert sorted(release.nodes) == sorted(NODES) and len(release.assignments) == 3
    # the deployer heard every node ready; this test's own subscriber hears it a moment later
    fleet.wait(lambda reports: {r.node: (r.release, r.state) for r in reports.values()} == {
        node: ("v1", "ready") for node in NODES}, "every node ready for v1")

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
    from support.watch import retained_now

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
    from support.watch import retained_now

    done = deploy(deployer(broker), split3.directory, "v1", nodes=3, timeout=120)
    # every node cut the segment the split wrote (its sha256) and serves it; the references
    # stay behind (a node has no file to check against, docs/fleet.md)
    assert done.release.split().stages == tuple(replace(stage, reference=None)
                                                for stage in split3.stages)
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
