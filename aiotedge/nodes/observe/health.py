"""A pipeline's health, read from its nodes' retained messages: who is online, which stage each
serves on which manifest, which nodes have gone, the bottleneck, and whether the pipeline as a
whole can serve frames.

`aiotedge status` shows it. One stage keeps the pipeline's retained availability
(`<prefix>/<pipeline>/availability`, like Frigate's `available`) up to date with it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiotedge.contracts.events import NodeInfo
from aiotedge.contracts.topics import BROKER_DROPPED, OFFLINE, ONLINE, Topics, broker_count
from aiotedge.nodes.mqtt.transport import Messaging, Received

log = logging.getLogger(__name__)


@dataclass
class NodeView:
    """One node as its retained messages describe it."""

    name: str
    #: "online", "offline", or "" when the node never said
    availability: str = ""
    info: NodeInfo | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def online(self) -> bool:
        return self.availability == ONLINE

    @property
    def stage(self) -> int | None:
        """The stage it serves (None: a camera, or a node that said nothing of it)."""
        if self.info is not None:
            return self.info.stage
        stage = self.stats.get("stage")
        return stage if isinstance(stage, int) else None

    @property
    def last_seen(self) -> float | None:
        """When it last published its stats (its last sign of life the broker keeps)."""
        timestamp = self.stats.get("timestamp")
        return float(timestamp) if isinstance(timestamp, int | float) else None

    def figure(self, key: str, percentile: str | None = None) -> float | None:
        """A number from its stats (`latency_ms`, "p50"), None when absent or not a number."""
        value = self.stats.get(key)
        if percentile is not None:
            value = value.get(percentile) if isinstance(value, dict) else None
        return float(value) if isinstance(value, int | float) else None


@dataclass
class PipelineView:
    """Every node of one pipeline, and what follows from them."""

    nodes: dict[str, NodeView] = field(default_factory=dict)
    #: messages the broker dropped at its queue limits since it started (None: it does not
    #: say, or this login may not read its $SYS topics)
    broker_dropped: int | None = None

    @classmethod
    def from_retained(cls, retained: dict[str, bytes], topics: Topics) -> PipelineView:
        view = cls()
        for topic, payload in retained.items():
            view.update(topics, topic, payload)
        return view

    def update(self, topics: Topics, topic: str, payload: bytes) -> None:
        """Take one retained message (an empty payload deletes what it held)."""
        if topic == BROKER_DROPPED:
            self.broker_dropped = broker_count(payload)
            return
        kind, _, name = topic.removeprefix(f"{topics.base}/").partition("/")
        if not name or "/" in name or kind not in ("availability", "info", "stats"):
            return
        node = self.nodes.setdefault(name, NodeView(name))
        if kind == "availability":
            node.availability = payload.decode(errors="replace")
        elif kind == "info":
            node.info = NodeInfo.parse(payload) if payload else None
        else:
            node.stats = _json_object(payload)
        if not (node.availability or node.info or node.stats):
            del self.nodes[name]

    def copy_without(self, name: str) -> PipelineView:
        """The pipeline as it will be once `name` has gone offline."""
        nodes = dict(self.nodes)
        if name in nodes:
            nodes[name] = NodeView(name, OFFLINE, nodes[name].info, nodes[name].stats)
        return PipelineView(nodes)

    @property
    def stages(self) -> int | None:
        """How many stages the split has, as the online stages say (None: nobody says)."""
        counts = Counter(n.info.stages for n in self.nodes.values() if n.online and n.info)
        return counts.most_common(1)[0][0] if counts else None

    def serving(self, stage: int) -> list[NodeView]:
        return [n for n in self.nodes.values() if n.online and n.stage == stage]

    @property
    def missing(self) -> list[int]:
        """Stages of the split no online node serves."""
        return [k for k in range(self.stages or 0) if not self.serving(k)]

    @property
    def available(self) -> bool:
        """Every stage of the split has a node online: frames can go through."""
        return self.stages is not None and not self.missing

    @property
    def manifest(self) -> str | None:
        """The manifest most online stages run: the pipeline's."""
        counts = Counter(n.info.manifest for n in self.nodes.values() if n.online and n.info)
        return counts.most_common(1)[0][0] if counts else None

    @property
    def odd_ones(self) -> list[str]:
        """Online nodes that run another manifest than the pipeline's."""
        return sorted(n.name for n in self.nodes.values()
                      if n.online and n.info and n.info.manifest != self.manifest)

    def is_gone(self, node: NodeView) -> bool:
        """Offline, and not missed: its stage is served by another node (or it is a camera,
        a tool, or a stage of another split). Such nodes are summed up, not listed."""
        if node.online:
            return False
        stage = node.stage
        if stage is None or (node.info and node.info.manifest != self.manifest and self.manifest):
            return True
        return bool(self.serving(stage)) or stage >= (self.stages or stage + 1)

    @property
    def bottleneck(self) -> tuple[int, float] | None:
        """(stage, the most frames per second it can serve) of the slowest stage: its
        service time per frame shared among its online replicas. None before any frame."""
        capacity = {}
        for stage in range(self.stages or 0):
            times = [t for n in self.serving(stage) if (t := n.figure("service_ms", "p50"))]
            if times:
                capacity[stage] = sum(1000.0 / t for t in times)
        if not capacity:
            return None
        slowest = min(capacity, key=capacity.__getitem__)
        return slowest, capacity[slowest]

    def problems(self) -> list[str]:
        """What keeps the pipeline from being healthy; empty when every stage is online and
        on one manifest (`aiotedge status` exits 0 then)."""
        found = []
        if not self.nodes:
            return ["no node has reported on this pipeline"]
        if self.stages is None:
            found.append("no stage is online")
        for stage in self.missing:
            found.append(f"stage {stage} has no node online")
        for name in self.odd_ones:
            info = self.nodes[name].info
            assert info is not None
            found.append(f"{name} runs manifest {info.manifest[:12]}, the others "
                         f"{(self.manifest or '')[:12]}: a board with another split")
        return found


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload) if payload else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class PipelineAvailability:
    """Keeps the pipeline's retained availability from a stage's own session: `online` while
    every stage has a node online, `offline` otherwise; it changes only when that changes.

    One stage node says it, the owner: the online stage node first by name. Every stage sees
    the nodes' messages in the broker's order, so they agree on the owner without talking.
    (When every stage said it, each from a view a moment old, one stage stopping made it flap:
    offline, online, online, offline within 10 ms.) The owner says it when it differs from
    what the broker holds, and again after its reconnects; `offline` is not said over an
    absent one (a pipeline `aiotedge retire` removed stays removed). An owner that stops says
    the pipeline as it will be without it; its successor, seeing the same, leaves it alone.
    A dead owner's Last Will makes the next one owner. Subscribed at QoS 0: a stage
    acknowledges its QoS 1 messages by hand. The view it keeps is handed to each of
    `followers` after every node's message (the stage's chain watch), so a stage follows its
    pipeline once.
    """

    def __init__(self, session: Messaging, topics: Topics, node: str,
                 followers: Sequence[Callable[[PipelineView], None]] = ()) -> None:
        self._session = session
        self._topics = topics
        self._node = node
        self._followers = tuple(followers)
        self._view = PipelineView()
        #: what the broker holds on the pipeline's topic, as last seen ("": nothing)
        self._held = ""
        self._left = False
        self._lock = threading.Lock()
        for topic_filter in (topics.all_availability, topics.all_info):
            session.subscribe(topic_filter, self._on_node, qos=0)
        session.subscribe(topics.pipeline_availability, self._on_pipeline, qos=0)

    def view(self) -> PipelineView:
        """The pipeline as the broker's messages so far say it is (a copy)."""
        with self._lock:
            return PipelineView(dict(self._view.nodes))

    def follow(self, follower: Callable[[PipelineView], None]) -> None:
        """Hand the view to `follower` too, after every node's message from now on."""
        with self._lock:
            self._followers += (follower,)

    def leaving(self) -> None:
        """Before this node says offline: the owner says the pipeline as it will be without
        it; from now on this node says nothing more of it."""
        with self._lock:
            if self._owns():
                self._say(self._view.copy_without(self._node))
            self._left = True

    def _on_node(self, message: Received) -> None:
        with self._lock:
            self._view.update(self._topics, message.topic, message.payload)
            self._keep()
            for follow in self._followers:
                follow(self._view)

    def _on_pipeline(self, message: Received) -> None:
        with self._lock:
            self._held = message.payload.decode(errors="replace")
            self._keep()

    def _owns(self) -> bool:
        stages = [n.name for n in self._view.nodes.values() if n.online and n.info is not None]
        return bool(stages) and min(stages) == self._node

    def _keep(self) -> None:
        if self._left:
            return
        if self._owns():
            self._say(self._view)
        else:  # the owner says it, after its reconnects too
            self._session.withdraw(self._topics.pipeline_availability)

    def _say(self, view: PipelineView) -> None:
        state = ONLINE if view.available else OFFLINE
        if state == self._held or (state == OFFLINE and not self._held):
            if not self._held:  # removed: a reconnect must not bring it back
                self._session.withdraw(self._topics.pipeline_availability)
            return
        self._held = state
        log.info("pipeline %s is %s", self._topics.pipeline, state)
        # said again after a reconnect: a broker restarted without persistence forgets it
        self._session.announce(self._topics.pipeline_availability, state)
