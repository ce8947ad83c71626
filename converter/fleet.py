"""`aiotedge-convert deploy`: a model onto the node daemons online, as a release (docs/fleet.md).

Plans for the nodes that announce themselves (MACs over each node's speed profile: the exact
min-max cut of planner.py, one stage per node, the fastest nodes first; a node left over
becomes a replica of the slowest stage where that speeds it up, else stands by), splits the
model here to learn each segment's sha256 (the same cut every node makes) and each stage's
reference, publishes the model's and the references' chunks and then the release, retained,
and waits until every node of the release serves its stage. Only then does the live pointer
move to it: the release before keeps serving until that moment, and drains afterwards. A
node refusing the release, or a timeout, withdraws it (the live release stays) and names what
each node said.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiotedge_converter.errors import ConverterError
from aiotedge_converter.planner import CostModel, Plan, plan_pipeline
from aiotedge_converter.split import SplitOptions, split_model

from aiotedge.config.loader import NodeConfig
from aiotedge.contracts.errors import ReleaseError
from aiotedge.contracts.manifest import Manifest, StageSpec
from aiotedge.contracts.plan import PLAN_BOARDS
from aiotedge.contracts.release import (
    CHUNK_BYTES,
    LiveRelease,
    NodeReport,
    Release,
    sha256_hex,
    split_chunks,
)
from aiotedge.contracts.topics import ONLINE, Topics
from aiotedge.nodes.daemons.lifecycle import connect_once
from aiotedge.nodes.daemons.local import plan_replicas
from aiotedge.nodes.mqtt.session import MqttSession, read_retained
from aiotedge.nodes.mqtt.transport import Received
from aiotedge.tflite.graph import Graph, decode_name, load_graph

log = logging.getLogger(__name__)

#: seconds to wait for every node of a release to serve it
DEFAULT_TIMEOUT = 300.0
#: seconds to wait for the broker to take each retained message
PUBLISH_TIMEOUT = 30.0


class DeployError(ConverterError):
    """A release that did not go live: the reason, and what each node said."""


class DeployCancelledError(DeployError):
    """The command was told to stop while it waited (`Deployer.cancel`)."""


@dataclass(frozen=True)
class Deployed:
    release: Release
    reports: dict[str, NodeReport]
    #: the release that served before (draining now), if any
    previous: str | None


def assign_stages(graph: Graph, nodes: Sequence[NodeReport], stages: int | None = None
                  ) -> tuple[Plan, tuple[tuple[str, ...], ...]]:
    """The cuts and, per stage, its nodes: the min-max plan of MACs over each node's speed."""
    if not nodes:
        raise DeployError("no node online: start `aiotedge node` on the boards first")
    if stages is not None and stages < 1:
        raise DeployError(f"--stages must be at least 1, got {stages}")
    cut_points = [point.op_index for point in graph.cut_points]
    count = min(stages or len(nodes), len(nodes), len(cut_points) + 1)
    fastest = sorted(nodes, key=lambda n: (-n.mmacs_per_s, n.node))
    chosen = sorted(fastest[:count], key=lambda n: n.node)
    boards = [CostModel([macs / node.mmacs_per_s for macs in graph.op_macs]) for node in chosen]
    plan = plan_pipeline(boards, cut_points)
    groups = [[node] for node in chosen]
    macs = [graph.macs_between(stage.first_op, stage.last_op) for stage in plan.stages]

    def rate(k: int, members: list[NodeReport]) -> float:
        return stage_rate(macs[k], [member.mmacs_per_s for member in members])

    for spare in fastest[count:]:  # a replica of the slowest stage, where it speeds it up
        k = min(range(count), key=lambda k: rate(k, groups[k]))
        if rate(k, [*groups[k], spare]) > rate(k, groups[k]):
            groups[k].append(spare)
    return plan, tuple(tuple(node.node for node in group) for group in groups)


def stage_rate(macs: int, speeds: Sequence[float]) -> float:
    """Frames/s of a stage of `macs` on nodes of these speeds (millions of MACs/s): replicas
    take turns, the slowest sets the pace (aiotedge_converter.cluster)."""
    slowest = max(macs / (speed * 1e6) for speed in speeds) if speeds else float("inf")
    return len(speeds) / slowest if slowest else float("inf")


