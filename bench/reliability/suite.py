"""The scenarios in the order they run, and how one runs: deadline, watchdog, failure as a row."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.reliability import defects, fuzz, round2, scenarios
from bench.reliability.context import Context
from bench.reliability.deadline import Deadline, watchdog
from bench.reliability.results import Row
from bench.reliability.workload import Mode, Workload

log = logging.getLogger(__name__)

#: after its deadline a scenario gets this long to unwind before its processes are killed
GRACE_S = 30.0


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Context], Row]
    #: a long one (the soak): the mode's longer timeout
    long: bool = False

    @property
    def description(self) -> str:
        """The scenario function's docstring, as one paragraph."""
        function = self.run.func if isinstance(self.run, partial) else self.run
        return " ".join((inspect.getdoc(function) or "").split())


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("storm", scenarios.malformed_storm),
    Scenario("fuzz", fuzz.wire_fuzzer),
    Scenario("stage-kills", scenarios.stage_kills),
    Scenario("broker-sigterm", partial(scenarios.broker_restarts, kill=False)),
    Scenario("broker-sigkill", partial(scenarios.broker_restarts, kill=True)),
    Scenario("stage-away", scenarios.stage_away),
    Scenario("slow-qos0", partial(scenarios.slow_consumer, qos=0)),
    Scenario("slow-qos1", partial(scenarios.slow_consumer, qos=1)),
    Scenario("broker-late", scenarios.broker_down_at_start),
    Scenario("partition", scenarios.partition),
    Scenario("soak", scenarios.soak, long=True),
    Scenario("oversized-event", defects.oversized_event),
    Scenario("frame-stealing", defects.frame_stealing),
    Scenario("overload", defects.overload),
    Scenario("memory-bomb", defects.memory_bomb),
    Scenario("nan-activation", defects.nan_activation),
    Scenario("exif", defects.exif_orientation),
    Scenario("symlink-loop", defects.symlink_loop),
    Scenario("paho-config", defects.paho_config),
    Scenario("tls", defects.tls_failure),
    Scenario("chain-check", defects.chain_check),
    Scenario("refused-camera", defects.refused_camera),
    Scenario("takeover-acl", partial(round2.client_id_takeover, setup="acl")),
    Scenario("takeover-dynsec", partial(round2.client_id_takeover, setup="dynsec")),
    Scenario("foreign-publisher", round2.foreign_publisher),
    Scenario("replicas-restart", round2.replicas_restart),
)


def scenario(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


def run_scenario(chosen: Scenario, mode: Mode, workload: Workload,
                 artifacts: Path | None = None) -> Row:
    """Run one scenario within its hard timeout; a harness failure becomes a finding.

    Past the deadline every wait of the harness raises; past it plus GRACE_S the watchdog
    kills the scenario's daemons and brokers, so nothing can hold the suite.
    """
    timeout = mode.long_timeout if chosen.long else mode.timeout
    context = Context(mode, workload, Deadline.after(timeout), artifacts=artifacts)
    started = time.monotonic()
    log.info("scenario %s (%s, at most %.0f s)", chosen.name, mode.name, timeout)
    try:
        with watchdog(context.deadline, GRACE_S, context.kill_everything):
            row = chosen.run(context)
    except Exception as exc:  # a scenario that breaks is reported, the suite goes on
        log.exception("scenario %s failed", chosen.name)
        row = Row(chosen.name, "", "", findings=[f"the scenario failed: {exc!r}"[:400]])
    row.conclude()
    row.seconds = round(time.monotonic() - started, 1)
    log.info("%s: %s", chosen.name, row)
    return row
