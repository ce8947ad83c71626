"""Reading a .tflite model as a graph: operators, tensors, MACs and the valid cut points.

A *cut point* p means "cut after operator p" in the subgraph's operator order (the order the
interpreter executes). It is valid when exactly one activation tensor crosses it: a non-constant
tensor defined at or before p (by an operator, or as the graph input) and still needed after p
(by a later operator, or as the graph output). Only then can the segments on either side talk
through one message of one tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from aiotedge.contracts.errors import ModelError
from aiotedge.contracts.tensors import TensorSpec

log = logging.getLogger(__name__)

#: TFLite tensor type code -> numpy dtype name, for the types a CNN activation can have.
_DTYPES: dict[int, str] = {
    schema.TensorType.FLOAT32: "float32",
    schema.TensorType.FLOAT16: "float16",
    schema.TensorType.FLOAT64: "float64",
    schema.TensorType.INT8: "int8",
    schema.TensorType.UINT8: "uint8",
    schema.TensorType.INT16: "int16",
    schema.TensorType.UINT16: "uint16",
    schema.TensorType.INT32: "int32",
    schema.TensorType.UINT32: "uint32",
    schema.TensorType.INT64: "int64",
    schema.TensorType.UINT64: "uint64",
    schema.TensorType.BOOL: "bool",
}

_OP_NAMES: dict[int, str] = {
    code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}

#: Position of the input activation for the operators whose MACs we count.
_TRANSPOSE_CONV_INPUT = 2


@dataclass(frozen=True)
class OpInfo:
    index: int
    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    macs: int


@dataclass(frozen=True)
class CutPoint:
    """A valid place to split: after operator `op_index`, `tensor` is all that crosses."""

    op_index: int
    tensor_index: int
    tensor: TensorSpec
    cumulative_macs: int
    total_macs: int

    @property
    def share(self) -> float:
        """Fraction of the model's MACs done before this cut (0 when the model has none)."""
        return self.cumulative_macs / self.total_macs if self.total_macs else 0.0


def _shape(tensor: schema.TensorT) -> tuple[int, ...]:
    return tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))


def decode_name(name: bytes | str | None) -> str:
    """Names come back as bytes from the object API; reports and manifests want str."""
    if name is None:
        return ""
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _buffer_has_data(buffer: schema.BufferT) -> bool:
    return (buffer.data is not None and len(buffer.data) > 0) or buffer.size > 0


def tensor_list(indices: Sequence[int] | None) -> tuple[int, ...]:
    """Tensor indices of an op or subgraph field, which the object API leaves None when empty."""
    return tuple(int(t) for t in indices) if indices is not None else ()


