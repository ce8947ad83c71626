"""Where a stage daemon's resident memory goes: at ready, and while frames flow.

    python -m bench.memory [--stages 5] [--frames-per-stage 40] [--write-docs]

1. What the imports of a stage daemon cost: a fresh interpreter importing, one after the
   other, what `aiotedge stage` imports (each step in its own process, cumulative).
2. The daemons themselves, on loopback against a private mosquitto: a split into --stages and
   the whole model as one stage, fed the photos (two frames in flight per stage). For each
   daemon: RSS at ready, the highest RSS sampled while frames flowed, its CPU per frame, and
   /proc/PID/smaps after the frames, grouped by what holds the pages. Then the same with
   glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_), which gives large blocks back to the
   system after each frame: what that saves in memory and costs in CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from aiotedge.contracts.manifest import Manifest
from aiotedge.media.image import list_images, read_photo
from aiotedge.nodes.mqtt.broker import LocalBroker
from bench.benchdoc import table, write_section
from bench.cluster.layouts import split_model
from bench.cluster.measure import process_cpu_seconds
from bench.stagerun import StageRun
from support.daemons import StageLaunch, child_env
from support.paths import SHARED_IMAGES, SHARED_MODEL
from support.procfs import sample

#: what `aiotedge stage` imports, in the order the table adds them
IMPORTS = (
    ("Python alone", "pass"),
    ("numpy", "import numpy"),
    ("paho-mqtt (and ssl)", "import paho.mqtt.client"),
    ("Pillow", "import PIL.Image"),
    ("msgpack", "import msgpack"),
    ("LiteRT's interpreter module", "import ai_edge_litert.interpreter"),
    ("aiotedge's command line and stage node", "import aiotedge.cli"),
)
RSS = "print(int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]))"
SAMPLE_INTERVAL = 0.05
#: glibc's mmap threshold made fixed at its default (it otherwise rises to the largest block
#: freed): blocks of 128 KB and more are mapped for each frame and unmapped after it
FIXED_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def import_costs() -> list[tuple[str, float, float]]:
    """(what, RSS MB after importing it and everything before, MB it added)."""
    rows, code, previous = [], [], 0.0
    for name, statement in IMPORTS:
        code.append(statement)
        done = subprocess.run([sys.executable, "-c", "\n".join([*code, RSS])],
                              capture_output=True, text=True, check=True, env=child_env())
        megabytes = int(done.stdout.split()[-1]) / 1024
        rows.append((name, megabytes, megabytes - previous if previous else megabytes))
        previous = megabytes
    return rows


def smaps_groups(pid: int, model_files: set[str]) -> dict[str, float]:
    """Resident MB of a process by what holds the pages."""
    groups: dict[str, float] = {}
    name = ""
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields[0].endswith(":"):
                name = fields[5] if len(fields) > 5 else ""
            elif fields[0] == "Rss:":
                groups[_group(name, model_files)] = (
                    groups.get(_group(name, model_files), 0.0) + int(fields[1]) / 1024)
    return groups


def _group(name: str, model_files: set[str]) -> str:
    if name in model_files:
        return "model file (mapped)"
    if "litert" in name:
        return "LiteRT library"
    if name.endswith(".so") or ".so." in name or ".cpython-" in name:
        return "other libraries (Python, numpy, ssl, ...)"
    if name in ("[heap]", ""):
        return "heap and anonymous (Python objects, malloc, tensors)"
    return "other (stacks, ...)"


@dataclass(frozen=True)
class DaemonMemory:
    name: str
    ready_mb: float
    peak_mb: float
    cpu_ms_per_frame: float
    groups: dict[str, float]


def measure_daemons(split: Path, photos: list[tuple[str, bytes]], broker, frames_per_stage: int,
                    env: dict[str, str] | None = None) -> list[DaemonMemory]:
    manifest = Manifest.load(split)
    stages = len(manifest.stages)
    model_files = {str((split / stage.file).resolve()) for stage in manifest.stages}
    daemons = [StageLaunch(f"stage{k}", k) for k in range(stages)]
    frames = frames_per_stage * stages
    with StageRun(split, daemons, broker.address, env=env) as run:
        pids = {node: process.pid for node, process in run.processes.items()}
        ready = {node: sample(pid).rss_mb for node, pid in pids.items()}
        run.feed(photos, 2 * stages, 2 * stages)  # warm-up
        peaks = dict(ready)
        cpu = {node: process_cpu_seconds(pid) for node, pid in pids.items()}
        done = threading.Event()

        def watch() -> None:
            while not done.wait(SAMPLE_INTERVAL):
                for node, pid in pids.items():
                    peaks[node] = max(peaks[node], sample(pid).rss_mb)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        run.feed(photos, frames, 2 * stages)
        done.set()
        watcher.join()
        cpu = {node: (process_cpu_seconds(pid) - cpu[node]) * 1000 / frames
               for node, pid in pids.items()}
        groups = {node: smaps_groups(pid, model_files) for node, pid in pids.items()}
    return [DaemonMemory(f"{stages}-stage split, stage {k}", ready[f"stage{k}"],
                         peaks[f"stage{k}"], cpu[f"stage{k}"], groups[f"stage{k}"])
            for k in range(stages)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SHARED_MODEL)
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--frames-per-stage", type=int, default=40)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    photos = [(path.name, read_photo(path)) for path in list_images(args.images)]
    imports = import_costs()
    default: list[DaemonMemory] = []
    fixed: list[DaemonMemory] = []
    with tempfile.TemporaryDirectory(prefix="aiotedge-memory-") as work, LocalBroker() as broker:
        for stages in (args.stages, 1):
            split = split_model(args.model, stages, Path(work) / f"split{stages}")
            default += measure_daemons(split, photos, broker, args.frames_per_stage)
            fixed += measure_daemons(split, photos, broker, args.frames_per_stage,
                                     FIXED_THRESHOLD)
    groups = list(dict.fromkeys(group for daemon in default for group in daemon.groups))
    body = "\n\n".join([
        f"`{args.model.name}`, 1 interpreter thread, {len(photos)} photos (stage 0 decodes "
        "them); daemons on loopback against a private mosquitto, two frames in flight per "
        f"stage, {args.frames_per_stage} frames per stage measured after a warm-up. What a "
        "fresh interpreter holds after importing, one after the other, what a stage daemon "
        "imports:",
        table(("import", "RSS MB", "added MB"),
              [(name, f"{total:.1f}", f"{added:+.1f}") for name, total, added in imports]),
        "Each daemon: RSS at ready, the highest RSS sampled every "
        f"{SAMPLE_INTERVAL * 1000:.0f} ms while frames flowed and its CPU per frame, with "
        "glibc's defaults and with its mmap threshold fixed at 128 KB "
        "(`MALLOC_MMAP_THRESHOLD_=131072`: blocks of 128 KB and more mapped for each frame and "
        "given back after it):",
        table(("daemon", "ready MB", "peak MB", "CPU ms/frame", "fixed threshold: peak MB",
               "CPU ms/frame"),
              [(d.name, f"{d.ready_mb:.1f}", f"{d.peak_mb:.1f}", f"{d.cpu_ms_per_frame:.1f}",
                f"{f.peak_mb:.1f}", f"{f.cpu_ms_per_frame:.1f}")
               for d, f in zip(default, fixed, strict=True)]),
        "Where the pages are after the frames (glibc's defaults; MB, /proc/PID/smaps):",
        table(("daemon", *groups),
              [(d.name, *(f"{d.groups.get(group, 0.0):.1f}" for group in groups))
               for d in default]),
    ])
    print(body)
    if args.write_docs:
        write_section("Stage daemon memory under load: where it goes", body)


if __name__ == "__main__":
    main()
