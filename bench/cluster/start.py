"""What both cluster benches do before their first board: quiet logging, and whether boards can
be made here at all (root, cgroup CPU quotas, network namespaces when links are shaped), then
the leftovers of a run that crashed removed."""

from __future__ import annotations

import logging
import os

from bench.cluster import boards, leftovers


def ready(program: str, link: boards.Link | None) -> bool:
    """True when the bench can run; else it says why it is skipped (its exit is still 0)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("aiotedge", "bench.stagerun"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if os.geteuid() != 0:
        reason = "it needs root (cgroup CPU quotas and network namespaces)"
    else:
        reason = boards.detect().why_not("cpu", *(boards.NET_FEATURES if link else ()))
    if reason:
        print(f"{program} skipped: {reason}")
        return False
    leftovers.cleanup_leftovers()
    return True
