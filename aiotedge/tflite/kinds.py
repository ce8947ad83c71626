"""What a model's outputs mean: its kind, recognised from the graph or declared by the user.

The last stage reads the model's outputs as one of four kinds (contracts.manifest.KINDS):
- detection: the `TFLite_Detection_PostProcess` custom op's four outputs (boxes [1,N,4] as
  ymin, xmin, ymax, xmax in 0..1; classes [1,N]; scores [1,N]; count [1]), as SSD models end;
- pose: one float tensor [1,1,K,3] (y, x, score per keypoint), as MoveNet SinglePose ends;
- segmentation: per-pixel class scores [1,H,W,C], or an ARG_MAX's class per pixel [1,H,W];
- classification: anything else with one output, read as one score per class.
A model the recognition gets wrong is declared (`aiotedge-convert split --kind`); a declared kind
its outputs cannot have is refused, with what they are.
"""

from __future__ import annotations

import math

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import flexbuffers

from aiotedge.contracts.errors import ModelError
from aiotedge.contracts.manifest import KINDS
from aiotedge.tflite.graph import Graph

#: the custom op SSD models end in (TFLite's own, registered by every interpreter)
DETECTION_POSTPROCESS = "CUSTOM:TFLite_Detection_PostProcess"
DETECTION_OUTPUTS = 4
#: the last dimension of a pose model's output: y, x, score
KEYPOINT_VALUES = 3


def _producer(graph: Graph, tensor_index: int) -> str | None:
    """The kind of the op that computes a tensor, None for the input or a constant."""
    for op in graph.ops:
        if tensor_index in op.outputs:
            return op.kind
    return None


def _detection_op(graph: Graph) -> schema.OperatorT | None:
    for op, info in zip(graph.subgraph.operators, graph.ops, strict=True):
        if info.kind == DETECTION_POSTPROCESS:
            return op
    return None


def detection_options(graph: Graph) -> dict[str, object]:
    """The post-processing op's options (num_classes, max_detections, ...), empty if none."""
    op = _detection_op(graph)
    if op is None or op.customOptions is None or not len(op.customOptions):
        return {}
    try:
        options = flexbuffers.Loads(bytes(bytearray(op.customOptions)))
    except Exception:  # a custom op's options are the model author's bytes: any shape
        return {}
    return options if isinstance(options, dict) else {}


def _is_pose(graph: Graph) -> bool:
    spec = graph.tensor(graph.output_index)
    return (len(spec.shape) == 4 and spec.shape[:2] == (1, 1) and spec.shape[3] == KEYPOINT_VALUES
            and np.dtype(spec.dtype).kind == "f")


def _is_segmentation(graph: Graph) -> bool:
    spec = graph.tensor(graph.output_index)
    shape = spec.shape
    if np.dtype(spec.dtype).kind in "iu" and not spec.quantized \
            and _producer(graph, graph.output_index) == "ARG_MAX":
        return len(shape) in (3, 4) and shape[0] == 1 and min(shape[1:3]) > 1
    return len(shape) == 4 and shape[0] == 1 and min(shape[1:3]) > 1 and shape[3] > 1


def recognise_kind(graph: Graph) -> str:
    """The kind the model's outputs say it is."""
    if len(graph.output_indices) == DETECTION_OUTPUTS and _detection_op(graph) is not None:
        return "detection"
    if len(graph.output_indices) > 1:
        raise ModelError(
            f"{_name(graph)}: has {len(graph.output_indices)} outputs and no "
            f"TFLite_Detection_PostProcess op: only a detection model (that op's "
            f"{DETECTION_OUTPUTS} outputs) may have more than one")
    if _is_pose(graph):
        return "pose"
    if _is_segmentation(graph):
        return "segmentation"
    return "classification"


def model_kind(graph: Graph, declared: str | None = None) -> str:
    """The declared kind once the outputs can have it, else the recognised one."""
    if declared is None:
        return recognise_kind(graph)
    if declared not in KINDS:
        raise ModelError(f"unknown kind {declared!r} (known: {', '.join(KINDS)})")
    outputs = [graph.tensor(t) for t in graph.output_indices]
    shapes = ", ".join(f"{s.dtype}{list(s.shape)}" for s in outputs)
    wanted = {
        "detection": (len(outputs) == DETECTION_OUTPUTS,
                      f"{DETECTION_OUTPUTS} outputs (boxes, classes, scores, count)"),
        "pose": (len(outputs) == 1 and _is_pose(graph), "one float output [1,1,K,3]"),
        "segmentation": (len(outputs) == 1 and _is_segmentation(graph),
                         "one output [1,H,W,C] of class scores, or [1,H,W] from ARG_MAX"),
        "classification": (len(outputs) == 1, "one output of class scores"),
    }
    fits, needs = wanted[declared]
    if not fits:
        raise ModelError(f"{_name(graph)}: a {declared} model has {needs}; this one gives "
                         f"{shapes}")
    return declared


def class_count(graph: Graph, kind: str) -> int | None:
    """How many classes the model tells apart (a labels file has one line each); 0 for pose
    (its keypoints are named by the model's convention), None when the graph does not say."""
    spec = graph.tensor(graph.output_index)
    if kind == "classification":
        return math.prod(spec.shape)
    if kind == "detection":
        classes = detection_options(graph).get("num_classes")
        return int(classes) if isinstance(classes, int) else None
    if kind == "segmentation":
        return spec.shape[3] if np.dtype(spec.dtype).kind == "f" or spec.quantized else None
    return 0


def _name(graph: Graph) -> str:
    return graph.path.name if graph.path is not None else "model"
