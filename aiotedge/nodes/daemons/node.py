"""`aiotedge node`: one daemon per board, without a fixed role (docs/fleet.md).

It connects (its availability and Last Will: the pipeline's membership), announces what the
board is (retained info of kind "node": architecture, runtime, memory, a speed profile), and
follows the retained releases and the live pointer. For each release that names it -- the
live one, and a newer one being rolled out -- it fetches the model's chunks (every hash
checked), cuts its own segment with the release's split, fetches its stage's reference
beside it (every hash checked; the stage's self-check runs on it), and runs that stage with
the stage daemon's own code (`run_stage`, in a thread, on a session and chain of topics of that
release). It reports, in its info, the newest release's state: fetching, ready (its stage
serves), refused (with the reason) or standby.

A release that is no longer wanted (the live pointer moved on) is drained before its stage
stops: stage 0 once no frame came for `DRAIN_QUIET` seconds since it stopped being wanted,
stage K once every node of stage K-1 of that release is offline and it has computed every
frame it took and none came for `DRAIN_QUIET` seconds. A release withdrawn (its retained
release cleared, as a coordinator does with one that lost a board) is stopped at once, not
drained: a drain could wait forever for a stage that is gone, and the frames it holds are the
cameras' to send again to the release that replaces it. Either way the node reports again as
soon as the stage has ended, without it in `serving`, and clears the stage's retained info,
stats and availability. A restarted node finds the retained releases and the live pointer
and serves again what they give it; its stage's session (a client id per release) gets the
frames that waited for it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiotedge import __version__
from aiotedge.config.loader import NodeConfig
from aiotedge.contracts.errors import AiotedgeError, BrokerError, ManifestError, ReleaseError
from aiotedge.contracts.release import LiveRelease, NodeReport, Release
from aiotedge.contracts.topics import ONLINE
from aiotedge.nodes.daemons.lifecycle import stop_on_signals, wait_for_broker
from aiotedge.nodes.daemons.speed import BoardFacts, board_facts, memory_mb
from aiotedge.nodes.daemons.stage import StageNode, run_stage
from aiotedge.nodes.mqtt.session import MqttSession, read_retained
from aiotedge.nodes.mqtt.transport import Received
from aiotedge.nodes.observe import systemd

log = logging.getLogger(__name__)

#: where `aiotedge node` keeps models and segments (the unit's CacheDirectory)
DEFAULT_NODE_CACHE = "/var/cache/aiotedge"
#: seconds without a frame after which a release no longer wanted counts as drained
DRAIN_QUIET = 2.0
#: seconds to wait for a release's chunks
FETCH_TIMEOUT = 120.0
#: memory a stage needs besides its model: the interpreter, the daemon, a frame or two (MB)
MEMORY_MARGIN_MB = 64
#: the node wakes this often to see whether an old release has drained
_TICK = 0.5


def runtime_at_least(have: str, need: str) -> bool:
    """Whether runtime version `have` is `need` or newer (dotted numbers; others compare
    as 0)."""
    def numbers(text: str) -> tuple[int, ...]:
        return tuple(int(part) if part.isdigit() else 0 for part in text.split("."))
    return numbers(have) >= numbers(need)


@dataclass
class _Serving:
    """A release's stage on this board: its thread, and what it counted when last looked at."""

    release: Release
    stage: int
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    node: StageNode | None = None
    #: why the stage ended by itself (None while it runs, or after a stop asked for)
    failure: str | None = None
    ended: bool = False
    #: when the release stopped being wanted (monotonic); None while wanted
    unwanted_since: float | None = None
    #: frames_in when last looked at, and since when it has not moved
    frames_in: int = -1
    quiet_since: float = 0.0


