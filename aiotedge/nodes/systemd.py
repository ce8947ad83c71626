"""Running under systemd: readiness, watchdog and stopping notifications, and journald logging.

Uses `systemd-python` (the `systemd` extra) when it is installed and the process was started by
systemd; everywhere else these calls do nothing, so the same daemon runs from a shell.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

try:
    from systemd import daemon as _sd_daemon
    from systemd import journal as _sd_journal
except ImportError:  # not on a board, or installed without the `systemd` extra
    _sd_daemon = None
    _sd_journal = None


def setup_logging(verbose: bool = False, timestamps: bool = True) -> None:
    """Journal fields (priority, logger, thread) under systemd; timestamped lines on stderr else
    (without timestamps for a process whose parent adds them: `aiotedge run`'s stages)."""
    level = logging.DEBUG if verbose else logging.INFO
    if _sd_journal is not None and os.environ.get("JOURNAL_STREAM"):
        handler: logging.Handler = _sd_journal.JournalHandler(SYSLOG_IDENTIFIER="aiotedge")
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            f"{'%(asctime)s ' if timestamps else ''}%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def notify(state: str) -> None:
    """Send one sd_notify state line (READY=1, WATCHDOG=1, STOPPING=1, STATUS=...)."""
    if _sd_daemon is not None and os.environ.get("NOTIFY_SOCKET"):
        _sd_daemon.notify(state)


def watchdog_interval() -> float | None:
    """How often to ping the watchdog: half of WatchdogSec=, or None when there is none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2
