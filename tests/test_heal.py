"""The fleet heals itself (`aiotedge-convert heal`, docs/fleet.md): the decisions with fakes,
then coordinators as processes with real `aiotedge node` daemons on a real mosquitto."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field, replace

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


# -- coordinators as processes, real nodes, a real broker ------------------------------------


class HealProcess:
    """`aiotedge-convert heal` as a process; its log lines, as they come."""

    def __init__(self, broker, name: str, *options: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aiotedge_converter", "heal", "--broker",
             str(broker.address), "--pipeline", PIPELINE, "--name", name, "--timeout", "60",
             *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.changed:
                self.lines.append(line.rstrip())
                self.changed.notify_all()
        with self.changed:
            self.lines.append("<exited>")
            self.changed.notify_all()

    def wait_line(self, text: str, timeout: float = 120.0) -> str:
        with self.changed:
            assert self.changed.wait_for(lambda: any(text in line for line in self.lines),
                                         timeout), (text, self.lines)
            return next(line for line in self.lines if text in line)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(60)
        self.reader.join(10)
        return status


@pytest.fixture
def coordinators(broker):
    started: list[HealProcess] = []

    def start(name: str, *options: str) -> HealProcess:
        started.append(HealProcess(broker, name, *options))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def live_serves(fleet, release_id: str | None = None) -> bool:
    """Whether the live release (`release_id`, or any but v1) is served by all its nodes."""
    live = fleet.live
    if live is None or live.release == "v1" or (release_id and live.release != release_id):
        return False
    release = fleet.releases.get(live.release)
    return release is not None and all(
        (r := fleet.reports.get(n)) and r.release == live.release and r.state == "ready"
        for n in release.nodes)


def deploy_v1(fleet, broker, test_models) -> Release:
    return deploy(deployer(broker), load_graph(test_models["int8"]), "v1", labels=LABELS,
                  nodes=len(NODES), timeout=120).release


def test_a_lost_sole_stage_node_is_replaced_by_a_release_on_the_nodes_left(
        fleet, broker, coordinators, test_models, generated_frames):
    v1 = deploy_v1(fleet, broker, test_models)
    heal = coordinators("c1")
    heal.wait_line("coordinator c1: deciding")
    lost = v1.assignments[1][0]
    fleet.kill(lost)
    fleet.wait_fleet(lambda: live_serves(fleet, "v1.r1"), "v1.r1 live")
    assert fleet.live.resend  # v1 was abandoned: cameras resend what it held
    healed = fleet.releases["v1.r1"]
    assert sorted(healed.nodes) == sorted(set(NODES) - {lost})
    assert "v1" not in fleet.releases  # withdrawn
    line = heal.wait_line(f"lost {lost}: v1 -> v1.r1 (abandon)")
    assert "forecast" in line

    results = Results(broker, fleet.topics)
    camera, session = camera_for(broker, "cam")
    assert camera.run(Stills(generated_frames)) == len(generated_frames)
    results.wait_for(lambda p: len(p) >= len(generated_frames))
    for prediction in results.predictions:  # the whole model's answers, by the nodes left
        assert prediction.release == "v1.r1"
        assert prediction.top[0].name == expected_top1(
            test_models["int8"], healed, generated_frames[prediction.seq][1])
    session.stop()
    results.session.stop()
    assert heal.stop() == 0
    from support.watch import retained_now

    assert fleet.topics.coordinator("c1") not in retained_now(broker, fleet.topics)


def test_a_node_joining_is_put_to_work_once_it_settled(fleet, broker, coordinators,
                                                       test_models):
    deploy_v1(fleet, broker, test_models)
    heal = coordinators("c1", "--join-settle", "1")
    heal.wait_line("coordinator c1: deciding")
    fleet.start("n4", speed=4000.0)  # fast: the forecast gains
    fleet.wait_fleet(lambda: live_serves(fleet, "v1.r1"), "v1.r1 live")
    assert "n4" in fleet.releases["v1.r1"].nodes
    assert not fleet.live.resend  # a rolling update: v1 drains
    heal.wait_line("joined n4: v1 -> v1.r1 (rolling)")


def test_a_node_bouncing_within_the_grace_causes_no_replan(fleet, broker, coordinators,
                                                           test_models):
    deploy_v1(fleet, broker, test_models)
    heal = coordinators("c1", "--loss-grace", "60")
    heal.wait_line("coordinator c1: deciding")
    fleet.kill("n2")
    fleet.start("n2")
    heal.wait_line("n2 back within the loss grace: no re-plan of v1")
    fleet.wait(lambda r: "n2" in r and r["n2"].serving == ("v1",), "n2 serves v1 again")
    with fleet.changed:
        assert sorted(fleet.releases) == ["v1"] and fleet.live.release == "v1"


def test_the_deciding_coordinator_killed_during_a_replan_the_other_finishes_it(
        fleet, broker, coordinators, test_models):
    deploy_v1(fleet, broker, test_models)
    elder = coordinators("a")
    elder.wait_line("coordinator a: deciding")
    younger = coordinators("b")
    younger.wait_line("coordinator b: standing by (a decides)")
    fleet.kill("n2")
    fleet.wait_fleet(lambda: "v1.r1" in fleet.releases, "a publishes its re-plan")
    elder.process.kill()  # during the re-plan: its Last Will clears its presence
    younger.wait_line("coordinator b: deciding")
    younger.wait_line("withdrawing release v1.r1 (unfinished)")
    fleet.wait_fleet(lambda: live_serves(fleet, "v1.r2"), "b's re-plan live")
    assert sorted(fleet.releases["v1.r2"].nodes) == ["n1", "n3"]
    assert "v1.r1" not in fleet.releases


def test_a_node_lost_under_a_camera_loses_no_frame(fleet, broker, coordinators, test_models,
                                                   generated_frames):
    """Needs the nodes to stop a withdrawn release at once and the cameras to resend on
    `resend` (node.py, camera.py)."""
    v1 = deploy_v1(fleet, broker, test_models)
    heal = coordinators("c1", "--timeout", "20")
    heal.wait_line("coordinator c1: deciding")
    results = Results(broker, fleet.topics)
    camera, session = camera_for(broker, "cam", fps=20)
    stop = threading.Event()
    feeding = threading.Thread(target=camera.run,
                               args=(Stills(generated_frames, loop=True),), kwargs={"stop": stop})
    feeding.start()
    try:
        results.wait_for(lambda p: len(p) >= 5)
        fleet.kill(v1.assignments[1][0])
        results.wait_for(lambda p: sum(x.release == "v1.r1" for x in p) >= 5, timeout=60)
    finally:  # the camera stops, even when the test fails
        stop.set()
        feeding.join(60)
    published = camera.counters.get("published")
    expected = {camera.frame_id(seq) for seq in range(published)}
    results.wait_for(lambda p: expected <= {x.frame_id for x in p}, timeout=60)  # 0 lost
    frame_ids = [p.frame_id for p in results.predictions]
    assert len(frame_ids) == len(set(frame_ids))  # each answered once
    session.stop()
    results.session.stop()
