"""A stage daemon's footprint: resident memory with its segment loaded, and start-to-ready time.

    python bench/daemon.py [--stages 5] [--model M.tflite] [--starts 5]

For every stage of the split: start `aiotedge stage` against a private mosquitto, time from
process start to its retained `online` (sent right after READY=1, once the broker connection is
up and the segment loaded), read its RSS from /proc, then stop it with SIGTERM. Targets from
the issue: RSS under 70 MB, ready within 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from aiotedge_converter.cli import main as convert

from aiotedge.contracts.manifest import Manifest
from aiotedge.nodes.mqtt.broker import LocalBroker
from aiotedge.nodes.mqtt.session import MqttSession
from aiotedge.nodes.observe.metrics import resident_bytes
from bench.benchdoc import table, write_section
from support.daemons import aiotedge_command, stage_command
from support.paths import SHARED_MODEL


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def start_once(manifest_dir: Path, index: int, broker, watcher_events) -> tuple[float, float]:
    node = f"bench-stage{index}"
    online = watcher_events.setdefault(node, threading.Event())
    online.clear()
    started = time.perf_counter()
    process = subprocess.Popen(
        stage_command(aiotedge_command(node), "--threads", "1", manifest=manifest_dir,
                      index=index, node=node, broker=broker.address, pipeline="bench"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    if not online.wait(30):
        process.kill()
        raise RuntimeError(f"{node} did not come online")
    ready_s = time.perf_counter() - started
    memory = rss_mb(process.pid)
    process.terminate()
    process.wait(30)
    return ready_s, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path,
                        default=SHARED_MODEL)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--starts", type=int, default=5, help="starts per stage (median)")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-split-"))
    if convert(["split", str(args.model), "--stages", str(args.stages),
                    "--out", str(out)]) != 0:
        raise SystemExit("aiotedge-convert split failed (its message is above)")
    manifest = Manifest.load(out)

    events: dict[str, threading.Event] = {}

    def on_availability(message) -> None:
        node = message.topic.rsplit("/", 1)[-1]
        if message.payload == b"online" and node in events:
            events[node].set()

    rows = []
    with LocalBroker() as broker:
        watcher = MqttSession(broker.address, "bench-watcher")
        watcher.subscribe("aiotedge/bench/availability/+", on_availability)
        watcher.start()
        watcher.wait_connected(10)
        for index, stage in enumerate(manifest.stages):
            runs = [start_once(out, index, broker, events) for _ in range(args.starts)]
            ready = statistics.median(r[0] for r in runs)
            memory = statistics.median(r[1] for r in runs)
            rows.append((index, f"{(out / stage.file).stat().st_size / 1024:.0f}",
                         f"{ready:.2f}", f"{memory:.1f}"))
        watcher.stop()
    worst_ready = max(float(r[2]) for r in rows)
    worst_rss = max(float(r[3]) for r in rows)
    body = "\n\n".join([
        f"Model `{args.model.name}` split into {args.stages}; median of {args.starts} starts "
        "per stage; 1 interpreter thread.",
        table(("stage", "segment KB", "start → ready s", "RSS MB (segment loaded)"), rows),
        f"Worst: ready in {worst_ready:.2f} s (target 2 s), RSS {worst_rss:.1f} MB "
        f"(target 70 MB). For scale, this benchmark's own Python process holds "
        f"{resident_bytes() / 2**20:.0f} MB.",
    ])
    print(body)
    write_section("Stage daemon: memory and start-to-ready", body)


if __name__ == "__main__":
    main()
