"""What a node says about itself: architecture, runtime, memory and a speed profile.

The speed is a proxy, measured once and kept on disk: multiply-accumulates per second of a
float32 matrix product (numpy), the kind of work a CNN's convolutions are. `aiotedge profile`
times every piece of one model instead, which takes minutes on a Pi and needs the model; a
node announces itself before any model is deployed, so it says this cheaper figure, and the
deployer plans with MACs over it (docs/fleet.md).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiotedge.nodes.daemons.profiling import interpreter_name

log = logging.getLogger(__name__)

SPEED_FILE = "speed.json"
#: the matrix product's side: 256^3 = 16.8 M MACs, a few ms on a Pi 4
_SIDE = 256
_ROUNDS = 7


@dataclass(frozen=True)
class BoardFacts:
    architecture: str
    runtime: str
    runtime_version: str
    memory_mb: int
    cpus: int
    mmacs_per_s: float


def measure_speed() -> float:
    """Millions of MACs per second of a float32 matrix product, best of a few rounds."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((_SIDE, _SIDE), dtype=np.float32)
    b = rng.standard_normal((_SIDE, _SIDE), dtype=np.float32)
    best = float("inf")
    for _ in range(_ROUNDS):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return round(_SIDE ** 3 / max(best, 1e-9) / 1e6, 1)


def cached_speed(cache: Path) -> float:
    """The speed measured on this board before (`cache`/speed.json), or measured now and kept."""
    path = cache / SPEED_FILE
    try:
        data = json.loads(path.read_text())
        if data.get("machine") == platform.machine() and float(data["mmacs_per_s"]) > 0:
            return float(data["mmacs_per_s"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    speed = measure_speed()
    log.info("speed profile: %.0f M MACs/s (float32 matrix product), kept in %s", speed, path)
    path.write_text(json.dumps({"mmacs_per_s": speed, "machine": platform.machine(),
                                "measured_at": time.time()}) + "\n")
    return speed


def memory_mb() -> tuple[int, int]:
    """(total, available) MB from /proc/meminfo; (0, 0) where there is none."""
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) // 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def board_facts(cache: Path) -> BoardFacts:
    runtime, _, version = interpreter_name().partition(" ")
    return BoardFacts(architecture=platform.machine(), runtime=runtime,
                      runtime_version=version or "unknown", memory_mb=memory_mb()[0],
                      cpus=os.cpu_count() or 1, mmacs_per_s=cached_speed(cache))
