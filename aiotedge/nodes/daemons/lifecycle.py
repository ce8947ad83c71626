"""What every daemon does around its work: stop on signals, wait for the broker, and turn a
user's mistake into one line and an exit status."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from aiotedge.contracts.errors import AiotedgeError, BrokerError
from aiotedge.nodes.mqtt.transport import Session
from aiotedge.nodes.observe import systemd

log = logging.getLogger(__name__)

#: how often a daemon waiting for the broker checks whether it should stop instead
WAIT_REPORT_SECONDS = 5.0
#: how long a one-shot command waits for its first connection attempt to end (paho gives up
#: on a TCP connect after 5 s; a name that does not resolve fails at once)
FIRST_ATTEMPT_TIMEOUT = 15.0


def stop_on_signals() -> threading.Event:
    """SIGTERM (systemctl stop) and SIGINT (Ctrl-C) both mean: finish up and exit."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def wait_for_broker(session: Session, stop: threading.Event) -> bool:
    """True once connected; False if told to stop first (the broker may be down for long).

    The session logs why it cannot connect once per change of reason; systemd's status line
    (`systemctl status`) says it for as long as it lasts.
    """
    reported = None
    while not session.wait_connected(timeout=WAIT_REPORT_SECONDS):
        if stop.is_set():
            return False
        problem = session.connection_problem
        if problem != reported:
            systemd.notify(f"STATUS=waiting for the broker at {session.url}: {problem}")
            reported = problem
        log.debug("waiting for the broker at %s: %s", session.url, problem)
    return True


def connect_once(session: Session, timeout: float = FIRST_ATTEMPT_TIMEOUT) -> None:
    """For a one-shot command: connect, or stop the session and raise BrokerError saying why.

    A command run by hand or by a script must end with the reason, not retry like a daemon.
    """
    session.start()
    try:
        problem = session.first_attempt(timeout)
    except BrokerError:
        session.stop()
        raise
    if problem is not None:
        session.stop()
        raise BrokerError(f"cannot use the broker at {session.url}: {problem}")


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
