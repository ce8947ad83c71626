"""What a stage costs: MACs by default, or times measured on the boards (`aiotedge profile`).

MACs need no board and rank stages well on one kind of board, but they are not seconds: they
cannot be weighed against a network transfer, nor tell a Pi 3 from a Pi 4. A profile gives
each piece between neighbouring cut points its measured time on one board; with one profile
per stage the planner places the work on heterogeneous boards. A link speed turns each cut's
tensor into a transfer time, bytes * 8 / (Mbit/s * 1000) ms, which PipeEdge-style overlaps
with compute: a stage costs max(compute, transfer of its output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiotedge_converter.errors import ConverterError
from aiotedge_converter.planner import CostModel

from aiotedge.contracts.manifest import sha256_file
from aiotedge.contracts.profile import Profile
from aiotedge.tflite.graph import Graph


@dataclass(frozen=True)
class CostBasis:
    """One cost model per stage (stage k runs on board k) and how to name the unit."""

    unit: str
    boards: tuple[CostModel, ...]
    #: the profile each stage was costed with (empty for MACs)
    profiles: tuple[Profile, ...] = ()
    link_mbps: float | None = None

    @property
    def measured(self) -> bool:
        return bool(self.profiles)

    def describe(self) -> str:
        if not self.profiles:
            return "costs: MACs (multiply-accumulates counted from tensor shapes)"
        labels = list(dict.fromkeys(profile.label for profile in self.profiles))
        link = f"; link {self.link_mbps:g} Mbit/s" if self.link_mbps is not None else ""
        return "costs: ms measured on " + " / ".join(labels) + link


def transfer_ms(graph: Graph, link_mbps: float) -> list[float]:
    """Per op p: ms to send the tensor crossing the cut after p (0 where p is no cut point)."""
    if link_mbps <= 0:
        raise ConverterError(f"--link-mbps must be positive, got {link_mbps:g}")
    times = [0.0] * len(graph.ops)
    for point in graph.cut_points:
        times[point.op_index] = point.tensor.nbytes * 8 / (link_mbps * 1000.0)
    return times


def check_profile(graph: Graph, profile: Profile, name: str) -> None:
    """Refuse a profile measured on another model (or another conversion of it)."""
    if graph.path is None:
        raise ConverterError("a profile can only be checked against a model file")
    digest = sha256_file(graph.path)
    if profile.model_sha256 != digest:
        raise ConverterError(
            f"profile {name} was measured on {profile.model_file} (sha256 "
            f"{profile.model_sha256[:12]}...), not on {graph.path.name} ({digest[:12]}...)"
        )
    points = tuple(c.op_index for c in graph.cut_points)
    if profile.cut_points != points or profile.op_count != len(graph.ops):
        raise ConverterError(f"profile {name} does not cover this model's cut points")


def profile_cost_model(
    graph: Graph, profile: Profile, link_mbps: float | None = None
) -> CostModel:
    """Piece times on one board as per-operator costs (each piece's time on its last op)."""
    count = len(graph.ops)
    op_costs, input_costs, output_costs = [0.0] * count, [0.0] * count, [0.0] * count
    for piece in profile.pieces:
        op_costs[piece.last_op] = piece.invoke_ms
        input_costs[piece.first_op] = piece.set_input_ms
        output_costs[piece.last_op] = piece.get_output_ms
    transfer = transfer_ms(graph, link_mbps) if link_mbps is not None else None
    return CostModel(op_costs, transfer, input_costs, output_costs)


def cost_basis(
    graph: Graph,
    stages: int,
    profiles: Sequence[tuple[str, Profile]] = (),
    link_mbps: float | None = None,
) -> CostBasis:
    """Stage costs for `stages` stages: MACs, one profile for all boards, or one per stage."""
    if not profiles:
        if link_mbps is not None:
            raise ConverterError(
                "--link-mbps needs measured stage times (--profile): MACs and milliseconds "
                "cannot be compared"
            )
        return CostBasis("MACs", (CostModel(graph.op_macs),) * stages)
    if len(profiles) not in (1, stages):
        raise ConverterError(
            f"{len(profiles)} profiles for {stages} stages: give one profile per stage, "
            "or one for identical boards"
        )
    for name, profile in profiles:
        check_profile(graph, profile, name)
    chosen = [p for _, p in profiles] * (stages if len(profiles) == 1 else 1)
    models = {id(p): profile_cost_model(graph, p, link_mbps) for p in chosen}
    return CostBasis(
        "ms",
        tuple(models[id(p)] for p in chosen),
        profiles=tuple(chosen),
        link_mbps=link_mbps,
    )
