"""Whether a stage fits between the stages that are online, from their retained info.

Boards are set up one by one, by hand: two of them can end up with segments of different
splits, or two with the same stage and no shared group. Each stage says what it runs
(`NodeInfo`, retained on `.../info/<node>`), and a stage that starts reads what its online
neighbours run and refuses to start when the chain would break, instead of refusing every
frame later. Boards started at the same moment all pass that check, none seeing the others
online yet: so a running stage keeps watching its neighbours and reports one that does not fit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiotedge.contracts.events import ErrorEvent, NodeInfo
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.mqtt.transport import Messaging
from aiotedge.nodes.observe.health import PipelineView
from aiotedge.nodes.observe.metrics import Counters

log = logging.getLogger(__name__)


def check_chain(view: PipelineView, me: NodeInfo) -> tuple[bool, NodeInfo | None]:
    """Whether this stage fits between the stages online in `view` (the pipeline as the
    broker's retained messages said it when the stage connected), and what it said about
    itself when it last ran (its own retained info; None the first time)."""
    errors, warnings = chain_problems(me, online_nodes(view).values())
    for warning in warnings:
        log.warning("%s", warning)
    for error in errors:
        log.error("not starting: %s", error)
    own = view.nodes.get(me.node)
    return not errors, own.info if own is not None else None


class ChainWatch:
    """Reports, while a stage serves, each online neighbour that does not fit it.

    Follows the pipeline's view the stage keeps from the nodes' retained info and availability
    (`check`, given to PipelineAvailability as a follower). A problem is reported once, when it
    appears: logged, counted (`chain_errors`) and published as an error event naming the other
    node; the same retained messages said again (a reconnect) report nothing new. The stage
    keeps serving: which of two boards that do not fit is the wrong one cannot be told here.
    A problem that clears (the neighbour went offline, or came back fitting) is logged, and
    reported again if it comes back.
    """

    def __init__(self, session: Messaging, topics: Topics, me: NodeInfo, counters: Counters,
                 qos: int) -> None:
        self._session = session
        self._topics = topics
        self._me = me
        self._counters = counters
        self._qos = qos
        #: each problem reported and not cleared since -> the info topic of the node it is about
        self._reported: dict[str, str] = {}

    def check(self, view: PipelineView) -> None:
        """After every change of the view (on the network thread, under the view's lock)."""
        found = {problem: self._topics.info(name)
                 for name, info in online_nodes(view).items()
                 for problem in chain_problems(self._me, [info])[0]}
        for problem in self._reported.keys() - found.keys():
            log.info("chain problem gone: %s", problem)
        for problem, topic in found.items():
            if problem not in self._reported:
                self._report(problem, topic)
        self._reported = found

    def _report(self, problem: str, topic: str) -> None:
        log.error("chain broken, serving on: %s", problem)
        self._counters.add("chain_errors")
        event = ErrorEvent(node=self._me.node, reason=problem, stage=self._me.stage, topic=topic)
        self._session.publish(self._topics.errors, event.to_json(), qos=self._qos)


def online_nodes(view: PipelineView) -> dict[str, NodeInfo]:
    """Node name -> what it runs, for every node online that said what it runs."""
    return {node.name: node.info for node in view.nodes.values()
            if node.online and node.info is not None}


def chain_problems(me: NodeInfo, online: Iterable[NodeInfo]) -> tuple[list[str], list[str]]:
    """(errors, warnings) about `me` serving beside the nodes that are online now.

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
