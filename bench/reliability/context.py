"""What a scenario is given: the mode's counts, the workload, its deadline, and its runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiotedge.contracts.manifest import Manifest
from bench.reliability.deadline import Deadline
from bench.reliability.harness import Run
from bench.reliability.workload import Mode, Workload


@dataclass
class Context:
    mode: Mode
    workload: Workload
    deadline: Deadline
    runs: list[Run] = field(default_factory=list)
    #: where a scenario writes files beside the report (the soak's memory curve); None: nowhere
    artifacts: Path | None = None

    def run(self, name: str, manifest: Manifest | None = None, **options: Any) -> Run:
        """A Run of `manifest` (default: the main pipeline), known to the scenario's watchdog."""
        options.setdefault("quiet", self.mode.quiet)
        run = Run(name, manifest or self.workload.main, self.deadline, **options)
        self.runs.append(run)
        return run

    def kill_everything(self) -> None:
        for run in self.runs:
            run.kill_everything()
