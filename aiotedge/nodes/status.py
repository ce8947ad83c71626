"""`aiotedge status`: every node's retained availability and stats, read from the broker."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from aiotedge.config.schema import BrokerConfig
from aiotedge.contracts.errors import BrokerError
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.session import MqttSession, read_retained


def collect_status(broker: BrokerConfig, topics: Topics, timeout: float = 10.0) -> dict[str, Any]:
    """Node name -> {"availability": ..., "stats": {...}} from the retained messages."""
    session = MqttSession(broker, f"status-{secrets.token_hex(4)}")
    session.start()
    try:
        problem = session.first_attempt(timeout)
        if problem is not None:
            raise BrokerError(f"cannot use the broker at {broker}: {problem}")
        retained = read_retained(
            session, [topics.all_availability, topics.all_stats], topics.probe(session.client_id),
            timeout,
        )
    finally:
        session.stop()
    nodes: dict[str, dict[str, Any]] = {}
    for topic, payload in retained.items():
        kind, node = topic.rsplit("/", 2)[-2:]
        text = payload.decode(errors="replace")
        nodes.setdefault(node, {})[kind] = json.loads(text) if kind == "stats" else text
    return nodes


def format_status(nodes: dict[str, Any]) -> str:
    if not nodes:
        return "no nodes have reported on this pipeline"
    header = ("node", "state", "stage", "in", "out", "rejected", "dropped", "queue",
              "infer p50/p99 ms", "e2e p50/p99 ms", "cpu %", "rss MB", "stats age")
    rows = [header]
    now = time.time()
    for name in sorted(nodes):
        info = nodes[name]
        stats = info.get("stats", {})
        rows.append((
            name,
            info.get("availability", "?"),
            str(stats.get("stage", "")),
            *(str(stats.get(key, "")) for key in
              ("frames_in", "frames_out", "rejected", "dropped", "queue_depth")),
            _pair(stats.get("inference_ms")),
            _pair(stats.get("latency_ms")),
            str(stats.get("cpu_percent", "")),
            str(stats.get("rss_mb", "")),
            f"{now - stats['timestamp']:.0f} s" if "timestamp" in stats else "",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     for row in rows)


def _pair(window: dict[str, float | None] | None) -> str:
    if not window or window.get("p50") is None:
        return ""
    return f"{window['p50']:.1f}/{window['p99']:.1f}"
