"""`aiotedge status`: the pipeline and every node, from the retained messages on the broker.

Once (a table, or `--json`), or refreshed in place until Ctrl-C (`--watch`, like `top`). The
exit status says whether the pipeline is healthy, for scripts: 0 when every stage has a node
online and all run one manifest, 1 otherwise, 2 when the broker cannot be used.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiotedge.config.sections import BrokerConfig
from aiotedge.contracts.errors import BrokerError
from aiotedge.contracts.extras import import_extra
from aiotedge.contracts.release import LiveRelease, NodeReport, ReleaseTopics
from aiotedge.contracts.topics import BROKER_DROPPED, Topics
from aiotedge.nodes.daemons.lifecycle import connect_once, stop_on_signals
from aiotedge.nodes.mqtt.session import MqttSession, RetainedRefusedError, read_retained
from aiotedge.nodes.mqtt.transport import MessageHandler, Received
from aiotedge.nodes.observe.health import NodeView, PipelineView

#: short headers, so that a pipeline fits 80 columns; the model is said once, in the summary
HEADER = ("node", "state", "stage", "fps", "latency", "infer", "queue", "in", "out", "rej",
          "drop", "age")
LEGEND = "latency p50/p99 and infer p50 in ms; rej(ected), drop(ped) frames; age of stats"
#: the columns of figures, aligned to the right
_FIGURES = range(3, len(HEADER))


def _filters(topics: Topics) -> list[str]:
    return [topics.all_availability, topics.all_info, topics.all_stats]


def read_pipeline(broker: BrokerConfig, topics: Topics, timeout: float = 10.0) -> PipelineView:
    """The pipeline as its retained messages say now (BrokerError when the broker cannot be
    used, at once)."""
    session = MqttSession(broker, f"status-{secrets.token_hex(4)}", one_shot=True)
    connect_once(session, timeout)
    try:
        retained = _read(session, topics, timeout)
        retained.update(_read_broker(session, topics, timeout))
    finally:
        session.stop()
    return PipelineView.from_retained(retained, topics)


def _read_broker(session: MqttSession, topics: Topics, timeout: float = 10.0,
                 follow: MessageHandler | None = None) -> dict[str, bytes]:
    """The broker's own count of dropped messages, where it publishes it and this login may
    read it ($SYS); nothing where not."""
    try:
        return read_retained(session, [BROKER_DROPPED], topics.probe(session.client_id),
                             timeout, follow)
    except RetainedRefusedError:
        return {}


def _read(session: MqttSession, topics: Topics, timeout: float = 10.0,
          follow: MessageHandler | None = None) -> dict[str, bytes]:
    """The pipeline's retained messages; BrokerError saying what the broker refused, and
    whether that pipeline has nodes at all."""
    try:
        return read_retained(session, _filters(topics), topics.probe(session.client_id),
                             timeout, follow)
    except RetainedRefusedError as exc:
        if exc.reading or exc.retained:
            # its nodes are there (or may be): this login lacks a right on them
            raise BrokerError(
                f"pipeline {topics.pipeline}: access denied: {exc} (the broker's ACL must let "
                f"this login read {topics.base}/# and write {topics.probe('<client id>')})"
            ) from None
        raise BrokerError(
            f"no node of pipeline {topics.pipeline!r} has reported to this login (a typo in "
            f"--pipeline?); and {exc}, as an ACL does on a pipeline it does not name"
        ) from None


def collect_status(broker: BrokerConfig, topics: Topics, timeout: float = 10.0
                   ) -> dict[str, dict[str, Any]]:
    """Node -> what it said (availability, info, stats): `aiotedge status --json`."""
    return nodes_json(read_pipeline(broker, topics, timeout))


def status_exit(view: PipelineView) -> int:
    return 1 if view.problems() else 0


def nodes_json(view: PipelineView) -> dict[str, dict[str, Any]]:
    """Node -> what it said: availability, info, stats (`aiotedge status --json`)."""
    nodes: dict[str, dict[str, Any]] = {}
    for name, node in sorted(view.nodes.items()):
        said: dict[str, Any] = {}
        if node.availability:
            said["availability"] = node.availability
        if node.info is not None:
            said["info"] = node.info.as_dict()
        if node.stats:
            said["stats"] = node.stats
        nodes[name] = said
    return nodes


def status_lines(view: PipelineView, pipeline: str, now: float | None = None
                 ) -> tuple[str, list[tuple[str, ...]], list[str]]:
    """(summary line, one row per node worth listing, notes: nodes gone and problems)."""
    now = time.time() if now is None else now
    listed = sorted((n for n in view.nodes.values() if not view.is_gone(n)),
                    key=lambda n: (n.stage is None, n.stage or 0, n.name))
    rows = [_row(node, view, now) for node in listed]
    gone = sorted((n for n in view.nodes.values() if view.is_gone(n)),
                  key=lambda n: -(n.last_seen or 0))
    notes = []
    if gone:
        notes.append("gone: " + ", ".join(
            f"{n.name} ({_seen(n.last_seen, now)})" for n in gone))
    notes += [f"problem: {problem}" for problem in view.problems()]
    notes += _board_notes(listed)
    if view.broker_dropped:
        notes.append(f"broker: {view.broker_dropped} messages dropped at its queue limits since "
                     "it started (frames among them count as missed at stage 0)")
    return _summary(view, pipeline), rows, notes


def format_status(view: PipelineView, pipeline: str, now: float | None = None) -> str:
    """The summary, one line per node (one space between columns, as `--watch` has, to fit
    80 columns), the legend and the notes."""
    summary, rows, notes = status_lines(view, pipeline, now)
    if not view.nodes:
        return f"{summary}\nno node has reported on this pipeline"
    table = [HEADER, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = [" ".join(cell.rjust(width) if column in _FIGURES else cell.ljust(width)
                      for column, (cell, width) in enumerate(zip(row, widths, strict=True)))
             .rstrip() for row in table]
    return "\n".join([summary, *lines, LEGEND, *notes])


def watch_status(broker: BrokerConfig, topics: Topics, interval: float,
                 stop: threading.Event | None = None) -> int:
    """Redraw the status in place every `interval` s until Ctrl-C; the exit status of the
    last view. Follows the retained topics live on one connection."""
    import_extra("rich", extra="status", feature="flags: --watch")
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    stop = stop or stop_on_signals()
    view, lock = PipelineView(), threading.Lock()

    def take(message: Received) -> None:
        with lock:
            view.update(topics, message.topic, message.payload)

    session = MqttSession(broker, f"status-{secrets.token_hex(4)}", one_shot=True)
    connect_once(session)

    def screen() -> Group:
        with lock:
            summary, rows, notes = status_lines(view, topics.pipeline)
        # one space between columns, as the plain table; no figure is ever cut: only a node
        # name too long for the terminal folds onto a second line
        table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0))
        for column, title in enumerate(HEADER):
            table.add_column(title, justify="right" if column in _FIGURES else "left",
                             no_wrap=column > 0, overflow="fold",
                             min_width=max([len(title), *(len(row[column]) for row in rows)]))
        for row in rows:
            table.add_row(*row, style=None if row[1] == "online" else "bold red")
        stamp = time.strftime("%H:%M:%S")
        return Group(Text(f"{summary}   ({stamp}, every {interval:g} s; Ctrl-C quits)"),
                     table, Text(LEGEND, style="dim"),
                     *(Text(note, style="red" if note.startswith("problem") else "dim")
                       for note in notes))

    try:
        _read(session, topics, follow=take)  # a whole first screen, then follows them
        _read_broker(session, topics, follow=take)
        with Live(screen(), console=Console(), auto_refresh=False) as live:
            while not stop.wait(interval):
                live.update(screen(), refresh=True)
    finally:
        session.stop()
    with lock:
        return status_exit(view)


def _summary(view: PipelineView, pipeline: str) -> str:
    state = "available" if view.available else "NOT available"
    parts = [f"pipeline {pipeline}: {state}"]
    if view.stages is not None:
        manifest = view.manifest or ""
        model = next((n.info.model for n in view.nodes.values()
                      if n.info and n.info.manifest == manifest), "?")
        parts.append(f"{view.stages} stages of {model} (manifest {manifest[:12]})")
    if (bottleneck := view.bottleneck) is not None:
        stage, capacity = bottleneck
        parts.append(f"bottleneck: stage {stage}, {capacity:.1f} fps at most")
    return "; ".join(parts)


def _row(node: NodeView, view: PipelineView, now: float) -> tuple[str, ...]:
    """One node's cells; the model is the summary's, so only a node on another one says so."""
    return (
        node.name + (" (OTHER SPLIT)" if node.name in view.odd_ones else ""),
        node.availability or "?",
        "" if node.stage is None else str(node.stage),
        _number(node.figure("fps"), 1),
        _pair(node, "latency_ms"),
        _number(node.figure("inference_ms", "p50"), 1),
        _number(node.figure("queue_depth"), 0),
        *(_count(node.figure(key)) for key in ("frames_in", "frames_out", "rejected", "dropped")),
        _age(node.last_seen, now) if node.last_seen else "",
    )


def _board_notes(nodes: list[NodeView]) -> list[str]:
    """What the boards say of their CPU (notes, as the table has no room left at 80 columns):
    its temperature, and the firmware's throttling now or since boot, where they report it."""
    temperatures = [f"{node.name} {value:.0f} °C" for node in nodes
                    if (value := node.figure("cpu_temp_c")) is not None]
    notes = [f"CPU temperature: {', '.join(temperatures)}"] if temperatures else []
    for key, when in (("throttled_now", "THROTTLED now"), ("throttled_since_boot",
                                                         "throttled since boot")):
        said = [f"{node.name} ({', '.join(map(str, conditions))})" for node in nodes
                if isinstance(conditions := node.stats.get(key), list) and conditions]
        if said:
            notes.append(f"{when}: {'; '.join(said)}")
    return notes