def forecast(graph: Graph, release: Release, speeds: dict[str, float]) -> float:
    """The planner's frames/s for a release of this model: its slowest stage's, each stage's
    MACs over its nodes' speeds (`speeds`: node -> millions of MACs/s; a node without one
    counts as stopped)."""
    rates = [stage_rate(graph.macs_between(stage.first_op, stage.last_op),
                        [speeds[node] for node in nodes])
             if all(node in speeds for node in nodes) else 0.0
             for stage, nodes in zip(release.split().stages, release.assignments, strict=True)]
    return min(rates, default=0.0)


def min_runtime(graph: Graph) -> str | None:
    """The model's `min_runtime_version` metadata (what the converter that made it says)."""
    for entry in graph.model.metadata or []:
        if decode_name(entry.name) == "min_runtime_version":
            data = graph.model.buffers[entry.buffer].data
            data = b"" if data is None else bytes(data)
            version = data.split(b"\0", 1)[0].decode("ascii", "replace").strip()
            return version or None
    return None


def build_release(graph: Graph, release_id: str, nodes: Sequence[NodeReport], *,
                  labels: tuple[str, ...] | None, kind: str, stages: int | None = None,
                  chunk_bytes: int = CHUNK_BYTES) -> tuple[Release, list[bytes]]:
    """The release and its chunks: planned, and split here for the segments' hashes and the
    stages' references."""
    assert graph.path is not None
    plan, assignments = assign_stages(graph, nodes, stages)
    model = graph.path.read_bytes()
    with tempfile.TemporaryDirectory(prefix="aiotedge-release-") as scratch:
        manifest = split_model(graph, plan, Path(scratch),
                               SplitOptions(labels=labels, copy_source=False))
        return _release(release_id, kind, graph.path.name, model, manifest,
                        assignments=assignments, runtime=min_runtime(graph),
                        chunk_bytes=chunk_bytes)


def folder_release(folder: Path, release_id: str, nodes: Sequence[NodeReport], *, kind: str,
                   chunk_bytes: int = CHUNK_BYTES) -> tuple[Release, list[bytes]]:
    """The release of a split or plan folder (`aiotedge-convert split` or `plan --out`): its
    cuts, codecs and labels as they are, each stage given as many nodes as the plan has boards
    for it (one without a plan), the fastest first."""
    manifest = Manifest.load(folder)
    model_path = manifest.directory / manifest.source.file
    if not model_path.is_file():
        raise DeployError(f"{folder}: the whole model {manifest.source.file} is not there "
                          "(split and plan keep it unless --no-copy-source)")
    counts = plan_replicas(folder) if (folder / PLAN_BOARDS).is_dir() else {}
    wanted = [counts.get(index, 1) for index in range(len(manifest.stages))]
    if len(nodes) < sum(wanted):
        raise DeployError(f"{folder} needs {sum(wanted)} nodes, {len(nodes)} online")
    fastest = iter(sorted(nodes, key=lambda n: (-n.mmacs_per_s, n.node)))
    assignments = tuple(tuple(next(fastest).node for _ in range(count)) for count in wanted)
    return _release(release_id, kind, manifest.source.file, model_path.read_bytes(), manifest,
                    assignments=assignments, runtime=min_runtime(load_graph(model_path)),
                    chunk_bytes=chunk_bytes)


def _release(release_id: str, kind: str, model_file: str, model: bytes, manifest: Manifest, *,
             assignments: tuple[tuple[str, ...], ...], runtime: str | None,
             chunk_bytes: int) -> tuple[Release, list[bytes]]:
    """The release and every chunk to publish: the model's, then each stage's reference file's
    (read beside the manifest), so that a node checks the segment it cut, as `aiotedge stage`
    does, before it serves."""
    chunks = split_chunks(model, chunk_bytes)
    references = [_reference_chunks(manifest, stage, chunk_bytes) for stage in manifest.stages]
    release = Release(
        release=release_id, kind=kind, model_file=model_file,
        model_sha256=sha256_hex(model), model_bytes=len(model), chunk_bytes=chunk_bytes,
        chunks=tuple(sha256_hex(chunk) for chunk in chunks), manifest=manifest.to_dict(),
        assignments=assignments, min_runtime=runtime,
        references=tuple(tuple(sha256_hex(chunk) for chunk in stage) for stage in references)
        if any(references) else ())
    return release, [*chunks, *(chunk for stage in references for chunk in stage)]


