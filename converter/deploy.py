"""What deploying a cluster plan needs: the segments and manifest, one node config per board,
and `plan.json` (the plan and its forecast, for `aiotedge run --plan` and the benchmarks).

Board configs follow configs/cluster/ and docs/deploy-pi-cluster.md: a board is a broker user
named like its node (`stage2`, then `stage2b`, `stage2c`... for the replicas of stage 2, which
share the group `stage2`), TLS to the broker, its password in a file.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

from aiotedge_converter.cluster import (
    Cluster,
    ClusterPlan,
    Forecast,
    PlannedStage,
)
from aiotedge_converter.errors import ConverterError
from aiotedge_converter.planner import Plan, Stage
from aiotedge_converter.replicate import Strategies
from aiotedge_converter.split import SplitOptions, split_model

from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import BrokerConfig
from aiotedge.contracts.extras import import_extra
from aiotedge.contracts.plan import PLAN_BOARDS, PLAN_NAME
from aiotedge.tflite.graph import Graph

PLAN_VERSION = 1
#: where the boards of docs/deploy-pi-cluster.md keep things
BOARD_MODELS = "/opt/aiotedge/models"
BOARD_ETC = "/etc/aiotedge"


def board_names(plan: ClusterPlan) -> list[list[str]]:
    """Per stage, its boards' node names: stage<k>, stage<k>b, stage<k>c, ..."""
    names = []
    for index, stage in enumerate(plan.stages):
        suffixes = ["", *string.ascii_lowercase[1:]]
        if stage.boards > len(suffixes):
            suffixes += [str(n) for n in range(len(suffixes) + 1, stage.boards + 1)]
        names.append([f"stage{index}{suffixes[n]}" for n in range(stage.boards)])
    return names


def toml_writer() -> ModuleType:
    """tomli_w, which writes the board configs: part of the converter extra, not of a board's
    install, on which split, verify and a plan without --out run."""
    return import_extra("tomli_w", extra="converter", feature="plan --out (the board configs)")


def board_toml(sections: dict[str, dict[str, Any]], comment: str) -> str:
    """A node config file: a comment on top, then the sections (keys None are left out)."""
    header = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    tables = {name: {k: v for k, v in keys.items() if v is not None}
              for name, keys in sections.items()}
    return header + "\n" + toml_writer().dumps(tables)


def write_board_configs(out: Path, plan: ClusterPlan, cluster: Cluster, *, pipeline: str,
                        broker: BrokerConfig, discovery: bool = True) -> list[Path]:
    """One config per board, named like its node, in out/boards/; checked by loading it.
    With `discovery`, the last stage's boards announce the pipeline to Home Assistant, as
    configs/cluster/ does."""
    folder = out / PLAN_BOARDS
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.toml"):  # a plan written here before may have had more boards
        old.unlink()
    paths = []
    for index, (stage, names) in enumerate(zip(plan.stages, board_names(plan), strict=True)):
        kinds = [kind for kind, count in enumerate(stage.replicas) for _ in range(count)]
        for name, kind in zip(names, kinds, strict=True):
            role = (f"one of {stage.boards} replicas sharing group stage{index}"
                    if stage.boards > 1 else "the only board of its stage")
            comment = (
                f"Board {name!r} of the {len(plan.stages)}-stage plan for pipeline "
                f"{pipeline!r}: stage {index}, {role}.\n"
                f"Measured as {cluster.kinds[kind].name}. Written by aiotedge-convert plan;\n"
                f"install as {BOARD_ETC}/{name}.toml (docs/deploy-pi-cluster.md)."
            )
            sections = {
                "broker": {"host": broker.host, "port": broker.port, "tls": True,
                           "ca_file": f"{BOARD_ETC}/ca.crt", "username": name,
                           "password_file": f"{BOARD_ETC}/{name}.password"},
                "pipeline": {"name": pipeline, "qos": 1},
                "stage": {"manifest": f"{BOARD_MODELS}/{pipeline}", "index": index,
                          "node": name, "threads": cluster.kinds[kind].threads,
                          "share_group": f"stage{index}" if stage.boards > 1 else None},
            }
            if discovery and index == len(plan.stages) - 1:
                sections["homeassistant"] = {"discovery": True}
            path = folder / f"{name}.toml"
            path.write_text(board_toml(sections, comment))
            NodeConfig.load(path)  # what a board will read: refused here, not there
            paths.append(path)
    return paths


