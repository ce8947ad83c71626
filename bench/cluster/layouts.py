"""What runs on the emulated boards: a split (segments + manifest) and which stage each board
serves, in which share group.

Three strategies, each for N boards, all from `aiotedge-convert plan MODEL --boards N` given a
board's profile: the planner's choice (read back from the folder it writes), its pure pipeline
(one board per stage at its cuts) and pure replicas (the whole model as one stage, N boards in
one share group), each with the planner's forecast. Without a profile, the pipeline is
`split --stages N`'s balanced cuts and nothing is forecast. A layout can also be given by
hand: a split folder and how many boards serve each of its stages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiotedge_converter.cli import main as convert

from aiotedge.config.loader import NodeConfig
from aiotedge.contracts.manifest import MANIFEST_NAME, Manifest

log = logging.getLogger(__name__)

PIPELINE, REPLICAS, PLAN = "pipeline", "replicas", "plan"
STRATEGIES = (PIPELINE, REPLICAS, PLAN)
#: the whole model on one board: the base of every ratio
ONE_BOARD = "one board"


class LayoutError(RuntimeError):
    """A layout cannot be made or read; the message says why."""


@dataclass(frozen=True)
class Role:
    """What one board runs: a stage of the split, alone or in a share group."""

    stage: int
    share_group: str = ""


@dataclass(frozen=True)
class Layout:
    strategy: str
    split: Path
    roles: tuple[Role, ...]
    #: what the planner predicted for it, frames/s, when it said
    predicted_fps: float | None = None

    @property
    def boards(self) -> int:
        return len(self.roles)

    @property
    def stages(self) -> int:
        return max(role.stage for role in self.roles) + 1

    @property
    def name(self) -> str:
        return self.strategy if self.strategy == ONE_BOARD else f"{self.strategy}-{self.boards}"

    def describe(self) -> str:
        """`3 stages, replicas 2+1+2`: how many boards serve each stage."""
        counts = [sum(role.stage == stage for role in self.roles) for stage in range(self.stages)]
        return f"{self.stages} stage{'s' * (self.stages > 1)}, boards per stage " + \
            "+".join(map(str, counts))


def with_replicas(strategy: str, split: Path, replicas: Sequence[int],
                  predicted_fps: float | None = None) -> Layout:
    """`replicas[k]` boards serve stage k; a stage served by more than one shares its frames."""
    manifest = Manifest.load(split)
    if len(replicas) != len(manifest.stages) or min(replicas) < 1:
        raise LayoutError(f"{split}: {len(manifest.stages)} stages need 1 or more boards each, "
                          f"got {list(replicas)}")
    roles = tuple(Role(stage, f"stage{stage}" if count > 1 else "")
                  for stage, count in enumerate(replicas) for _ in range(count))
    return Layout(strategy, split, roles, predicted_fps)


def converted(argv: list[str], out: Path) -> Path:
    """`aiotedge-convert ARGV --out OUT`, unless OUT holds a manifest already: OUT."""
    argv = [*argv, "--out", str(out)]
    if not (out / MANIFEST_NAME).exists() and convert(argv):
        raise LayoutError(f"aiotedge-convert {' '.join(argv)} failed")
    return out


def split_model(model: Path, stages: int, out: Path) -> Path:
    """The planner's balanced cuts into `stages` segments (cached in `out`)."""
    return converted(["split", str(model), "--stages", str(stages)], out)


def one_board(model: Path, workdir: Path) -> Layout:
    return with_replicas(ONE_BOARD, split_model(model, 1, workdir / "split1"), [1])


def pipeline(model: Path, boards: int, workdir: Path, plan: Path | None = None) -> Layout:
    """One board per stage: at the cuts of the planner's pure pipeline when a plan's folder
    (`plan`) says them, else `split --stages N`'s balanced cuts."""
    if plan is None:
        return with_replicas(PIPELINE, split_model(model, boards, workdir / f"split{boards}"),
                             [1] * boards)
    stages = json.loads((plan / "plan.json").read_text())["pipeline"]["stages"]
    cuts = ",".join(str(stage["last_op"]) for stage in stages[:-1])
    out = converted(["split", str(model), "--cuts", cuts], workdir / f"pipeline{boards}")
    return with_replicas(PIPELINE, out, [1] * boards, forecast(plan, PIPELINE))


def replicas(model: Path, boards: int, workdir: Path, plan: Path | None = None) -> Layout:
    """The whole model on every board, one share group; the planner's forecast for it when a
    plan's folder (`plan`) says it."""
    return with_replicas(REPLICAS, split_model(model, 1, workdir / "split1"), [boards],
                         forecast(plan, REPLICAS) if plan else None)


def plan_folder(model: Path, boards: int, workdir: Path, options: Sequence[str]) -> Path:
    """`aiotedge-convert plan MODEL --boards N OPTIONS --out DIR`: DIR (made once)."""
    return converted(["plan", str(model), "--boards", str(boards), *options],
                     workdir / f"plan{boards}")


def forecast(folder: Path, strategy: str = "chosen") -> float | None:
    """Frames/s the planner forecast for one of plan.json's strategies (`chosen`, `pipeline`,
    `replicas`), if the folder has a plan.json that says."""
    summary = folder / "plan.json"
    if not summary.exists():
        return None
    value = json.loads(summary.read_text()).get(strategy, {}).get("frames_per_s")
    return float(value) if isinstance(value, int | float) else None


def from_plan(strategy: str, folder: Path) -> Layout:
    """A plan's folder: the split (manifest.json and segments) and one node config (TOML) per
    board, whose [stage] index and share_group say what the board runs; plan.json's forecast
    for the chosen plan, if there, is the planner's prediction."""
    configs = sorted(folder.rglob("*.toml"))
    if not configs:
        raise LayoutError(f"{folder}: no board configs (*.toml) in the plan's folder")
    roles = []
    for path in configs:
        stage = NodeConfig.load(path).stage
        roles.append(Role(stage.index, stage.share_group))
    layout = Layout(strategy, folder, tuple(sorted(roles, key=lambda r: r.stage)),
                    forecast(folder))
    stages = len(Manifest.load(folder).stages)
    if {role.stage for role in layout.roles} != set(range(stages)):
        raise LayoutError(f"{folder}: its boards do not serve each of its {stages} stages")
    return layout


def parse_given(text: str) -> tuple[str, Path, list[int]]:
    """`NAME=DIR:R0,R1,...` (a split folder and boards per stage) or `NAME=DIR` (a plan's
    folder with board configs), from the command line."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise LayoutError(f"--layout {text!r}: expected NAME=DIR[:BOARDS,PER,STAGE]")
    folder, _, counts = rest.partition(":")
    try:
        replicas = [int(part) for part in counts.split(",")] if counts else []
    except ValueError:
        raise LayoutError(f"--layout {text!r}: boards per stage must be integers") from None
    return name, Path(folder), replicas


def given(text: str) -> Layout:
    name, folder, counts = parse_given(text)
    return with_replicas(name, folder, counts) if counts else from_plan(name, folder)
