"""Whether a stage fits between the stages that are online now, from their retained info.

Boards are set up one by one, by hand: two of them can end up with segments of different
splits, or two with the same stage and no shared group. Each stage says what it runs
(`NodeInfo`, retained on `.../info/<node>`), and a stage that starts reads what its online
neighbours run and refuses to start when the chain would break, instead of refusing every
frame later.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from aiotedge.config.schema import BrokerConfig
from aiotedge.contracts.events import NodeInfo
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.health import PipelineView
from aiotedge.nodes.lifecycle import wait_for_broker
from aiotedge.nodes.session import MqttSession, read_retained

log = logging.getLogger(__name__)


def check_chain(broker: BrokerConfig, topics: Topics, me: NodeInfo,
                stop: threading.Event) -> tuple[bool, NodeInfo | None] | None:
    """Whether this stage fits between the stages online now, and what it said about itself
    when it last ran (None: told to stop first).

    Read on a connection of its own, before the stage connects: the stage's own session may
    get frames at once, which must wait until the check is done.
    """
    session = MqttSession(broker, f"{me.node}-check")
    session.start()
    try:
        if not wait_for_broker(session, stop):
            return None
        retained = read_retained(session, [topics.all_info, topics.all_availability],
                                 topics.probe(session.client_id))
    finally:
        session.stop()
    neighbours = online_nodes(PipelineView.from_retained(retained, topics))
    errors, warnings = chain_problems(me, neighbours.values())
    for warning in warnings:
        log.warning("%s", warning)
    for error in errors:
        log.error("not starting: %s", error)
    previous = NodeInfo.parse(retained.get(topics.info(me.node), b""))
    return not errors, previous


def online_nodes(view: PipelineView) -> dict[str, NodeInfo]:
    """Node name -> what it runs, for every node online that said what it runs."""
    return {node.name: node.info for node in view.nodes.values()
            if node.online and node.info is not None}


def chain_problems(me: NodeInfo, online: Iterable[NodeInfo]) -> tuple[list[str], list[str]]:
    """(errors, warnings) about starting `me` beside the nodes that are online now.

    Errors break frames (tensors that cannot pass between neighbours, two copies of a stage
    that would both process every frame); warnings are worth a look (another manifest with
    matching tensors, e.g. the same split with new labels).
    """
    errors: list[str] = []
    warnings: list[str] = []
    for other in online:
        if other.node == me.node:
            continue  # our own info from before a restart
        where = f"node {other.node} (stage {other.stage}, manifest {other.manifest[:12]})"
        if other.stage == me.stage - 1 and not other.output.matches(me.input):
            errors.append(f"{where} sends {other.output}, this stage takes {me.input}: "
                          "the boards run segments of different splits")
        elif other.stage == me.stage + 1 and not me.output.matches(other.input):
            errors.append(f"{where} takes {other.input}, this stage sends {me.output}: "
                          "the boards run segments of different splits")
        elif other.stage == me.stage and not (me.share_group
                                                and me.share_group == other.share_group):
            errors.append(f"{where} already serves stage {me.stage}: replicas of a stage need "
                          "the same share_group on every copy, or each would take every frame")
        elif other.manifest != me.manifest:
            warnings.append(f"{where} runs another manifest than this node "
                            f"({me.manifest[:12]})")
    return errors, warnings
