"""The profile format: what each piece of a model costs on one board, for the planner.

`aiotedge profile` writes it on a board (aiotedge.tflite.profiling measures); the converter's
planner reads it on the workstation. A stage is always a run of consecutive pieces (the
operators between two neighbouring cut points): it costs the sum of its pieces' invoke times
plus one input copy and one output copy at its two ends.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiotedge.contracts.errors import ProfileError

PROFILE_VERSION = 1


@dataclass(frozen=True)
class Piece:
    """Operators first_op..last_op (between two neighbouring cut points) and their times."""

    first_op: int
    last_op: int
    invoke_ms: float
    set_input_ms: float
    get_output_ms: float
    input_bytes: int
    output_bytes: int


@dataclass(frozen=True)
class Profile:
    """Piece times of one model on one machine with a given thread count (ms, the quietest
    round's median)."""

    model_file: str
    model_sha256: str
    op_count: int
    machine: str
    platform: str
    interpreter: str
    threads: int | None
    runs: int
    warmup: int
    rounds: int
    #: median time of the whole model (set + invoke + get), for comparison with the pieces
    whole_ms: float
    pieces: tuple[Piece, ...]

    @property
    def cut_points(self) -> tuple[int, ...]:
        return tuple(piece.last_op for piece in self.pieces[:-1])

    @property
    def label(self) -> str:
        if self.threads is None:
            threads = "default threads"
        else:
            threads = f"{self.threads} thread" + ("" if self.threads == 1 else "s")
        return f"{self.machine}, {threads}"

    def stage_ms(self, first_op: int, last_op: int) -> float:
        """Predicted time of a stage running ops first_op..last_op (piece boundaries)."""
        inside = [p for p in self.pieces if first_op <= p.first_op and p.last_op <= last_op]
        if (
            not inside
            or inside[0].first_op != first_op
            or inside[-1].last_op != last_op
        ):
            raise ProfileError(f"ops {first_op}..{last_op} do not start and end at cut points")
        return (
            sum(p.invoke_ms for p in inside) + inside[0].set_input_ms + inside[-1].get_output_ms
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pieces"] = [asdict(piece) for piece in self.pieces]
        return {"format_version": PROFILE_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        if data.get("format_version") != PROFILE_VERSION:
            raise ProfileError(
                f"profile format_version {data.get('format_version')!r} is not supported "
                f"(this aiotedge reads version {PROFILE_VERSION})"
            )
        fields = {k: v for k, v in data.items() if k not in ("format_version", "pieces")}
        return cls(**fields, pieces=tuple(Piece(**piece) for piece in data["pieces"]))

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str) -> Profile:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ProfileError(f"{path}: cannot read profile: {exc}") from exc
        except ProfileError as exc:
            raise ProfileError(f"{path}: {exc}") from exc
