"""How soon nodes are back after a broker restart: aiotedge's reconnect backoff against the one
it had before (paho's own: 1 s doubling up to 30 s from the first failure).

    python bench/reconnect.py [--rounds 3] [--downtimes 1,5,15] [--sessions 3]

Each round connects `sessions` sessions of each kind to a private mosquitto, stops the broker
(SIGTERM), keeps it down for a while (plus up to a second, at random, so that the restart falls
anywhere in the sessions' retry cycle), starts it again and times, from the moment it listens
again, how long each session takes to be connected. The figure is the median over rounds and
sessions, with its range; the ratio is the current backoff's median over the old one's,
measured in the same restarts.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time

from aiotedge.nodes.mqtt.broker import LocalBroker
from aiotedge.nodes.mqtt.session import MqttSession
from bench.benchdoc import table, write_section

OLD_MIN, OLD_MAX = 1, 30


class DoublingSession(MqttSession):
    """A session with the backoff aiotedge had before: paho's, set once (paho doubles its
    delay after each failure; setting the bounds again would start it over)."""

    _configured = False

    def _set_reconnect_delay(self) -> None:
        if not self._configured:
            self.client.reconnect_delay_set(min_delay=OLD_MIN, max_delay=OLD_MAX)
            self._configured = True


def back_after(sessions: list[MqttSession], since: list[float], limit: float) -> list[float]:
    """Seconds from `since[0]` (set by the caller once the broker listens) to each session's
    reconnect, waited for in parallel."""
    done: list[float] = [float("nan")] * len(sessions)

    def wait(index: int, session: MqttSession) -> None:
        if session.wait_connected(limit):
            done[index] = time.monotonic()

    waiters = [threading.Thread(target=wait, args=(i, s)) for i, s in enumerate(sessions)]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join()
    return [moment - since[0] for moment in done]


def restart_round(broker: LocalBroker, kinds: dict[str, list[MqttSession]],
                  downtime: float) -> dict[str, list[float]]:
    everyone = [s for sessions in kinds.values() for s in sessions]
    assert all(s.wait_connected(30) for s in everyone), "sessions did not connect"
    broker.stop()
    for session in everyone:  # each has seen the connection go
        while session.connected:
            time.sleep(0.01)
    time.sleep(downtime + random.random())  # restarts at any point of the sessions' retry cycle
    since = [0.0]
    results: dict[str, list[float]] = {}
    waiters = {name: threading.Thread(
        target=lambda name=name: results.__setitem__(
            name, back_after(kinds[name], since, downtime + 2 * OLD_MAX + 10)))
        for name in kinds}
    broker.start()
    since[0] = time.monotonic()
    for waiter in waiters.values():
        waiter.start()
    for waiter in waiters.values():
        waiter.join()
    return results


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} s ({min(values):.1f} to {max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--downtimes", default="1,5,15",
                        help="seconds the broker stays down, comma-separated")
    parser.add_argument("--sessions", type=int, default=3, help="sessions of each kind")
    args = parser.parse_args()
    downtimes = [float(d) for d in args.downtimes.split(",")]
    rows = []
    with LocalBroker() as broker:
        kinds = {
            "before": [DoublingSession(broker.address, f"old-{n}") for n in range(args.sessions)],
            "now": [MqttSession(broker.address, f"new-{n}") for n in range(args.sessions)],
        }
        for session in (s for sessions in kinds.values() for s in sessions):
            session.start()
        for downtime in downtimes:
            measured: dict[str, list[float]] = {"before": [], "now": []}
            for _ in range(args.rounds):
                for name, seconds in restart_round(broker, kinds, downtime).items():
                    measured[name] += seconds
            ratio = statistics.median(measured["now"]) / statistics.median(measured["before"])
            rows.append((f"{downtime:g} s", spread(measured["before"]), spread(measured["now"]),
                         f"{ratio:.2f}"))
            print(rows[-1], flush=True)
        for session in (s for sessions in kinds.values() for s in sessions):
            session.stop()
    body = "\n\n".join([
        f"A private mosquitto stopped (SIGTERM), kept down for the time shown plus up to 1 s "
        f"at random, started again; {args.sessions} "
        f"sessions of each kind, {args.rounds} rounds per downtime. Time from the broker "
        "listening again to each session being connected: median (range). *Before*: paho's "
        f"backoff as aiotedge set it, {OLD_MIN} s doubling to {OLD_MAX} s from the first "
        "failed attempt; *now*: 1 s for the first 10 attempts, then doubling to 30 s. The "
        "ratio is now / before (lower is better).",
        table(("broker down", "back after: before", "back after: now", "ratio"), rows),
    ])
    print(body)
    write_section("Broker restart: time until nodes are back", body)


if __name__ == "__main__":
    main()