def segments_plan(plan: ClusterPlan, cluster: Cluster) -> Plan:
    """The plan as the splitter takes it: each stage's operators."""
    chain = cluster.chain
    stages = tuple(Stage(chain.first_ops[s.first], chain.last_ops[s.last], 0, 0)
                   for s in plan.stages)
    return Plan(tuple(s.last_op for s in stages[:-1]), stages)


def write_plan_files(graph: Graph, plan: ClusterPlan, cluster: Cluster, out: Path, *,
                     options: SplitOptions, pipeline: str, broker: BrokerConfig,
                     discovery: bool = True) -> list[Path]:
    """Segments, manifest (with each stage's output codec) and board configs of one plan."""
    split_model(graph, segments_plan(plan, cluster), out, options,
                output_codecs=[stage.codec for stage in plan.stages])
    return write_board_configs(out, plan, cluster, pipeline=pipeline, broker=broker,
                               discovery=discovery)


def write_deployment(graph: Graph, strategies: Strategies, cluster: Cluster, out: Path, *,
                     options: SplitOptions, pipeline: str, broker: BrokerConfig,
                     discovery: bool = True) -> list[Path]:
    """The chosen plan's files, and plan.json with all three forecasts."""
    configs = write_plan_files(graph, strategies.chosen[0], cluster, out, options=options,
                               pipeline=pipeline, broker=broker, discovery=discovery)
    (out / PLAN_NAME).write_text(json.dumps(plan_record(strategies, cluster), indent=2) + "\n")
    return configs


def _forecast_record(plan: ClusterPlan, forecast: Forecast, cluster: Cluster) -> dict[str, Any]:
    chain = cluster.chain
    return {
        "stages": [
            {"first_op": chain.first_ops[s.first], "last_op": chain.last_ops[s.last],
             "first_piece": s.first, "last_piece": s.last, "replicas": list(s.replicas),
             "codec": s.codec, "frames_per_s": limit}
            for s, limit in zip(plan.stages, forecast.stage_limits, strict=True)
        ],
        "frames_per_s": forecast.frames_per_s,
        "latency_ms": forecast.latency_ms,
        "bottleneck": forecast.bottleneck,
        "broker_limit": forecast.broker_limit if forecast.broker_limit != float("inf") else None,
        "frame_bytes": forecast.frame_bytes,
    }


def plan_record(strategies: Strategies, cluster: Cluster) -> dict[str, Any]:
    """plan.json: the chosen plan with its board names, and all three forecasts."""
    plan = strategies.chosen[0]
    return {
        "format_version": PLAN_VERSION,
        "boards": [{"kind": kind.name, "count": count}
                   for kind, count in zip(cluster.kinds, cluster.counts, strict=True)],
        "links": asdict(cluster.links),
        "stage0_input": cluster.chain.stage0_input,
        "nodes": board_names(plan),
        "chosen": _forecast_record(*strategies.chosen, cluster),
        "pipeline": _forecast_record(*strategies.pipeline, cluster),
        "replicas": _forecast_record(*strategies.replicas, cluster),
    }


def load_plan(path: Path | str, strategy: str = "chosen") -> ClusterPlan:
    """A plan from a plan.json (`chosen`, `pipeline` or `replicas`), e.g. for `predict`."""
    path = Path(path)
    if path.is_dir():
        path = path / PLAN_NAME
    try:
        data = json.loads(path.read_text())
        stages = data[strategy]["stages"]
        return ClusterPlan(tuple(
            PlannedStage(int(s["first_piece"]), int(s["last_piece"]),
                         tuple(int(r) for r in s["replicas"]), s["codec"])
            for s in stages))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConverterError(f"{path}: cannot read the plan: {exc}") from exc
