"""A mosquitto the harness watches: LocalBroker plus its pid (for /proc), whether it exited
without being asked, and a way to have it save its state now."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from aiotedge.nodes.mqtt.broker import LocalBroker


class Broker(LocalBroker):
    """LocalBroker plus its pid (for /proc) and whether it exited without being asked."""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def died(self) -> int | None:
        """The exit code if mosquitto is gone although nobody stopped it."""
        if self._process is None:
            return None
        return self._process.poll()

    def save(self, bound: Callable[[float], float] = lambda timeout: timeout) -> None:
        """Have mosquitto write its persistence database now (SIGUSR1), and wait until it has:
        its sessions and subscriptions as they are survive a SIGKILL after this. `bound` cuts
        each wait to what the caller has left (and raises once nothing is left)."""
        database = self._workdir / "mosquitto.db"
        before = database.stat().st_mtime_ns if database.exists() else -1
        assert self._process is not None
        self._process.send_signal(signal.SIGUSR1)
        while not (database.exists() and database.stat().st_mtime_ns != before):
            time.sleep(min(0.02, bound(0.02)))  # no event says a file was written