class NodeDaemon:
    """Follows the releases of one pipeline and serves what they give this node."""

    def __init__(self, config: NodeConfig, cache: Path, facts: BoardFacts | None = None) -> None:
        self.config = config
        self.topics = config.topics
        self.name = config.stage.node_name
        self.cache = Path(cache)
        (self.cache / "models").mkdir(parents=True, exist_ok=True)
        (self.cache / "releases").mkdir(parents=True, exist_ok=True)
        self.facts = facts or board_facts(self.cache)
        self.session = MqttSession(config.broker, client_id=self.name,
                                   availability_topic=self.topics.availability(self.name))
        self._changed = threading.Condition()
        self._releases: dict[str, Release] = {}
        #: a release's refusal (malformed, or one this board cannot run), by release id
        self._refused: dict[str, str] = {}
        self._live: str | None = None
        self._serving: dict[str, _Serving] = {}
        #: retained availability of the releases' stages this node follows (topic -> payload)
        self._availability: dict[str, bytes] = {}
        self._said: str | None = None
        self.session.subscribe(f"{self.topics.release_plan}/+", self._on_release, qos=1)
        self.session.subscribe(self.topics.live_release, self._on_live, qos=1)

    # -- network thread -------------------------------------------------------------------

    def _on_release(self, message: Received) -> None:
        release_id = message.topic.rsplit("/", 1)[-1]
        with self._changed:
            self._releases.pop(release_id, None)
            self._refused.pop(release_id, None)
            if message.payload:
                try:
                    release = Release.parse(message.payload)
                    if release.release != release_id:
                        raise ReleaseError(f"release {release.release!r} published as "
                                           f"{release_id!r}")
                    self._releases[release_id] = release
                except ReleaseError as exc:
                    log.error("release %s refused: %s", release_id, exc)
                    self._refused[release_id] = str(exc)  # under the lock already
            self._changed.notify_all()

    def _on_live(self, message: Received) -> None:
        live = LiveRelease.parse(message.payload) if message.payload else None
        with self._changed:
            self._live = live.release if live else None
            self._changed.notify_all()
        log.info("live release: %s", self._live)

    def _on_stage_availability(self, message: Received) -> None:
        with self._changed:
            self._availability[message.topic] = message.payload
            self._changed.notify_all()

    # -- the node's loop ------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve what the releases give this node until `stop`; then stop every stage."""
        try:
            while not stop.is_set():
                self.reconcile()
                with self._changed:
                    self._changed.wait(_TICK)
        finally:
            for serving in self._serving.values():
                serving.stop.set()
            for serving in self._serving.values():
                if serving.thread is not None:
                    serving.thread.join()

    def wanted(self) -> dict[str, tuple[Release, int]]:
        """Release id -> the release and the stage this node serves in it: the live release's
        role and that of the newest release after it (being rolled out)."""
        with self._changed:
            releases, live_id = dict(self._releases), self._live
        live = releases.get(live_id) if live_id else None
        newer = [r for r in releases.values()
                 if r is not live and (live is None or r.created_at > live.created_at)]
        chosen = [live, max(newer, key=lambda r: r.created_at) if newer else None]
        return {r.release: (r, role) for r in chosen
                if r is not None and (role := r.role(self.name)) is not None}

    def newest(self) -> str | None:
        with self._changed:
            if not self._releases and not self._refused:
                return None
            created = {rid: r.created_at for rid, r in self._releases.items()}
            for rid in self._refused:  # one that could not be read: newest, to be seen
                created.setdefault(rid, float("inf"))
        return max(created, key=lambda rid: created[rid])

    def reconcile(self) -> None:
        """Start the stages wanted, stop those withdrawn, drain and stop those no longer
        wanted, say the state."""
        with self._changed:
            published = set(self._releases)
        wanted = self.wanted()
        for release_id, serving in list(self._serving.items()):
            if serving.ended:
                del self._serving[release_id]
                if serving.failure is not None:
                    self._refuse(release_id, serving.failure)
                elif serving.unwanted_since is not None:
                    self._forget(serving)
            elif release_id not in published:
                self._stop_at_once(serving)
            elif release_id not in wanted:
                self._drain(serving)
            else:
                serving.unwanted_since = None
        for release_id, (release, stage) in wanted.items():
            if release_id not in self._serving and release_id not in self._refused:
                self._start(release, stage)
        self._report()

    def _refuse(self, release_id: str, reason: str) -> None:
        log.error("release %s refused: %s", release_id, reason)
        with self._changed:
            self._refused[release_id] = reason

    def _start(self, release: Release, stage: int) -> None:
        self._say(release.release, "fetching", stage)
        try:
            directory = self.prepare(release, stage)
        except AiotedgeError as exc:
            self._refuse(release.release, str(exc))
            return
        config = self.stage_config(release, stage, directory)
        topics = config.topics
        self.session.subscribe(topics.all_availability, self._on_stage_availability, qos=1)
        serving = _Serving(release, stage)
        serving.thread = threading.Thread(target=self._serve, args=(serving, config),
                                          name=f"stage-{release.release}", daemon=True)
        self._serving[release.release] = serving
        serving.thread.start()
        log.info("release %s: serving stage %d", release.release, stage)

    def stage_config(self, release: Release, stage: int, directory: Path) -> NodeConfig:
        """The stage's config: this node's broker and pipeline, the release's segment, a
        client id and topics of the release's own (two releases run side by side while one
        is rolled out), no Prometheus port of its own (the node has one at most)."""
        config = self.config.override(
            "stage", manifest=str(directory), index=stage,
            node=f"{self.name}.{release.release}", share_group=release.share_group(stage))
        config = config.override("stats", prometheus_port=0) \
            if config.stats.prometheus_port else config
        return dataclasses.replace(config, release=release.release)

    def _serve(self, serving: _Serving, config: NodeConfig) -> None:
        def ready(node: StageNode) -> None:
            with self._changed:
                serving.node = node
                self._changed.notify_all()
        try:
            if run_stage(config, serving.stop, on_serving=ready, notify_systemd=False) != 0:
                serving.failure = "its stage does not fit the stages online (see its log)"
        except AiotedgeError as exc:
            serving.failure = str(exc)
        except Exception as exc:  # the node outlives any one release
            log.exception("release %s: the stage failed", serving.release.release)
            serving.failure = f"internal error: {exc!r}"
        finally:
            with self._changed:
                serving.ended = True
                self._changed.notify_all()

    def _stop_at_once(self, serving: _Serving) -> None:
        """A withdrawn release's stage stops without draining (module docstring)."""
        if serving.stop.is_set():
            return
        log.info("release %s withdrawn: stopping stage %d at once", serving.release.release,
                 serving.stage)
        if serving.unwanted_since is None:
            serving.unwanted_since = time.monotonic()
        serving.stop.set()

    def _drain(self, serving: _Serving) -> None:
        """Stop a release's stage once nothing more can come to it (module docstring)."""
        now = time.monotonic()
        if serving.unwanted_since is None:
            serving.unwanted_since = now
            log.info("release %s is no longer wanted: draining stage %d",
                     serving.release.release, serving.stage)
        if serving.stop.is_set():
            return
        node = serving.node
        if node is None:  # never served: nothing to drain
            serving.stop.set()
            return
        counters = node.counters
        taken = counters.get("frames_in")
        if taken != serving.frames_in:
            serving.frames_in, serving.quiet_since = taken, now
        finished = sum(counters.get(name) for name in
                       ("frames_out", "rejected", "duplicates", "dropped"))
        upstream_gone = now - serving.unwanted_since >= DRAIN_QUIET
        if serving.stage > 0:
            topics = serving.release.topics(self.topics)
            with self._changed:
                upstream_gone = upstream_gone and all(
                    self._availability.get(topics.availability(f"{n}.{serving.release.release}"))
                    != ONLINE.encode()
                    for n in serving.release.assignments[serving.stage - 1])
        if upstream_gone and finished >= taken and now - serving.quiet_since >= DRAIN_QUIET:
            log.info("release %s drained: stopping stage %d (%d frames taken)",
                     serving.release.release, serving.stage, taken)
            serving.stop.set()

    def _forget(self, serving: _Serving) -> None:
        """A stopped stage's retained info, stats and availability go with its release."""
        topics = serving.release.topics(self.topics)
        name = f"{self.name}.{serving.release.release}"
        self.session.unsubscribe(topics.all_availability)
        for topic in (topics.info(name), topics.stats(name), topics.availability(name)):
            self.session.publish(topic, b"", qos=1, retain=True)

    # -- a release's files ------------------------------------------------------------------

    def prepare(self, release: Release, stage: int) -> Path:
        """The release's folder for this stage (manifest.json, the segment this board cut
        itself and the stage's reference, if the release has one: the stage checks its
        segment on it as it starts), after every check; ReleaseError saying why the board
        cannot serve it.

        The flatbuffer schema that cuts a model (about 6 MB resident) is loaded here, when a
        release comes, not by every daemon that imports this module."""
        from aiotedge.tflite.flatbuffer import pack_model
        from aiotedge.tflite.graph import load_graph
        from aiotedge.tflite.segments import extract_segment

        self.check_runnable(release)
        model = self.cache / "models" / f"{release.model_sha256}.tflite"
        if not model.is_file():
            self._fetch(release, model)
        directory = self.cache / "releases" / release.release
        directory.mkdir(parents=True, exist_ok=True)
        manifest = release.split(directory)
        spec = manifest.stage(stage)
        segment = self._plain_file(directory, spec.file, f"stage {stage}'s file")
        if spec.reference is not None:
            reference = self._plain_file(directory, spec.reference.file,
                                         f"stage {stage}'s reference")
            reference.write_bytes(release.reference(stage, self._fetch_chunks(
                release, release.references[stage], f"stage {stage}'s reference")))
        segment.write_bytes(pack_model(extract_segment(load_graph(model), spec.first_op,
                                                       spec.last_op)))
        manifest.save(directory)
        try:
            manifest.check_segment(stage)
        except ManifestError as exc:
            raise ReleaseError(f"bad hash: the segment cut here is not the release's ({exc}); "
                               "do the deployer and this board run the same aiotedge?") from exc
        return directory

    def check_runnable(self, release: Release) -> None:
        """Refuse what this board cannot run: a runtime too old, too little memory."""
        facts = self.facts
        if release.min_runtime and not runtime_at_least(facts.runtime_version,
                                                        release.min_runtime):
            raise ReleaseError(f"runtime too old: the model needs {release.min_runtime}, this "
                               f"board has {facts.runtime} {facts.runtime_version}")
        need = 2 * release.model_bytes // 2 ** 20 + MEMORY_MARGIN_MB
        available = memory_mb()[1]
        if available and available < need:
            raise ReleaseError(f"not enough memory: the model needs about {need} MB, "
                               f"{available} MB are available")

    @staticmethod
    def _plain_file(directory: Path, name: str, what: str) -> Path:
        """`name` in `directory`; ReleaseError for a name that would leave it."""
        path = directory / Path(name).name
        if path.name != name:
            raise ReleaseError(f"{what} {name!r} is not a plain file name")
        return path

    def _fetch_chunks(self, release: Release, digests: tuple[str, ...],
                      what: str) -> dict[str, bytes]:
        """The retained chunks named by `digests`, by sha256 (their hashes are checked by
        whoever puts them together)."""
        topics = [self.topics.model_chunk(digest) for digest in digests]
        probe = self.topics.probe(f"{self.name}.fetch")
        log.info("release %s: fetching %s: %d chunk(s)", release.release, what, len(digests))
        try:
            retained = read_retained(self.session, sorted(set(topics)), probe, FETCH_TIMEOUT)
        except BrokerError as exc:
            raise ReleaseError(f"cannot fetch {what}: {exc}") from exc
        finally:
            for topic in {*topics, probe}:
                self.session.unsubscribe(topic)
        return {topic.rsplit("/", 1)[-1]: payload for topic, payload in retained.items()}

    def _fetch(self, release: Release, model: Path) -> None:
        data = release.assemble(self._fetch_chunks(
            release, release.chunks, f"the model ({release.model_bytes} bytes)"))
        partial_file = model.with_suffix(".part")
        partial_file.write_bytes(data)
        partial_file.replace(model)

    # -- what it says ---------------------------------------------------------------------

    def _say(self, release_id: str | None, state: str, stage: int | None,
             reason: str = "") -> None:
        total, available = memory_mb()
        facts = self.facts
        report = NodeReport(
            node=self.name, architecture=facts.architecture, runtime=facts.runtime,
            runtime_version=facts.runtime_version, memory_mb=total, available_mb=available,
            mmacs_per_s=facts.mmacs_per_s, cpus=facts.cpus, version=__version__,
            release=release_id, state=state, stage=stage, reason=reason,
            serving=tuple(sorted(rid for rid, s in self._serving.items() if s.node)))
        text = report.to_json()
        if text != self._said:
            self._said = text
            self.session.announce(self.topics.info(self.name), text)
            log.info("%s: %s%s", f"release {release_id}" if release_id else "no release",
                     state, f" ({reason})" if reason else "")

    def _report(self) -> None:
        newest = self.newest()
        with self._changed:
            refusal = self._refused.get(newest) if newest else None
            release = self._releases.get(newest) if newest else None
        if newest is None or (refusal is None and release is None):
            self._say(None, "standby", None)
            return
        if refusal is not None:
            self._say(newest, "refused", None, refusal)
            return
        assert release is not None
        stage = release.role(self.name)
        serving = self._serving.get(newest)
        if stage is None:
            self._say(newest, "standby", None)
        elif serving is not None and serving.node is not None:
            self._say(newest, "ready", stage)
        else:
            self._say(newest, "fetching", stage)


def run_node(config: NodeConfig, cache: Path, stop: threading.Event | None = None) -> int:
    """`aiotedge node` from start to stop (SIGTERM/SIGINT by default): 0 when stopped."""
    stop = stop or stop_on_signals()
    daemon = NodeDaemon(config, cache)
    daemon.session.start()
    try:
        if not wait_for_broker(daemon.session, stop):
            return 0
        daemon.session.set_online()
        systemd.notify(f"READY=1\nSTATUS=node {daemon.name} following the releases of "
                       f"{config.pipeline.name}")
        daemon.run(stop)
        systemd.notify("STOPPING=1")
    finally:
        daemon.session.stop()
    return 0

