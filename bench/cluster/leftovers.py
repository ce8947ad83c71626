"""What runs that crashed (or were killed) left on this machine: cgroups, network namespaces and
veths named like the boards', removed unless the run that made them is alive."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.cluster.boards import (
    NET_DEVICES,
    RUN_NAME,
    VETH_NAME,
    BoardError,
    cgroup_mounts,
    kill_all,
    netns_pids,
    read_pids,
    run_setup,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Leftover:
    """A run cgroup, netns or veth this module names, and the pid of the run that made it."""

    kind: str
    name: str
    pid: int


def find_leftovers() -> list[Leftover]:
    """Every run cgroup, netns and veth named by this module, of any run, ours included."""
    found = []
    roots = dict.fromkeys(path for fstype, path, opts in cgroup_mounts()
                          if fstype == "cgroup2" or opts & {"cpu", "cpuacct"})
    for root in roots:
        for path in sorted(root.iterdir()):
            if path.is_dir() and (match := RUN_NAME.match(path.name)):
                found.append(Leftover("cgroup", str(path), int(match[1])))
    if shutil.which("ip"):
        for line in run_setup(["ip", "netns", "list"]).splitlines():
            name = line.split()[0]
            if match := RUN_NAME.match(name):
                found.append(Leftover("netns", name, int(match[1])))
        for device in sorted(NET_DEVICES.iterdir()):
            if match := VETH_NAME.match(device.name):
                found.append(Leftover("veth", device.name, int(match[1])))
    return found


def cleanup_leftovers() -> list[Leftover]:
    """Remove what runs no longer alive left behind (a crash, SIGKILL); live runs are spared,
    so a bench running beside this one keeps its boards."""
    removed = []
    for item in find_leftovers():
        if _alive(item.pid):
            continue
        try:
            _remove_leftover(item)
        except (OSError, BoardError) as exc:
            log.warning("could not remove leftover %s %s: %s", item.kind, item.name, exc)
        else:
            log.info("removed leftover %s %s", item.kind, item.name)
            removed.append(item)
    return removed


def _remove_leftover(item: Leftover) -> None:
    if item.kind == "cgroup":
        run = Path(item.name)
        for board in [path for path in run.iterdir() if path.is_dir()]:
            kill_all(lambda board=board: read_pids(board))
            board.rmdir()
        run.rmdir()
    elif item.kind == "netns":
        kill_all(lambda: netns_pids(item.name))
        run_setup(["ip", "netns", "del", item.name])
    elif (NET_DEVICES / item.name).exists():  # gone already if its peer's netns was removed
        run_setup(["ip", "link", "del", item.name])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