def _pair(node: NodeView, key: str) -> str:
    p50, p99 = node.figure(key, "p50"), node.figure(key, "p99")
    return "" if p50 is None or p99 is None else f"{p50:.0f}/{p99:.0f}"


def _number(value: float | None, decimals: int) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


def _count(value: float | None) -> str:
    """A frame count in at most 5 characters: 9999, 12.3k, 123k, 1.2M (--json has them whole)."""
    if value is None:
        return ""
    if value >= 999_500:  # not "1000k"
        scaled, unit = value / 1e6, "M"
    elif value >= 1e4:
        scaled, unit = value / 1e3, "k"
    else:
        return f"{value:.0f}"
    return f"{scaled:.1f}{unit}" if scaled < 99.95 else f"{scaled:.0f}{unit}"


def _seen(timestamp: float | None, now: float) -> str:
    return "never seen" if timestamp is None else f"{_age(timestamp, now)} ago"


def _age(timestamp: float, now: float) -> str:
    age = max(0.0, now - timestamp)
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if age >= seconds:
            return f"{age / seconds:.0f} {unit}"
    return f"{age:.0f} s"


# -- releases (docs/fleet.md) ---------------------------------------------------------------


@dataclass(frozen=True)
class FleetView:
    """The live release, and what each node daemon says it does."""

    live: str | None
    nodes: tuple[NodeReport, ...]

    def topics(self, topics: Topics) -> Topics:
        """The live release's chain, where its stages report; the pipeline's without one."""
        if self.live is None:
            return topics
        return ReleaseTopics(topics.pipeline, topics.prefix, release=self.live)

    def lines(self) -> list[str]:
        if self.live is None and not self.nodes:
            return []
        lines = [f"live release: {self.live or 'none'}"]
        for node in self.nodes:
            role = "standby" if node.stage is None else f"stage {node.stage}"
            serving = f", serving {', '.join(node.serving)}" if node.serving else ""
            reason = f": {node.reason}" if node.reason else ""
            lines.append(f"node {node.node}: release {node.release or '-'} {node.state} "
                         f"({role}{serving}){reason}")
        return lines


def read_fleet(broker: BrokerConfig, topics: Topics, timeout: float = 10.0) -> FleetView:
    """The live pointer and the node daemons' reports, as retained now."""
    session = MqttSession(broker, f"status-{secrets.token_hex(4)}", one_shot=True)
    connect_once(session, timeout)
    try:
        retained = read_retained(session, [topics.live_release, topics.all_info],
                                 topics.probe(session.client_id), timeout)
    except RetainedRefusedError:
        retained = {}
    finally:
        session.stop()
    live = LiveRelease.parse(retained.get(topics.live_release, b""))
    reports = [r for payload in retained.values() if (r := NodeReport.parse(payload))]
    return FleetView(live.release if live else None,
                     tuple(sorted(reports, key=lambda r: r.node)))
