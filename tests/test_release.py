"""contracts/release.py: a release, the live pointer and a node's report, read from the
network with every field checked; the chunks put back together with every hash checked."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from aiotedge.contracts.errors import ReleaseError
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.release import (
    LiveRelease,
    NodeReport,
    Release,
    ReleaseTopics,
    sha256_hex,
    split_chunks,
)
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.daemons.node import runtime_at_least

MODEL = bytes(range(256)) * 5  # 1280 bytes


def reference_chunks(manifest: Manifest) -> list[list[bytes]]:
    """Each stage's reference file in chunks of 500 bytes."""
    return [split_chunks((manifest.directory / stage.reference.file).read_bytes(), 500)
            if stage.reference else [] for stage in manifest.stages]


def release_of(manifest: Manifest, **changes) -> Release:
    data = {**manifest.to_dict()}
    data["source"] = {**data["source"], "sha256": sha256_hex(MODEL)}
    chunks = split_chunks(MODEL, 500)
    references = tuple(tuple(sha256_hex(c) for c in stage)
                       for stage in reference_chunks(manifest))
    fields = dict(release="v1", kind="classification", model_file="m.tflite",
                  model_sha256=sha256_hex(MODEL), model_bytes=len(MODEL), chunk_bytes=500,
                  chunks=tuple(sha256_hex(c) for c in chunks), manifest=data,
                  assignments=(("a",), ("b", "c"), ("d",)), references=references)
    return Release(**{**fields, **changes})


def test_a_release_reads_back_as_it_was_written(split3):
    release = release_of(split3)
    again = Release.parse(release.to_json())
    assert again == release
    assert again.role("c") == 1 and again.role("z") is None
    assert again.share_group(1) == "v1-stage1" and again.share_group(0) == ""
    assert again.split().stages == split3.stages


@pytest.mark.parametrize(("change", "reason"), [
    ({"release": "a/b"}, "one topic level"),
    ({"kind": "poetry"}, "unknown model kind"),
    ({"model_sha256": "XYZ"}, "sha256"),
    ({"chunk_bytes": 100}, "cannot hold"),
    ({"model_bytes": 0}, "out of range"),
    ({"assignments": (("a",), ("b",))}, "2 stage assignments for 3 stages"),
    ({"assignments": (("a",), ("a",), ("d",))}, "serves two stages"),
    ({"assignments": (("a",), (), ("d",))}, "every stage needs nodes"),
])
def test_a_release_that_cannot_be_used_is_refused_with_the_reason(split3, change, reason):
    with pytest.raises(ReleaseError, match=reason):
        release_of(split3, **change)


@pytest.mark.parametrize("payload", [b"", b"[]", b"\xff", b'{"version": 1}', b'{"version": 9}',
                                     b"[" * 100_000])
def test_what_is_not_a_release_is_refused_not_raised_otherwise(payload):
    with pytest.raises(ReleaseError):
        Release.parse(payload)


def test_a_split_that_is_not_the_releases_model_is_refused(split3):
    data = json.loads(release_of(split3).to_json())
    data["manifest"]["source"]["sha256"] = "0" * 64
    with pytest.raises(ReleaseError, match="not the release's model"):
        Release.parse(json.dumps(data))


def test_the_model_comes_back_from_its_chunks_and_a_bad_one_is_named(split3):
    release = release_of(split3)
    chunks = {sha256_hex(c): c for c in split_chunks(MODEL, 500)}
    assert release.assemble(chunks) == MODEL
    bad = dict(chunks)
    bad[release.chunks[1]] = b"x" * 500
    with pytest.raises(ReleaseError, match="chunk 1: bad hash"):
        release.assemble(bad)
    del bad[release.chunks[1]]
    with pytest.raises(ReleaseError, match=r"chunk 1 .* is missing"):
        release.assemble(bad)


def test_a_stages_reference_comes_back_from_its_chunks_and_a_bad_one_is_named(split3):
    release = release_of(split3)
    files = reference_chunks(split3)
    assert all(len(stage) > 1 for stage in files)  # a reference larger than a chunk is split
    chunks = {sha256_hex(c): c for stage in files for c in stage}
    for index, stage in enumerate(split3.stages):
        data = release.reference(index, chunks)
        assert data == (split3.directory / stage.reference.file).read_bytes()
    bad = {**chunks, release.references[2][0]: b"other bytes"}
    with pytest.raises(ReleaseError, match="stage 2's reference: chunk 0: bad hash"):
        release.reference(2, bad)
    forged = replace(split3.stages[1], reference=replace(split3.stages[1].reference,
                                                         sha256="0" * 64))
    lying = release_of(replace(split3, stages=(split3.stages[0], forged, split3.stages[2])))
    with pytest.raises(ReleaseError, match=r"stage 1's reference put together .* bad hash"):
        lying.reference(1, chunks)


def test_a_release_from_a_deployer_before_references_travelled_still_reads(split3):
    """Its manifest names no reference and it lists no reference chunks: its stages start
    unchecked, as before."""
    unreferenced = replace(split3, stages=tuple(replace(stage, reference=None)
                                                for stage in split3.stages))
    data = json.loads(release_of(unreferenced, references=()).to_json())
    assert "references" not in data
    old = Release.parse(json.dumps(data))
    assert old.references == () and old.reference_chunks == ()
    assert old.reference(1, {}) is None