def _reference_chunks(manifest: Manifest, stage: StageSpec, chunk_bytes: int) -> list[bytes]:
    """A stage's reference file in chunks (none without one), checked against the manifest
    first: a release every node would refuse is not published."""
    if stage.reference is None:
        return []
    path = manifest.directory / stage.reference.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DeployError(f"stage {stage.index}'s reference {path}: {exc.strerror}") from exc
    if sha256_hex(data) != stage.reference.sha256:
        raise DeployError(f"stage {stage.index}'s reference {path} is not the one its manifest "
                          "names (bad sha256): split again")
    return split_chunks(data, chunk_bytes)


@dataclass(frozen=True)
class Member:
    """A node as the deployer sees it: whether it is online, since when (time.monotonic), when
    it last went offline while watched (None: not seen to), and its report, if any."""

    online: bool
    since: float
    went_offline: float | None
    report: NodeReport | None


class Deployer:
    """One connection to the broker as the deployer's user: reads the nodes, publishes.

    With `presence` (a self-healing coordinator's name, heal.py) its Last Will clears that
    coordinator's retained presence, and it follows every coordinator's presence too."""

    def __init__(self, config: NodeConfig, client_id: str = "aiotedge-deploy", *,
                 presence: str | None = None) -> None:
        self.config = config
        self.topics: Topics = config.topics
        self.session = MqttSession(config.broker, client_id, one_shot=True)
        self.presence = presence
        if presence is not None:
            self.session.client.will_set(self.topics.coordinator(presence), b"", qos=1,
                                         retain=True)
        self._changed = threading.Condition()
        self._reports: dict[str, NodeReport] = {}
        self._online: dict[str, bool] = {}
        #: node -> when its availability last changed, and when it last went offline
        self._since: dict[str, float] = {}
        self._went_offline: dict[str, float] = {}
        self._releases: dict[str, Release | None] = {}
        self._live: str | None = None
        #: coordinator name -> its retained presence (JSON), while present
        self._coordinators: dict[str, bytes] = {}
        self._cancelled = False

    def __enter__(self) -> Deployer:
        connect_once(self.session)
        filters = [self.topics.all_info, self.topics.all_availability,
                   f"{self.topics.release_plan}/+", self.topics.live_release]
        if self.presence is not None:
            filters.append(self.topics.all_coordinators)
        read_retained(self.session, filters, self.topics.probe(self.session.client_id),
                      follow=self._on_message)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.session.stop()

    def _on_message(self, message: Received) -> None:
        topic, name = message.topic, message.topic.rsplit("/", 1)[-1]
        with self._changed:
            if topic == self.topics.live_release:
                live = LiveRelease.parse(message.payload) if message.payload else None
                self._live = live.release if live else None
            elif topic.startswith(self.topics.release_plan + "/"):
                try:
                    self._releases[name] = Release.parse(message.payload) \
                        if message.payload else None
                except ReleaseError:
                    self._releases[name] = None
            elif topic == self.topics.availability(name):
                self._on_availability(name, message.payload == ONLINE.encode())
            elif topic == self.topics.info(name):
                report = NodeReport.parse(message.payload)
                if report is not None:
                    self._reports[name] = report
            elif topic == self.topics.coordinator(name):
                if message.payload:
                    self._coordinators[name] = message.payload
                else:
                    self._coordinators.pop(name, None)
            self._changed.notify_all()

    def _on_availability(self, name: str, online: bool) -> None:
        was = self._online.get(name)
        if was == online:
            return
        now = time.monotonic()
        self._online[name], self._since[name] = online, now
        if was and not online:
            self._went_offline[name] = now

    def online_nodes(self) -> list[NodeReport]:
        with self._changed:
            return [r for name, r in sorted(self._reports.items()) if self._online.get(name)]

    def membership(self) -> dict[str, Member]:
        """Every node whose availability was heard."""
        with self._changed:
            return {name: Member(online, self._since[name], self._went_offline.get(name),
                                 self._reports.get(name))
                    for name, online in sorted(self._online.items())}

    def coordinators(self) -> dict[str, bytes]:
        with self._changed:
            return dict(self._coordinators)

    def releases(self) -> dict[str, Release | None]:
        """Every release id heard of, with its release (None: withdrawn or unreadable)."""
        with self._changed:
            return dict(self._releases)

    def wait_change(self, timeout: float | None) -> None:
        """Until anything the deployer follows changes, or `timeout` seconds."""
        with self._changed:
            if not self._cancelled:
                self._changed.wait(timeout)

    def cancel(self) -> None:
        """Every wait ends now (DeployCancelledError): the command was told to stop."""
        with self._changed:
            self._cancelled = True
            self._changed.notify_all()

    def _wait(self, done: Callable[[], bool], deadline: float) -> bool:
        """Under the lock: until `done()`, the deadline (False) or a cancel (DeployError)."""
        while not done():
            if self._cancelled:
                raise DeployCancelledError("stopped")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.wait(remaining)
        return True

    def wait_nodes(self, count: int, timeout: float) -> list[NodeReport]:
        """The nodes online, once there are at least `count` of them."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.online_nodes()) >= count, timeout):
                online = ", ".join(n.node for n in self.online_nodes()) or "none"
                raise DeployError(f"{count} nodes wanted, online after {timeout:.0f} s: {online}")
            return self.online_nodes()

    @property
    def live(self) -> str | None:
        return self._live

    def live_release(self) -> Release | None:
        with self._changed:
            return self._releases.get(self._live) if self._live else None

    def _publish(self, topic: str, payload: bytes | str, what: str) -> None:
        """Retained at QoS 1, once the broker took it; refused: the user may not deploy."""
        answered = threading.Event()
        refused: list[bool] = []

        def confirmed(was_refused: bool) -> None:
            refused.append(was_refused)
            answered.set()

        self.session.publish_confirmed(topic, payload, 1, confirmed, retain=True)
        if not answered.wait(PUBLISH_TIMEOUT):
            raise DeployError(f"the broker did not take {what} within {PUBLISH_TIMEOUT:.0f} s")
        if refused[0]:
            raise DeployError(f"the broker refused {what} on {topic}: may user "
                              f"{self.config.broker.username or '(none)'} publish releases? "
                              "(docs/fleet.md, security)")

    def say_present(self, payload: str) -> None:
        """The coordinator's retained presence, said again after every reconnect."""
        assert self.presence is not None
        self.session.announce(self.topics.coordinator(self.presence), payload)

    def say_gone(self) -> None:
        """The coordinator's presence cleared, as its Last Will would on a lost connection."""
        assert self.presence is not None
        topic = self.topics.coordinator(self.presence)
        self.session.withdraw(topic)
        self._publish(topic, b"", "the coordinator's departure")

    def publish_release(self, release: Release, chunks: Sequence[bytes]) -> None:
        """The chunks first (the model's and the references', each on the topic of its
        sha256), then the release that names them: a node that sees the release finds every
        chunk."""
        for index, chunk in enumerate(chunks):
            self._publish(self.topics.model_chunk(sha256_hex(chunk)), chunk,
                          f"chunk {index + 1} of {len(chunks)}")
        self._publish(f"{self.topics.release_plan}/{release.release}", release.to_json(),
                      "the release")

    def fetch_model(self, release: Release) -> bytes:
        """The release's model from its chunks retained on the broker, every hash checked."""
        topics = sorted({self.topics.model_chunk(digest) for digest in release.chunks})
        probe = self.topics.probe(f"{self.session.client_id}.fetch")
        try:
            retained = read_retained(self.session, topics, probe, PUBLISH_TIMEOUT)
        finally:
            for topic in [*topics, probe]:
                self.session.unsubscribe(topic)
        return release.assemble({topic.rsplit("/", 1)[-1]: payload
                                 for topic, payload in retained.items()})

    def wait_ready(self, release: Release, timeout: float, *,
                   lost_fails: bool = False) -> dict[str, NodeReport]:
        """Every node of the release ready; DeployError naming what each said otherwise.
        `lost_fails`: a node of it going offline fails it at once (a re-plan for the nodes
        left is better than waiting for it)."""
        deadline = time.monotonic() + timeout

        def states() -> dict[str, NodeReport | None]:
            return {node: (r if (r := self._reports.get(node)) and r.release == release.release
                           else None) for node in release.nodes}

        def settled() -> bool:
            now = states()
            return (all(r and r.state == "ready" for r in now.values())
                    or any(r and r.state == "refused" for r in now.values())
                    or (lost_fails and not all(self._online.get(n) for n in now)))

        with self._changed:
            in_time = self._wait(settled, deadline)
            now = states()
            refused = {n: r for n, r in now.items() if r and r.state == "refused"}
            if refused:
                raise DeployError("; ".join(f"{n} refused it: {r.reason}"
                                            for n, r in refused.items()))
            if all(r and r.state == "ready" for r in now.values()):
                return {n: r for n, r in now.items() if r}
            said = "; ".join(f"{n}: {r.state if r else 'nothing yet'}"
                             + ("" if self._online.get(n) else " (offline)")
                             for n, r in now.items())
            if in_time:
                raise DeployError(f"a node of release {release.release} went offline ({said})")
            raise DeployError(f"not every node ready within {timeout:.0f} s ({said})")

    def wait_stopped(self, release_id: str, timeout: float) -> bool:
        """Until no node online serves `release_id` (its reports' `serving`); False after
        `timeout` seconds, the nodes still serving it logged."""
        def serving() -> list[str]:
            return [name for name, r in self._reports.items()
                    if self._online.get(name) and release_id in r.serving]

        with self._changed:
            if self._wait(lambda: not serving(), time.monotonic() + timeout):
                return True
            log.warning("release %s: still served after %.0f s by %s", release_id, timeout,
                        ", ".join(serving()))
            return False

    def go_live(self, release: Release, *, resend: bool = False) -> None:
        """`resend`: the release before was withdrawn, its stages stopped (cameras send their
        frames without a result again at once)."""
        self._publish(self.topics.live_release,
                      LiveRelease(release.release, resend=resend).to_json(), "the live pointer")

    def roll_out(self, release: Release, chunks: Sequence[bytes], timeout: float) -> Deployed:
        """The rolling update: publish, wait until its nodes are ready, go live; the release
        live before drains. A node refusing it, or the timeout: withdrawn, the live release
        stays (DeployError)."""
        previous = self.live
        self.publish_release(release, chunks)
        try:
            reports = self.wait_ready(release, timeout)
        except DeployError:
            self.withdraw(release.release)
            raise
        self.go_live(release)
        self.forget_old({release.release, *([previous] if previous else [])})
        return Deployed(release, reports, previous)

    def abandon_for(self, release: Release, chunks: Sequence[bytes], timeout: float) -> None:
        """The switch when a node of the live release is lost: its frames would wait for the
        lost node, so it is abandoned rather than drained. The new release is published and
        its nodes made ready, the live one withdrawn (its stages stop at once) and, once no
        node online serves it, the live pointer moved with `resend`: cameras send every frame
        still unanswered to the new release. A node refusing the new release, losing another
        node meanwhile, or the timeout: the new one withdrawn (DeployError), the live one
        stays."""
        previous = self.live
        self.publish_release(release, chunks)
        try:
            self.wait_ready(release, timeout, lost_fails=True)
        except DeployError:
            self.withdraw(release.release)
            raise
        if previous is not None:
            self.withdraw(previous)
            self.wait_stopped(previous, timeout)  # late: go live anyway, duplicates are filtered
        self.go_live(release, resend=True)
        self.forget_old({release.release})

    def withdraw(self, release_id: str) -> None:
        self._publish(f"{self.topics.release_plan}/{release_id}", b"", "the withdrawal")

    def forget_old(self, keep: set[str]) -> None:
        """Releases other than `keep` (the live one and the one draining) and the chunks only
        they named (the model's and the references'): cleared from the broker."""
        with self._changed:
            releases = dict(self._releases)
        kept_chunks = {c for rid in keep if (r := releases.get(rid))
                       for c in (*r.chunks, *r.reference_chunks)}
        for rid, old in releases.items():
            if rid in keep or old is None:
                continue
            self.withdraw(rid)
            for digest in {*old.chunks, *old.reference_chunks} - kept_chunks:
                self._publish(self.topics.model_chunk(digest), b"", "a chunk's removal")


def deploy(config: NodeConfig, model: Graph | Path, release_id: str, *,
           labels: tuple[str, ...] | None = None, kind: str = "classification",
           stages: int | None = None, nodes: int = 1,
           timeout: float = DEFAULT_TIMEOUT) -> Deployed:
    """Plan for the nodes online (waiting for `nodes` of them), publish, wait until they
    serve, go live (module docstring). `model`: a model's graph, or a split or plan folder
    whose cuts are kept."""
    with Deployer(config) as deployer:
        online = deployer.wait_nodes(nodes, timeout)
        if isinstance(model, Path):
            release, chunks = folder_release(model, release_id, online, kind=kind)
        else:
            release, chunks = build_release(model, release_id, online, labels=labels,
                                            kind=kind, stages=stages)
        log.info("release %s: %s", release.release, release.assignments)
        return deployer.roll_out(release, chunks, timeout)
