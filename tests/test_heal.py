"""The fleet heals itself (`aiotedge-convert heal`, docs/fleet.md): the decisions with fakes,
then coordinators as processes with real `aiotedge node` daemons on a real mosquitto."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiotedge_converter.fleet import Member, build_release, deploy
from aiotedge_converter.heal import (
    BOUNCE_WINDOW,
    Coordinator,
    HealError,
    HealOptions,
    decider,
    lost_nodes,
    next_release_id,
    presence,
    settle_time,
    settled_joiners,
    worth_it,
)

from aiotedge.contracts.release import RELEASE_ID, NodeReport, Release
from aiotedge.media.sources import Stills
from aiotedge.tflite.graph import load_graph
from support.fleet import NODES, PIPELINE, Results, camera_for, deployer, expected_top1
from support.models import LABELS

# -- the decisions ---------------------------------------------------------------------------


def test_a_replan_is_named_after_the_live_release_and_skips_ids_used():
    assert next_release_id("v1", set()) == "v1.r1"
    assert next_release_id("v1.r1", set()) == "v1.r2"
    assert next_release_id("v1.r9", {"v1.r10"}) == "v1.r11"
    assert next_release_id("v1", {"v1.r1", "v1.r2"}) == "v1.r3"
    long = next_release_id("m" * 64, set())
    assert RELEASE_ID.fullmatch(long) and long.endswith(".r1")


def test_the_oldest_coordinator_present_decides():
    assert decider({}) is None
    assert decider({"b": presence(10.0), "a": presence(20.0)}) == "b"
    assert decider({"b": presence(10.0), "a": presence(10.0)}) == "a"  # a tie: the name
    assert decider({"b": b"garbage", "c": presence(99.0)}) == "c"  # unreadable: the newest


def report(node: str, speed: float = 1000.0) -> NodeReport:
    return NodeReport(node=node, architecture="x86_64", runtime="litert", runtime_version="1",
                      memory_mb=1000, available_mb=1000, mmacs_per_s=speed, cpus=4,
                      version="0")


def member(online: bool, since: float, went_offline: float | None = None,
           speed: float = 1000.0, node: str = "n") -> Member:
    return Member(online, since, went_offline, report(node, speed))


@pytest.fixture(scope="module")
def v1(test_models) -> Release:
    graph = load_graph(test_models["int8"])
    return build_release(graph, "v1", [report(n) for n in NODES], labels=LABELS,
                         kind="classification")[0]


def test_a_node_of_the_live_release_is_lost_only_after_the_grace(v1):
    members = {"n1": member(True, 0.0), "n2": member(False, 100.0), "n3": member(True, 0.0)}
    assert lost_nodes(v1, members, 100.5, grace=1.0) == ([], 101.0)  # away, not yet lost
    assert lost_nodes(v1, members, 101.0, grace=1.0) == (["n2"], None)
    members["n2"] = member(True, 100.8, went_offline=100.0)  # back within the grace
    assert lost_nodes(v1, members, 101.0, grace=1.0) == ([], None)


def test_a_new_node_settles_and_a_bouncing_one_waits_a_minute(v1):
    fresh = member(True, 50.0)
    assert settle_time(fresh, 10.0) == 10.0
    bouncing = member(True, 50.0, went_offline=45.0)
    assert settle_time(bouncing, 10.0) == BOUNCE_WINDOW
    long_gone = member(True, 500.0, went_offline=50.0)
    assert settle_time(long_gone, 10.0) == 10.0
    members = {"n4": fresh, "n5": bouncing, "n1": member(True, 0.0)}
    assert settled_joiners(v1, members, 55.0, 10.0) == ([], 60.0)
    assert settled_joiners(v1, members, 60.0, 10.0) == (["n4"], 50.0 + BOUNCE_WINDOW)
    assert settled_joiners(v1, members, 50.0 + BOUNCE_WINDOW, 10.0) == (["n4", "n5"], None)
    members["n6"] = Member(True, 0.0, None, None)  # not announced: nothing to plan with
    assert "n6" not in settled_joiners(v1, members, 500.0, 10.0)[0]


def test_a_plan_is_made_live_only_when_it_gains_enough():
    assert worth_it(100.0, 110.0, 0.1)
    assert not worth_it(100.0, 109.0, 0.1)
    assert worth_it(100.0, 100.0, 0.0)
    assert worth_it(0.0, 1.0, 0.1)


def test_wrong_options_are_refused():
    with pytest.raises(HealError, match="--loss-grace"):
        HealOptions(loss_grace=-1)
    with pytest.raises(HealError, match="--timeout"):
        HealOptions(timeout=0)


@dataclass
class FakeDeployer:
    """What the coordinator reads and does, without a broker."""

    model: bytes
    live: Release
    members: dict[str, Member]
    present: dict[str, bytes]
    presence: str = "me"
    published: dict[str, Release | None] = field(default_factory=dict)
    done: list[tuple[str, Release]] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)

    def coordinators(self) -> dict[str, bytes]:
        return self.present

    def live_release(self) -> Release:
        return self.live

    def releases(self) -> dict[str, Release | None]:
        return {self.live.release: self.live, **self.published}

    def membership(self) -> dict[str, Member]:
        return self.members

    def online_nodes(self) -> list[NodeReport]:
        return [m.report for m in self.members.values() if m.online and m.report]

    def fetch_model(self, _release: Release) -> bytes:
        return self.model

    def withdraw(self, release_id: str) -> None:
        self.withdrawn.append(release_id)

    def abandon_for(self, release: Release, _chunks, _timeout: float) -> None:
        self.done.append(("abandon", release))

    def roll_out(self, release: Release, _chunks, _timeout: float) -> None:
        self.done.append(("roll", release))


@pytest.fixture
def fake(test_models, v1) -> FakeDeployer:
    members = {n: member(True, 0.0, node=n) for n in NODES}
    return FakeDeployer(test_models["int8"].read_bytes(), v1, members,
                        {"me": presence(1.0)})


def test_a_coordinator_stands_by_while_an_older_one_is_present(fake, tmp_path):
    fake.present["elder"] = presence(0.5)
    fake.members["n2"] = member(False, 0.0, node="n2")
    coordinator = Coordinator(fake, HealOptions(), tmp_path)
    assert coordinator.step(100.0) is None and not fake.done
    del fake.present["elder"]  # its Last Will: this one takes over and re-plans
    coordinator.step(100.0)
    assert [(how, r.release, r.nodes) for how, r in fake.done] == [
        ("abandon", "v1.r1", ("n1", "n3"))]


def test_taking_over_withdraws_the_release_being_made(fake, v1, tmp_path):
    half_made = replace(v1, release="v1.r1", created_at=v1.created_at + 1)
    older = replace(v1, release="v0", created_at=v1.created_at - 1)
    fake.published = {"v1.r1": half_made, "v0": older}
    Coordinator(fake, HealOptions(), tmp_path).step(100.0)
    assert fake.withdrawn == ["v1.r1"]  # the one draining (v0) drains on


def test_a_bounce_within_the_grace_and_a_join_without_gain_change_nothing(fake, tmp_path):
    coordinator = Coordinator(fake, HealOptions(loss_grace=5.0, join_settle=1.0), tmp_path)
    fake.members["n2"] = member(False, 100.0, node="n2")
    assert coordinator.step(101.0) == 105.0
    fake.members["n2"] = member(True, 102.0, went_offline=100.0, node="n2")
    fake.members["n4"] = member(True, 102.0, node="n4")  # as fast as the others: no gain
    assert coordinator.step(110.0) is None
    assert coordinator.step(111.0) is None  # declined once, not weighed again
    assert not fake.done
    fake.members["n5"] = member(True, 120.0, speed=4000.0, node="n5")  # a fast one
    coordinator.step(121.0)
    assert [(how, "n5" in r.nodes) for how, r in fake.done] == [("roll", True)]
