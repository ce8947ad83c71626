"""Tiny models of every kind, written as TFLite flatbuffers directly (no TensorFlow): a
detection model ending in the real `TFLite_Detection_PostProcess` op and its four outputs, a
segmentation model ending in an int64 ARG_MAX, a pose model's [1,1,K,3] output.

Each takes a float [1, SIDE, SIDE, 3] picture and runs PREFIX_OPS element-wise ops first, each
a valid cut point, so that the models split into up to PREFIX_OPS + 1 stages.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import flexbuffers

from aiotedge.tflite.flatbuffer import AlignedBuffer, pack_model

SIDE = 4
PREFIX_OPS = 5
#: the detection model: 12 anchors of 4 box values; 3 classes besides the background
ANCHORS, DETECTION_CLASSES, MAX_DETECTIONS = 12, 3, 5
DETECTION_LABELS = ("cat", "dog", "person")
TYPES = {"float32": schema.TensorType.FLOAT32, "int32": schema.TensorType.INT32,
         "int64": schema.TensorType.INT64}


class _Builder:
    """Tensors, constants and ops of one subgraph, appended in execution order."""

    def __init__(self) -> None:
        self.tensors: list[schema.TensorT] = []
        self.buffers: list[schema.BufferT] = [AlignedBuffer()]
        self.codes: list[tuple[int, str]] = []
        self.ops: list[schema.OperatorT] = []

    def tensor(self, name: str, shape: tuple[int, ...], dtype: str = "float32",
               data: np.ndarray | None = None) -> int:
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type = name, list(shape), TYPES[dtype]
        tensor.buffer = 0
        if data is not None:
            tensor.buffer = len(self.buffers)
            self.buffers.append(AlignedBuffer(data=np.frombuffer(
                np.ascontiguousarray(data, dtype=dtype).tobytes(), dtype=np.uint8)))
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], *, options_type: int = 0,
           options: object = None, custom: str = "", custom_options: bytes = b"") -> None:
        key = (code, custom)
        if key not in self.codes:
            self.codes.append(key)
        op = schema.OperatorT()
        op.opcodeIndex = self.codes.index(key)
        op.inputs, op.outputs = inputs, outputs
        op.builtinOptionsType, op.builtinOptions = options_type, options
        if custom_options:
            op.customOptions = list(custom_options)
            op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
        self.ops.append(op)

    def prefix(self) -> tuple[int, int]:
        """The input and the last of PREFIX_OPS element-wise ops on it (x * 0.9 + 0.1, ...)."""
        picture = self.tensor("picture", (1, SIDE, SIDE, 3))
        current = picture
        for i in range(PREFIX_OPS):
            factor = self.tensor(f"factor{i}", (1,), data=np.array([0.9 + 0.05 * i]))
            out = self.tensor(f"x{i}", (1, SIDE, SIDE, 3))
            options = schema.MulOptionsT()
            self.op(schema.BuiltinOperator.MUL, [current, factor], [out],
                    options_type=schema.BuiltinOptions.MulOptions, options=options)
            current = out
        return picture, current

    def reshape(self, tensor: int, shape: tuple[int, ...], name: str) -> int:
        new_shape = self.tensor(f"{name}_shape", (len(shape),), "int32", np.array(shape))
        out = self.tensor(name, shape)
        options = schema.ReshapeOptionsT()
        options.newShape = list(shape)
        self.op(schema.BuiltinOperator.RESHAPE, [tensor, new_shape], [out],
                options_type=schema.BuiltinOptions.ReshapeOptions, options=options)
        return out

    def write(self, path: Path, inputs: list[int], outputs: list[int]) -> Path:
        subgraph = schema.SubGraphT()
        subgraph.tensors, subgraph.operators = self.tensors, self.ops
        subgraph.inputs, subgraph.outputs = inputs, outputs
        model = schema.ModelT()
        model.version = 3
        model.description = "aiotedge test model"
        model.subgraphs, model.buffers = [subgraph], self.buffers
        model.operatorCodes = []
        for code, custom in self.codes:
            entry = schema.OperatorCodeT()
            entry.builtinCode, entry.deprecatedBuiltinCode = code, min(code, 127)
            entry.version = 1
            if custom:
                entry.customCode = custom
            model.operatorCodes.append(entry)
        path.write_bytes(pack_model(model))
        return path


def detection_model(path: Path) -> Path:
    """Box encodings and class scores from the picture's values, then the real SSD
    post-processing op: boxes, classes, scores, count."""
    b = _Builder()
    picture, x = b.prefix()
    encodings = b.reshape(x, (1, ANCHORS, 4), "box_encodings")
    squashed = b.tensor("squashed", (1, SIDE, SIDE, 3))
    b.op(schema.BuiltinOperator.LOGISTIC, [x], [squashed])
    scores = b.reshape(squashed, (1, ANCHORS, DETECTION_CLASSES + 1), "class_scores")
    grid = (np.arange(ANCHORS) + 0.5) / ANCHORS
    anchors = b.tensor("anchors", (ANCHORS, 4), data=np.stack(
        [grid, grid[::-1], np.full(ANCHORS, 0.3), np.full(ANCHORS, 0.4)], axis=1))
    outputs = [b.tensor(f"TFLite_Detection_PostProcess{suffix}", ())
               for suffix in ("", ":1", ":2", ":3")]
    options = flexbuffers.Dumps({
        "max_detections": MAX_DETECTIONS, "max_classes_per_detection": 1,
        "num_classes": DETECTION_CLASSES, "nms_score_threshold": 0.01,
        "nms_iou_threshold": 0.6, "y_scale": 10.0, "x_scale": 10.0, "h_scale": 5.0,
        "w_scale": 5.0, "use_regular_nms": False})
    b.op(schema.BuiltinOperator.CUSTOM, [encodings, scores, anchors], outputs,
         custom="TFLite_Detection_PostProcess", custom_options=bytes(options))
    return b.write(path, [picture], outputs)


def argmax_segmentation_model(path: Path) -> Path:
    """Three class scores a pixel, then ARG_MAX: an int64 class per pixel [1, SIDE, SIDE]."""
    b = _Builder()
    picture, x = b.prefix()
    axis = b.tensor("axis", (1,), "int32", np.array([3]))
    classes = b.tensor("ArgMax", (1, SIDE, SIDE), "int64")
    options = schema.ArgMaxOptionsT()
    options.outputType = schema.TensorType.INT64
    b.op(schema.BuiltinOperator.ARG_MAX, [x, axis], [classes],
         options_type=schema.BuiltinOptions.ArgMaxOptions, options=options)
    return b.write(path, [picture], [classes])


def pose_model(path: Path) -> Path:
    """SIDE * SIDE keypoints of (y, x, score): the picture's values read as such."""
    b = _Builder()
    picture, x = b.prefix()
    squashed = b.tensor("squashed", (1, SIDE, SIDE, 3))
    b.op(schema.BuiltinOperator.LOGISTIC, [x], [squashed])
    keypoints = b.reshape(squashed, (1, 1, SIDE * SIDE, 3), "keypoints")
    return b.write(path, [picture], [keypoints])
