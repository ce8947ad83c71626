"""What a node says about itself (retained `.../info/<node>`), and the checks made from it.

Boards are set up one by one, by hand: two of them can end up with segments of different
splits, or two with the same stage and no shared group. Each stage says what it runs, and a
stage that starts reads what its online neighbours run and refuses to start when the chain
would break, instead of refusing every frame later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiotedge import __version__
from aiotedge.manifest import Manifest, TensorSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    node: str
    stage: int
    stages: int
    #: Manifest.fingerprint of the split this node serves
    manifest: str
    model: str
    input: TensorSpec
    output: TensorSpec
    share_group: str = ""
    version: str = __version__

    @classmethod
    def for_stage(cls, manifest: Manifest, index: int, node: str, share_group: str) -> NodeInfo:
        spec = manifest.stage(index)
        return cls(node=node, stage=index, stages=len(manifest.stages),
                   manifest=manifest.fingerprint, model=manifest.source.file,
                   input=spec.input, output=spec.output, share_group=share_group)

    def to_json(self) -> str:
        return json.dumps({
            "node": self.node, "kind": "stage", "version": self.version, "stage": self.stage,
            "stages": self.stages, "manifest": self.manifest, "model": self.model,
            "input": self.input.to_dict(), "output": self.output.to_dict(),
            "share_group": self.share_group,
        })

    @classmethod
    def parse(cls, payload: bytes) -> NodeInfo | None:
        """The info in a retained message, or None for what is not a stage's info."""
        try:
            data: dict[str, Any] = json.loads(payload)
            if data.get("kind") != "stage":
                return None
            return cls(node=str(data["node"]), stage=int(data["stage"]),
                       stages=int(data["stages"]), manifest=str(data["manifest"]),
                       model=str(data["model"]), input=TensorSpec.from_dict(data["input"]),
                       output=TensorSpec.from_dict(data["output"]),
                       share_group=str(data.get("share_group", "")),
                       version=str(data.get("version", "")))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            log.debug("ignored a message that is not node info: %r", exc)
            return None


def chain_problems(me: NodeInfo, online: Iterable[NodeInfo]) -> tuple[list[str], list[str]]:
    """(errors, warnings) about starting `me` beside the nodes that are online now.

    Errors break frames (tensors that cannot pass between neighbours, two copies of a stage
    that would both process every frame); warnings are worth a look (another manifest with
    matching tensors, e.g. the same split with new labels).
    """
    errors: list[str] = []
    warnings: list[str] = []
    for other in online:
        if other.node == me.node:
            continue  # our own info from before a restart
        where = f"node {other.node} (stage {other.stage}, manifest {other.manifest[:12]})"
        if other.stage == me.stage - 1 and not other.output.matches(me.input):
            errors.append(f"{where} sends {other.output}, this stage takes {me.input}: "
                          "the boards run segments of different splits")
        elif other.stage == me.stage + 1 and not me.output.matches(other.input):
            errors.append(f"{where} takes {other.input}, this stage sends {me.output}: "
                          "the boards run segments of different splits")
        elif other.stage == me.stage and not (me.share_group
                                                and me.share_group == other.share_group):
            errors.append(f"{where} already serves stage {me.stage}: replicas of a stage need "
                          "the same share_group on every copy, or each would take every frame")
        elif other.manifest != me.manifest:
            warnings.append(f"{where} runs another manifest than this node "
                            f"({me.manifest[:12]})")
    return errors, warnings
