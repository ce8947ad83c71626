"""converter/fleet.py builds a release with each stage's reference as chunks of its own (from a
model split on the spot, or a split folder's files), and clears, with an old release, the
reference chunks only it used (docs/fleet.md)."""

from __future__ import annotations

import shutil

import pytest
from aiotedge_converter.fleet import Deployer, DeployError, build_release, folder_release

from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import PipelineConfig
from aiotedge.contracts.release import NodeReport, Release, sha256_hex
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.mqtt.session import MqttSession, read_retained
from aiotedge.tflite.graph import load_graph
from support.models import LABELS

PIPELINE = "yard"
NODES = [NodeReport(node=f"n{i}", architecture="x86_64", runtime="ai-edge-litert",
                    runtime_version="1.0", memory_mb=4096, available_mb=2048,
                    mmacs_per_s=1000.0, cpus=4, version="test") for i in (1, 2, 3)]


def by_digest(chunks: list[bytes]) -> dict[str, bytes]:
    return {sha256_hex(chunk): chunk for chunk in chunks}


def test_a_models_release_carries_each_stages_reference_in_chunks_of_its_own(test_models):
    release, chunks = build_release(load_graph(test_models["int8"]), "v1", NODES,
                                    labels=LABELS, kind="classification", stages=3,
                                    chunk_bytes=1000)
    stages = release.split().stages
    assert len(stages) == 3 and all(stage.reference is not None for stage in stages)
    assert len(release.references) == 3 and all(release.references)
    assert any(len(stage) > 1 for stage in release.references)  # larger than a chunk: split
    assert all(len(chunk) <= 1000 for chunk in chunks)
    published = by_digest(chunks)
    assert set(published) == {*release.chunks, *release.reference_chunks}
    for index, stage in enumerate(stages):
        data = release.reference(index, published)
        assert data is not None and sha256_hex(data) == stage.reference.sha256
    again = Release.parse(release.to_json())
    assert again.references == release.references


def test_a_split_folders_release_carries_its_reference_files(split3):
    release, chunks = folder_release(split3.directory, "v1", NODES, kind="classification")
    assert release.split().stages == split3.stages  # the references stay in its manifest
    published = by_digest(chunks)
    for index, stage in enumerate(split3.stages):
        assert release.reference(index, published) == \
            (split3.directory / stage.reference.file).read_bytes()


def test_a_split_folder_whose_reference_is_not_its_manifests_is_refused(split3, tmp_path):
    folder = shutil.copytree(split3.directory, tmp_path / "split")
    (folder / split3.stages[1].reference.file).write_bytes(b"other bytes")
    with pytest.raises(DeployError, match=r"stage 1's reference .*\(bad sha256\)"):
        folder_release(folder, "v1", NODES, kind="classification")
    (folder / split3.stages[1].reference.file).unlink()
    with pytest.raises(DeployError, match="stage 1's reference"):
        folder_release(folder, "v1", NODES, kind="classification")


def test_forget_old_clears_the_reference_chunks_only_the_old_release_used(broker, test_models):
    graph = load_graph(test_models["int8"])
    old, old_chunks = build_release(graph, "v1", NODES, labels=LABELS,
                                    kind="classification", stages=3)
    new, new_chunks = build_release(graph, "v2", NODES, labels=LABELS,
                                    kind="classification", stages=2)
    only_old = set(old.reference_chunks) - set(new.reference_chunks)
    assert only_old and new.reference_chunks
    topics = Topics(PIPELINE)
    config = NodeConfig(broker=broker.address, pipeline=PipelineConfig(name=PIPELINE))
    with Deployer(config) as deployer:
        deployer.publish_release(old, old_chunks)
        deployer.publish_release(new, new_chunks)
        with deployer._changed:  # it follows the releases it published
            assert deployer._changed.wait_for(
                lambda: {"v1", "v2"} <= set(deployer._releases), 30)
        deployer.forget_old({"v2"})
    reader = MqttSession(broker.address, "reader")
    reader.start()
    assert reader.wait_connected(10)
    try:
        retained = read_retained(reader, [topics.model_chunk("+"), f"{topics.release_plan}/+"],
                                 topics.probe("reader"))
    finally:
        reader.stop()
    chunk = topics.model_chunk
    assert not {chunk(digest) for digest in only_old} & set(retained)
    assert {chunk(digest) for digest in (*new.chunks, *new.reference_chunks)} <= set(retained)
    assert f"{topics.release_plan}/v1" not in retained

