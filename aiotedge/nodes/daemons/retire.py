"""`aiotedge retire`: take a node out of its pipeline for good.

A node that is only stopped leaves its persistent session on the broker (frames queued for it,
for `session_expiry`) and retained messages that `aiotedge status` and Home Assistant go on
showing: its availability, info and stats. Retiring removes them. When the node is the last
stage and no other node serves that stage, the pipeline itself is retired with it: its Home
Assistant entities, its cameras' labels and its availability go too. A camera that tracked
labels takes its counts, its events' snapshots and its own Home Assistant device with it.
Done with the node's own login, which has the rights on all of these; refused while the node
is online.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from aiotedge.config.loader import FLAGS, NodeConfig
from aiotedge.contracts.errors import ConfigError
from aiotedge.nodes.daemons.lifecycle import connect_once
from aiotedge.nodes.mqtt.session import MqttSession, read_retained, topic_matches
from aiotedge.nodes.observe.health import NodeView, PipelineView
from aiotedge.nodes.observe.homeassistant import discovery_filter

log = logging.getLogger(__name__)

#: seconds to wait for the broker's answers
TIMEOUT = 15.0


@dataclass
class Retired:
    node: str
    #: retained topics cleared
    cleared: list[str] = field(default_factory=list)
    #: whether the pipeline went with it (its last stage, nobody else serving that stage)
    pipeline: bool = False


def retire(config: NodeConfig, node: str) -> Retired:
    topics, prefix = config.topics, config.homeassistant.prefix
    session = MqttSession(config.broker, f"{node}-retire-{secrets.token_hex(3)}", one_shot=True)
    connect_once(session)
    try:
        # a camera's events: its Home Assistant device, its counts and its events' snapshots
        camera_own = [discovery_filter(topics, prefix, node), topics.camera_counts(node),
                      topics.camera_event_snapshots(node)]
        retained = read_retained(
            session, [topics.all_availability, topics.all_info, topics.all_stats,
                      topics.all_labels, topics.pipeline_availability,
                      discovery_filter(topics, prefix), *camera_own],
            topics.probe(session.client_id), TIMEOUT)
        view = PipelineView.from_retained(retained, topics)
        me = view.nodes.get(node)
        if me is None:
            raise ConfigError(f"no node {node!r} has reported on pipeline {topics.pipeline} "
                              "(--node, --pipeline)")
        if me.online:
            raise ConfigError(f"{node} is online: stop it first ({_how_to_stop(config, me)}), "
                              "then retire it")
        done = Retired(node)
        own = {topics.availability(node), topics.info(node), topics.stats(node)}
        own |= {topic for topic in retained
                if any(topic_matches(own_filter, topic) for own_filter in camera_own)}
        info = me.info
        if info is not None and info.share_group:  # a replica's room, retained for the dispatch
            own.add(topics.room(info.stage, node))
        if info is not None and info.stage == info.stages - 1 and not view.serving(info.stage):
            done.pipeline = True
            own |= {topic for topic in retained if topic.startswith(
                (f"{prefix}/", f"{topics.base}/label/")) or topic == topics.pipeline_availability}
        # its own three whether or not this login may read them back (stats: only tools may)
        for topic in sorted(own):
            session.publish(topic, b"", qos=1, retain=True).wait_for_publish(TIMEOUT)
            log.info("cleared %s", topic)
            done.cleared.append(topic)
    finally:
        session.stop()
    for client_id in (node, f"camera-{node}"):  # a stage's session, or a camera's
        _end_session(config, client_id)
    return done


def _how_to_stop(config: NodeConfig, node: NodeView) -> str:
    """Its systemd unit is named after its config file (aiotedge-stage@NAME reads
    /etc/aiotedge/NAME.toml), which may not be its node name."""
    unit = f"aiotedge-{'camera' if node.stage is None else 'stage'}"
    if config.source != FLAGS:
        return f"sudo systemctl stop {unit}@{Path(config.source).stem}"
    return f"on its board: sudo systemctl stop {unit}@NAME, for its config /etc/aiotedge/NAME.toml"


def _end_session(config: NodeConfig, client_id: str) -> None:
    """Connect once under `client_id` with a clean start and no session expiry: the broker
    drops the session it kept for it (its subscriptions and queued frames)."""
    session = MqttSession(config.broker, client_id, one_shot=True)
    connect_once(session, TIMEOUT)
    session.stop()