@pytest.mark.parametrize("references", [(), (("0" * 64,),) * 2, ((), ("0" * 64,), ())])
def test_a_release_whose_reference_chunks_do_not_match_its_split_is_refused(split3, references):
    with pytest.raises(ReleaseError, match="reference chunks do not match"):
        release_of(split3, references=references)


def test_a_release_has_a_chain_of_its_own_and_answers_on_the_pipelines_topics():
    pipeline = Topics("yard")
    topics = ReleaseTopics("yard", release="v2")
    assert topics.stage_input(0) == "aiotedge-frames/yard/release/v2/stage/0"
    assert topics.info("n1.v2") == "aiotedge/yard/release/v2/info/n1.v2"
    assert topics.availability("n1.v2") == "aiotedge/yard/release/v2/availability/n1.v2"
    assert (topics.predictions, topics.errors, topics.label("cam")) == (
        pipeline.predictions, pipeline.errors, pipeline.label("cam"))


def test_the_live_pointer_and_a_nodes_report_read_back():
    assert LiveRelease.parse(LiveRelease("v2", 5.0).to_json().encode()) == LiveRelease("v2", 5.0)
    for junk in (b"", b"{}", b'{"release": "a/b"}', b"\xff"):
        assert LiveRelease.parse(junk) is None
    report = NodeReport("n1", "aarch64", "ai_edge_litert", "2.3.0", 3796, 3000, 5210.4, 4,
                        "0.1.0", "v2", "ready", 1, "", ("v1", "v2"))
    assert NodeReport.parse(report.to_json().encode()) == report
    assert NodeReport.parse(b'{"kind": "stage"}') is None


@pytest.mark.parametrize(("have", "need", "ok"), [
    ("2.3.0", "2.3.0", True), ("2.10.0", "2.9", True), ("2.3.0", "2.14.0", False),
    ("unknown", "1.0", False), ("1.15.0", "", True)])
def test_a_runtime_version_is_compared_number_by_number(have, need, ok):
    assert runtime_at_least(have, need) is ok


def node(name: str, speed: float) -> NodeReport:
    return NodeReport(name, "aarch64", "ai_edge_litert", "2.3.0", 4000, 3000, speed, 4, "0.1.0")


def test_the_deployer_gives_each_node_a_stage_and_spare_nodes_become_replicas(test_models):
    from aiotedge_converter.fleet import DeployError, assign_stages

    from aiotedge.tflite.graph import load_graph

    graph = load_graph(test_models["int8"])
    nodes = [node("b", 100.0), node("a", 100.0), node("c", 100.0), node("slow", 1.0)]
    plan, assignments = assign_stages(graph, nodes[:3])
    assert assignments == (("a",), ("b",), ("c",)) and len(plan.stages) == 3
    # the fastest two, then a replica; the slow one would slow any stage down: it stands by
    plan, assignments = assign_stages(graph, nodes, stages=2)
    assert sorted(n for stage in assignments for n in stage) == ["a", "b", "c"]
    assert [stage[0] for stage in assignments] == ["a", "b"]
    with pytest.raises(DeployError, match="no node online"):
        assign_stages(graph, [])
    with pytest.raises(DeployError, match="at least 1"):
        assign_stages(graph, nodes, stages=0)
    report = json.loads(node("x", 1.0).to_json())
    report["mmacs_per_s"] = 0
    assert NodeReport.parse(json.dumps(report).encode()) is None  # nothing to divide by


def test_a_nodes_speed_is_measured_once_and_kept(tmp_path):
    from aiotedge.nodes.daemons.speed import SPEED_FILE, cached_speed

    first = cached_speed(tmp_path)
    assert first > 0
    kept = json.loads((tmp_path / SPEED_FILE).read_text())
    (tmp_path / SPEED_FILE).write_text(json.dumps({**kept, "mmacs_per_s": 1234.5}))
    assert cached_speed(tmp_path) == 1234.5  # read, not measured again
    (tmp_path / SPEED_FILE).write_text(json.dumps({**kept, "machine": "another-board"}))
    assert cached_speed(tmp_path) != 1234.5  # a card moved to another kind of board


def test_a_node_refuses_a_release_it_has_not_the_memory_or_runtime_for(split3, tmp_path,
                                                                        monkeypatch):
    from aiotedge.config.loader import NodeConfig
    from aiotedge.nodes.daemons import node as node_module
    from aiotedge.nodes.daemons.speed import BoardFacts

    daemon = node_module.NodeDaemon(NodeConfig(), tmp_path, BoardFacts(
        "aarch64", "ai_edge_litert", "2.3.0", 1024, 4, 1000.0))
    release = release_of(split3, min_runtime="2.1.0")
    monkeypatch.setattr(node_module, "memory_mb", lambda: (1024, 300))
    daemon.check_runnable(release)  # 1280 bytes fit in 300 MB
    monkeypatch.setattr(node_module, "memory_mb", lambda: (1024, 50))
    with pytest.raises(ReleaseError, match=r"not enough memory: .* 50 MB are available"):
        daemon.check_runnable(release)
    with pytest.raises(ReleaseError, match=r"runtime too old: the model needs 2\.14"):
        daemon.check_runnable(release_of(split3, min_runtime="2.14"))


def test_a_node_whose_cache_cannot_be_written_says_so_in_one_line(tmp_path):
    import subprocess
    import sys

    blocked = tmp_path / "file"
    blocked.write_text("")
    done = subprocess.run([sys.executable, "-m", "aiotedge", "node", "--node", "n1",
                           "--cache", str(blocked / "cache")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(f"--cache {blocked / 'cache'}: cannot write there: Not a directory")
