"""`aiotedge-convert heal`: the fleet heals itself (docs/fleet.md, self-healing).

A coordinator follows what the deployer follows (nodes' availability and reports, releases,
the live pointer) and re-plans the live release when its membership changes:

* a node of the live release offline for `loss_grace` seconds: a release for the nodes left,
  switched to by abandoning the live one (`Deployer.abandon_for`: cameras resend what it held);
* a node the live release does not use online for `join_settle` seconds (60 s when it was seen
  going offline in the minute before: a bouncing board causes no re-plan storm): a release
  for every node online, rolled out as `deploy` does, if the planner's forecast gains at least
  `min_gain` over the live release's.

The model comes from the live release's chunks on the broker, so a coordinator needs no file
and any coordinator can take over. One decides at a time: each says it is present, retained,
with its start time (its Last Will clears it); the oldest present decides, the others stand by
and take over when its presence goes, withdrawing the release it was making.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import tempfile
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiotedge_converter.errors import ConverterError
from aiotedge_converter.fleet import (
    DEFAULT_TIMEOUT,
    DeployCancelledError,
    Deployer,
    DeployError,
    Member,
    build_release,
    forecast,
)

from aiotedge.config.checks import TOPIC_LEVEL, topic_level
from aiotedge.config.loader import NodeConfig
from aiotedge.contracts.release import RELEASE_ID, Release
from aiotedge.tflite.graph import Graph, load_graph

log = logging.getLogger(__name__)

DEFAULT_LOSS_GRACE = 1.0
DEFAULT_JOIN_SETTLE = 10.0
DEFAULT_MIN_GAIN = 0.1
#: a node seen going offline this many seconds before it came back must stay online as long
BOUNCE_WINDOW = 60.0
#: seconds before a re-plan that failed is tried again (the membership may not have changed)
RETRY_DELAY = 5.0
_REPLAN = re.compile(r"(?P<base>.+)\.r(?P<count>\d+)")


class HealError(ConverterError):
    """A coordinator that cannot run as asked."""


@dataclass(frozen=True)
class HealOptions:
    loss_grace: float = DEFAULT_LOSS_GRACE
    join_settle: float = DEFAULT_JOIN_SETTLE
    min_gain: float = DEFAULT_MIN_GAIN
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        for name in ("loss_grace", "join_settle", "min_gain"):
            if getattr(self, name) < 0:
                raise HealError(f"--{name.replace('_', '-')} must not be negative, "
                                f"got {getattr(self, name)}")
        if self.timeout <= 0:
            raise HealError(f"--timeout must be positive, got {self.timeout}")


# -- the decisions (pure: the tests give them made-up memberships and clocks) ----------------


def next_release_id(live: str, taken: Collection[str]) -> str:
    """The re-plan of `live`: `v1` -> `v1.r1`, `v1.r1` -> `v1.r2`, skipping ids already used."""
    match = _REPLAN.fullmatch(live)
    base, count = (match["base"], int(match["count"])) if match else (live, 0)
    while True:
        count += 1
        suffix = f".r{count}"
        candidate = base[:64 - len(suffix)] + suffix
        if candidate not in taken and RELEASE_ID.fullmatch(candidate):
            return candidate


def presence(started: float) -> str:
    return json.dumps({"started": started})


def decider(present: Mapping[str, bytes]) -> str | None:
    """The coordinator that decides: the oldest present (start time, then name); a presence
    that cannot be read counts as the newest."""
    def started(name: str) -> tuple[float, str]:
        try:
            return float(json.loads(present[name])["started"]), name
        except (ValueError, KeyError, TypeError):
            return float("inf"), name
    return min(present, key=started, default=None)


def lost_nodes(live: Release, members: Mapping[str, Member], now: float,
               grace: float) -> tuple[list[str], float | None]:
    """The live release's nodes offline for `grace` seconds, and when the next one would be
    (None: no other node of it is offline)."""
    lost, due = [], []
    for node in live.nodes:
        member = members.get(node)
        if member is None or member.online:
            continue
        if now - member.since >= grace:
            lost.append(node)
        else:
            due.append(member.since + grace)
    return lost, min(due, default=None)


def settle_time(member: Member, join_settle: float) -> float:
    """How long a node must stay online before it is put to work: `join_settle`, or
    BOUNCE_WINDOW when it went offline in the BOUNCE_WINDOW before it came."""
    bounced = member.went_offline is not None and member.since - member.went_offline \
        < BOUNCE_WINDOW
    return max(join_settle, BOUNCE_WINDOW) if bounced else join_settle


def settled_joiners(live: Release, members: Mapping[str, Member], now: float,
                    join_settle: float) -> tuple[list[str], float | None]:
    """The nodes online, announced and unused by the live release that have settled, and
    when the next one will have (None: no other is settling)."""
    joined, due = [], []
    for node, member in members.items():
        if not member.online or member.report is None or node in live.nodes:
            continue
        ready_at = member.since + settle_time(member, join_settle)
        if now >= ready_at:
            joined.append(node)
        else:
            due.append(ready_at)
    return joined, min(due, default=None)


def worth_it(current: float, proposed: float, min_gain: float) -> bool:
    """Whether a plan forecast at `proposed` frames/s gains at least `min_gain` (a fraction)
    over `current`."""
    return proposed - current >= current * min_gain if current > 0 else proposed > 0


# -- the coordinator ------------------------------------------------------------------------


class Coordinator:
    """Follows the fleet through a Deployer; decides while it is the oldest present."""

    def __init__(self, deployer: Deployer, options: HealOptions, scratch: Path) -> None:
        assert deployer.presence is not None
        self.deployer = deployer
        self.name = deployer.presence
        self.options = options
        self.scratch = scratch
        #: the coordinator deciding, as this one last saw it
        self.leader: str | None = None
        #: nodes of the live release seen offline, not yet for the loss grace
        self._away: set[str] = set()
        #: model sha256 -> its graph (the live release's model, fetched once)
        self._graphs: dict[str, Graph] = {}
        #: a join declined (too little gain): not weighed again for the same live release
        #: and nodes online
        self._declined: tuple[str, frozenset[str]] | None = None
        self._retry_at = 0.0

    def run(self, stop: threading.Event) -> None:
        self.deployer.say_present(presence(time.time()))
        while not stop.is_set():
            wake = self.step(time.monotonic())
            self.deployer.wait_change(None if wake is None else max(0.0, wake - time.monotonic()))

    def step(self, now: float) -> float | None:
        """Decide once; the time to look again without news (None: at the next change)."""
        leader, was = decider(self.deployer.coordinators()), self.leader
        self.leader = leader
        if leader != self.name:
            if leader != was and leader is not None:
                log.info("coordinator %s: standing by (%s decides)", self.name, leader)
            return None
        if was != self.name:
            log.info("coordinator %s: deciding", self.name)
            self.withdraw_unfinished()
        live = self.deployer.live_release()
        if live is None:
            return None
        if now < self._retry_at:
            return self._retry_at
        members = self.deployer.membership()
        lost, loss_due = lost_nodes(live, members, now, self.options.loss_grace)
        away = {n for n in live.nodes if n in members and not members[n].online}
        for node in sorted(self._away - away - set(lost)):
            log.info("%s back within the loss grace: no re-plan of %s", node, live.release)
        self._away = away - set(lost)
        if lost:
            self.replan(live, f"lost {', '.join(lost)}", abandon=True)
            return now
        if loss_due is not None:
            return loss_due  # a node of the live release is away: wait for it, join nothing
        joined, join_due = settled_joiners(live, members, now, self.options.join_settle)
        online = frozenset(n for n, m in members.items() if m.online and m.report)
        if joined and self._declined != (live.release, online) and not self.replan(
                live, f"joined {', '.join(joined)}", abandon=False):
            self._declined = (live.release, online)
        return join_due

    def withdraw_unfinished(self) -> None:
        """Releases newer than the live one (what a coordinator that died was making):
        withdrawn, so the nodes drop them. Older ones drain by themselves."""
        live = self.deployer.live_release()
        for rid, release in self.deployer.releases().items():
            if release is None or release is live or (
                    live is not None and release.created_at <= live.created_at):
                continue
            log.info("coordinator %s: withdrawing release %s (unfinished)", self.name, rid)
            self.deployer.withdraw(rid)

    def graph(self, live: Release) -> Graph:
        """The live release's model, from its chunks on the broker (every hash checked)."""
        graph = self._graphs.get(live.model_sha256)
        if graph is None:
            path = self.scratch / live.model_sha256 / live.model_file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.deployer.fetch_model(live))
            graph = self._graphs[live.model_sha256] = load_graph(path)
        return graph

    def replan(self, live: Release, event: str, *, abandon: bool) -> bool:
        """A release of the live one's model for the nodes online, made live (abandoning the
        live one, or rolled out when it gains enough). False: declined (too little gain)."""
        online = self.deployer.online_nodes()
        try:
            graph = self.graph(live)
            release, chunks = build_release(
                graph, next_release_id(live.release, self.deployer.releases()), online,
                labels=live.split().labels, kind=live.kind, chunk_bytes=live.chunk_bytes)
            speeds = {n.node: n.mmacs_per_s for n in online}
            before, after = forecast(graph, live, speeds), forecast(graph, release, speeds)
            if not abandon and not worth_it(before, after, self.options.min_gain):
                log.info("%s: %s -> not worth it: %s forecast %.1f frames/s, %.1f now "
                         "(gain under %.0f%%)", event, live.release, release.assignments, after,
                         before, 100 * self.options.min_gain)
                return False
            log.info("%s: %s -> %s (%s): %s, forecast %.1f frames/s (was %.1f)", event,
                     live.release, release.release, "abandon" if abandon else "rolling",
                     release.assignments, after, before)
            if abandon:
                self.deployer.abandon_for(release, chunks, self.options.timeout)
            else:
                self.deployer.roll_out(release, chunks, self.options.timeout)
            log.info("release %s live", release.release)
        except DeployCancelledError:
            raise
        except DeployError as exc:
            log.error("%s: re-plan of %s failed: %s; again in %.0f s", event, live.release, exc,
                      RETRY_DELAY)
            self._retry_at = time.monotonic() + RETRY_DELAY
        return True


def heal(config: NodeConfig, name: str, options: HealOptions, stop: threading.Event) -> None:
    """Coordinate until `stop`; then say this coordinator has gone."""
    if not topic_level(name):
        raise HealError(f"coordinator name {name!r} must be {TOPIC_LEVEL}")
    deployer = Deployer(config, f"aiotedge-heal-{name}", presence=name)
    with deployer, tempfile.TemporaryDirectory(prefix="aiotedge-heal-") as scratch:
        threading.Thread(target=lambda: (stop.wait(), deployer.cancel()), daemon=True,
                         name="heal-stop").start()
        with contextlib.suppress(DeployCancelledError):  # stopped while waiting
            Coordinator(deployer, options, Path(scratch)).run(stop)
        deployer.say_gone()
