"""Running under systemd: readiness, watchdog and stopping notifications, and journald logging.

Uses `systemd-python` (the `systemd` extra) when it is installed and the process was started by
systemd. Without it (a board installed with a plain `pip install .`) the notifications go out
all the same, as sd_notify(3) sends them, and the log lines go to stderr, which systemd puts in
the journal: a Type=notify unit works with either install. Outside systemd these calls do
nothing, so the same daemon runs from a shell.
"""

from __future__ import annotations

import logging
import os
import socket
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
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if _sd_daemon is not None:
        _sd_daemon.notify(state)
    else:
        _send_datagram(address, state)


def _send_datagram(address: str, state: str) -> None:
    """sd_notify(3)'s documented protocol: the state in one datagram to the AF_UNIX socket
    $NOTIFY_SOCKET names (a leading '@': Linux's abstract namespace)."""
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:  # systemd would then stop us for want of READY=1 or WATCHDOG=1
        log.warning("cannot notify systemd at %s: %s", address.replace("\0", "@"), exc)


def watchdog_interval() -> float | None:
    """How often to ping the watchdog: half of WatchdogSec=, or None when there is none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2
