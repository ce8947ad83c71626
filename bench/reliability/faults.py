"""Faults the operating system injects: a CPU quota (cgroup) and a network partition (netns).

Both need root and the kernel's support; where either is missing they raise `UnavailableError`,
and the scenario reports itself skipped with the reason. Whatever they create is removed on
the way out, also when the scenario fails.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
#: the partition's private /30s are carved from this /24, one per process
PARTITION_NET = "10.213.7"


class UnavailableError(RuntimeError):
    """This machine (or this user) cannot inject the fault."""


def _cpu_hierarchy() -> tuple[Path, str]:
    """(where cpu cgroups live, "v2" or "v1")."""
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.is_file() and "cpu" in controllers.read_text().split():
        return CGROUP_ROOT, "v2"
    if (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").is_file():
        return CGROUP_ROOT / "cpu", "v1"
    raise UnavailableError("no cgroup cpu controller (neither v2 cpu.max nor v1 cpu.cfs_quota_us)")


@contextmanager
def cpu_quota(pids: list[int], percent: float) -> Iterator[None]:
    """Throttle these processes to `percent` % of one CPU until the block ends."""
    root, version = _cpu_hierarchy()
    group = root / f"aiotedge-rel-{os.getpid()}-{secrets.token_hex(3)}"
    quota = max(1000, int(CFS_PERIOD_US * percent / 100))
    try:
        group.mkdir()
    except OSError as exc:
        raise UnavailableError(f"cannot create a cgroup under {root}: {exc.strerror}") from None
    try:
        if version == "v2":
            (group / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        for pid in pids:
            (group / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        _remove_cgroup(group, root)
        raise UnavailableError(f"cannot use the cgroup {group}: {exc.strerror}") from None
    log.info("throttled %s to %.0f%% of a CPU (%s)", pids, percent, group)
    try:
        yield
    finally:
        _remove_cgroup(group, root)


def _remove_cgroup(group: Path, parent: Path) -> None:
    """Move what is left back to the root group, then remove the group."""
    try:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                (parent / "cgroup.procs").write_text(pid)
            except OSError:  # exited meanwhile
                continue
        group.rmdir()
    except OSError as exc:
        log.warning("could not remove the cgroup %s: %s", group, exc.strerror)


@dataclass(frozen=True)
class Namespace:
    """A network namespace joined to this one by a veth pair on a private /30."""

    name: str
    host_link: str
    host_address: str
    inside_address: str

    def wrap(self, argv: list[str]) -> list[str]:
        """A command run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def set_link(self, up: bool) -> None:
        """The partition itself: the host side of the veth goes down, or up again."""
        _ip("link", "set", self.host_link, "up" if up else "down", error=RuntimeError)


def _ip(*args: str, error: type[Exception] = UnavailableError) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise error(f"ip {' '.join(args)}: {done.stderr.strip()}")


@contextmanager
def namespace() -> Iterator[Namespace]:
    """A namespace with a veth pair; both are deleted on the way out."""
    if os.geteuid() != 0:
        raise UnavailableError("network namespaces need root")
    if shutil.which("ip") is None:
        raise UnavailableError("the ip command (iproute2) is not installed")
    suffix = f"{os.getpid() % 100_000}"
    subnet = 4 * (os.getpid() % 64)
    space = Namespace(
        name=f"aiotedge-rel-{suffix}",
        host_link=f"atr{suffix}h",
        host_address=f"{PARTITION_NET}.{subnet + 1}",
        inside_address=f"{PARTITION_NET}.{subnet + 2}",
    )
    inside_link = f"atr{suffix}n"
    try:
        _ip("netns", "add", space.name)
        _ip("link", "add", space.host_link, "type", "veth", "peer", "name", inside_link)
        _ip("link", "set", inside_link, "netns", space.name)
        _ip("addr", "add", f"{space.host_address}/30", "dev", space.host_link)
        _ip("link", "set", space.host_link, "up")
        for args in (("addr", "add", f"{space.inside_address}/30", "dev", inside_link),
                     ("link", "set", inside_link, "up"), ("link", "set", "lo", "up")):
            _ip("netns", "exec", space.name, "ip", *args)
        yield space
    finally:
        for args in (("link", "del", space.host_link), ("netns", "del", space.name)):
            subprocess.run(["ip", *args], capture_output=True, check=False)