def _count(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def op_macs(
    kind: str, input_shapes: Sequence[tuple[int, ...]], output_shape: tuple[int, ...]
) -> int:
    """Multiply-accumulates of one operator, from its tensor shapes.

    Counted for the operators that dominate a CNN: CONV_2D (filter OHWI), DEPTHWISE_CONV_2D
    (filter 1HWC), FULLY_CONNECTED (weights [units, in]) and TRANSPOSE_CONV (filter OHWI, each
    input element is scattered to kh*kw*out_channels outputs). Every other operator counts 0:
    element-wise work is small next to these and a later profile replaces MACs anyway.
    """
    if kind == "CONV_2D":
        _, kh, kw, cin = input_shapes[1]
        return _count(output_shape) * kh * kw * cin
    if kind == "DEPTHWISE_CONV_2D":
        _, kh, kw, _ = input_shapes[1]
        return _count(output_shape) * kh * kw
    if kind == "FULLY_CONNECTED":
        return _count(output_shape) * input_shapes[1][-1]
    if kind == "TRANSPOSE_CONV":
        cout, kh, kw, _ = input_shapes[1]
        return _count(input_shapes[_TRANSPOSE_CONV_INPUT]) * kh * kw * cout
    return 0


class Graph:
    """The single subgraph of a .tflite model, with what the planner and the splitter need."""

    def __init__(self, model: schema.ModelT, path: Path | None = None) -> None:
        label = str(path) if path is not None else "model"
        if not model.subgraphs or len(model.subgraphs) != 1:
            count = len(model.subgraphs or [])
            raise ModelError(f"{label}: has {count} subgraphs, only 1 is supported")
        self.model = model
        self.path = path
        self.subgraph: schema.SubGraphT = model.subgraphs[0]
        inputs, outputs = tensor_list(self.subgraph.inputs), tensor_list(self.subgraph.outputs)
        if len(inputs) != 1 or not outputs:
            raise ModelError(
                f"{label}: has {len(inputs)} inputs and {len(outputs)} outputs, "
                "only models with one input (a picture) and at least one output can be split"
            )
        for buffer in model.buffers or []:
            if buffer.offset > 1:
                raise ModelError(
                    f"{label}: buffers stored outside the flatbuffer (>2 GB "
                    "models) are not supported"
                )
        self.input_index = int(inputs[0])
        #: the model's outputs, in order; the last stage gives them all (SSD's four), every
        #: other stage exactly one tensor
        self.output_indices = tuple(int(t) for t in outputs)
        self.output_index = self.output_indices[0]
        if not self.subgraph.operators:
            raise ModelError(f"{label}: has no operators")

    # --- tensors -------------------------------------------------------------------------

    def is_constant(self, tensor_index: int) -> bool:
        """A weight or other buffer-backed tensor: it travels inside the segment file."""
        buffer_index = self.subgraph.tensors[tensor_index].buffer
        return buffer_index > 0 and _buffer_has_data(self.model.buffers[buffer_index])

    @cached_property
    def _weight_ops(self) -> tuple[frozenset[int], frozenset[int]]:
        """(weight ops, the tensors they compute): ops that read only constants.

        A float16 model dequantizes every weight with a DEQUANTIZE op placed before the first
        real op. Such an output is a constant in all but storage; counting it as an activation
        would make it cross every cut. So it is treated as a constant, and each segment carries
        the weight ops its own operators need (see `weight_ops_for`).
        """
        ops: set[int] = set()
        tensors: set[int] = set()
        for index, op in enumerate(self.subgraph.operators):
            inputs = [t for t in tensor_list(op.inputs) if t >= 0]
            outputs = tensor_list(op.outputs)
            if inputs and outputs and all(self.is_constant(t) or t in tensors for t in inputs):
                ops.add(index)
                tensors.update(outputs)
        return frozenset(ops), frozenset(tensors)

    @property
    def weight_ops(self) -> frozenset[int]:
        return self._weight_ops[0]

    def is_static(self, tensor_index: int) -> bool:
        """A constant, or a tensor computed from constants only (a dequantized weight)."""
        return self.is_constant(tensor_index) or tensor_index in self._weight_ops[1]

    def weight_ops_for(self, op_indices: Sequence[int]) -> list[int]:
        """The weight ops that compute the static inputs of these ops, in execution order."""
        weight_ops, computed = self._weight_ops
        if not weight_ops:
            return []
        producer = {t: i for i in weight_ops for t in self.ops[i].outputs}
        needed: set[int] = set()
        pending = [t for i in op_indices for t in self.ops[i].inputs if t in computed]
        while pending:
            op_index = producer[pending.pop()]
            if op_index not in needed:
                needed.add(op_index)
                pending.extend(t for t in self.ops[op_index].inputs if t in computed)
        return sorted(needed)

    def tensor(self, tensor_index: int) -> TensorSpec:
        tensor = self.subgraph.tensors[tensor_index]
        quantization = tensor.quantization
        scales = [] if quantization is None or quantization.scale is None else quantization.scale
        zero_points = [] if quantization is None or quantization.zeroPoint is None \
            else quantization.zeroPoint
        per_tensor = len(scales) == 1  # per-channel weights are no stage's input or output
        return TensorSpec(
            name=decode_name(tensor.name),
            shape=_shape(tensor),
            dtype=_DTYPES.get(tensor.type, f"tflite_type_{tensor.type}"),
            scale=float(scales[0]) if per_tensor else 0.0,
            zero_point=int(zero_points[0]) if per_tensor and len(zero_points) else 0,
        )

    # --- operators -----------------------------------------------------------------------

    def op_kind(self, op: schema.OperatorT) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == schema.BuiltinOperator.CUSTOM:
            return f"CUSTOM:{decode_name(code.customCode)}"
        return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")

    @cached_property
    def ops(self) -> tuple[OpInfo, ...]:
        result = []
        tensors = self.subgraph.tensors
        for index, op in enumerate(self.subgraph.operators):
            inputs, outputs = tensor_list(op.inputs), tensor_list(op.outputs)
            kind = self.op_kind(op)
            shapes = [_shape(tensors[t]) if t >= 0 else () for t in inputs]
            try:
                macs = op_macs(kind, shapes, _shape(tensors[outputs[0]])) if outputs else 0
            except (ValueError, IndexError):
                log.warning(
                    "op %d (%s): unexpected shapes %s, counted as 0 MACs", index, kind, shapes
                )
                macs = 0
            result.append(OpInfo(index, kind, inputs, outputs, macs))
        return tuple(result)

    @property
    def op_macs(self) -> list[int]:
        """MACs per operator, in execution order: the planner's default cost."""
        return [op.macs for op in self.ops]

    @property
    def total_macs(self) -> int:
        return sum(self.op_macs)

    def macs_between(self, first_op: int, last_op: int) -> int:
        return sum(self.op_macs[first_op : last_op + 1])

    # --- cut points ----------------------------------------------------------------------

    @cached_property
    def _live_ranges(self) -> dict[int, tuple[int, int]]:
        """Activation tensor -> (defined at op, last needed at op); -1 = before op 0.

        A graph output is needed "at" len(ops), i.e. after the last operator.
        """
        last = len(self.ops)
        defined: dict[int, int] = {self.input_index: -1}
        needed: dict[int, int] = {}
        for op in self.ops:
            if op.index in self.weight_ops:
                continue
            for t in op.inputs:
                if t < 0 or self.is_static(t):
                    continue
                # A non-constant tensor nobody produced (state, stray input) is live from the
                # start, so no cut may separate it from its users.
                defined.setdefault(t, -1)
                needed[t] = op.index
            for t in op.outputs:
                defined.setdefault(t, op.index)
        for t in self.output_indices:
            needed[t] = last
        return {t: (d, needed[t]) for t, d in defined.items() if t in needed}

    def crossing_tensors(self, op_index: int) -> list[int]:
        """Activation tensors that must travel from ops [0..op_index] to the ops after it."""
        return sorted(t for t, (d, n) in self._live_ranges.items() if d <= op_index < n)

    @cached_property
    def cut_points(self) -> tuple[CutPoint, ...]:
        """Every valid cut, in operator order; the cut after the last operator is not one, nor
        one whose tensor no message can carry (an int64 or bool in a post-processing tail)."""
        total = self.total_macs
        cumulative = np.cumsum(self.op_macs, dtype=np.int64)
        points = []
        for p in range(len(self.ops) - 1):
            if p in self.weight_ops:  # the same cut as before the weight op, and no work
                continue
            crossing = self.crossing_tensors(p)
            if len(crossing) != 1 or crossing[0] == self.input_index:
                continue
            tensor = self.tensor(crossing[0])
            if tensor.on_the_wire:
                points.append(CutPoint(p, crossing[0], tensor, int(cumulative[p]), total))
        return tuple(points)

    def boundary_tensors(self, op_index: int) -> tuple[int, ...]:
        """The tensors leaving ops [0..op_index]: the graph input for -1, the model's outputs
        for the last op, else the one tensor crossing the cut."""
        if op_index == -1:
            return (self.input_index,)
        if op_index == len(self.ops) - 1:
            return self.output_indices
        return (self.cut_point(op_index).tensor_index,)

    def boundary_tensor(self, op_index: int) -> int:
        """The first (for a cut, the one) tensor leaving ops [0..op_index]."""
        return self.boundary_tensors(op_index)[0]

    def cut_point(self, op_index: int) -> CutPoint:
        for point in self.cut_points:
            if point.op_index == op_index:
                return point
        raise ModelError(
            f"{op_index} is not a valid cut point (valid: "
            + ",".join(str(c.op_index) for c in self.cut_points)
            + ")"
        )


def load_model(path: Path | str) -> schema.ModelT:
    """Unpack a .tflite file into the flatbuffer object API (mutable, re-packable)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model: {exc.strerror or exc}") from exc
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        return schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # a corrupt flatbuffer fails in many ways deep inside the parser
        raise ModelError(f"{path}: corrupt TFLite model: {exc!r}") from exc


def load_graph(path: Path | str) -> Graph:
    return Graph(load_model(path), Path(path))
