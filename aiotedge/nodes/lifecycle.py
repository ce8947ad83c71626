"""What every daemon does around its work: stop on signals, wait for the broker, and turn a
user's mistake into one line and an exit status."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from aiotedge.contracts.errors import AiotedgeError
from aiotedge.nodes.session import MqttSession

log = logging.getLogger(__name__)

#: how often a daemon waiting for the broker says so, with the reason
WAIT_REPORT_SECONDS = 5.0


def stop_on_signals() -> threading.Event:
    """SIGTERM (systemctl stop) and SIGINT (Ctrl-C) both mean: finish up and exit."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def wait_for_broker(session: MqttSession, stop: threading.Event) -> bool:
    """True once connected; False if told to stop first (the broker may be down for long)."""
    while not session.wait_connected(timeout=WAIT_REPORT_SECONDS):
        if stop.is_set():
            return False
        problem = session.connection_problem
        log.info("waiting for the broker at %s%s", session.broker,
                 f": {problem}" if problem else "")
    return True


def exit_status(run: Callable[[], int]) -> int:
    """`run()`'s exit status; a user's mistake (AiotedgeError) is logged as one line and 2.

    Anything else is a bug and keeps its traceback.
    """
    try:
        return run()
    except AiotedgeError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
