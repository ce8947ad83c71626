"""Cutting a run of a model's operators out as a model of its own: a stage's segment.

Each segment is a new flatbuffer model holding a consecutive run of the source's operators,
only the tensors, buffers and operator codes they use (renumbered), and the crossing tensors as
its single input and output (the last segment: the model's outputs, several for a detection
model whose post-processing op gives boxes, classes, scores and count). Tensor quantization
parameters are kept as they are, so a uint8 or int8 activation crosses the network as one
byte per element and the chain of segments computes
exactly what the whole model computes. Weight ops (a float16 model's DEQUANTIZE of its
weights, see `Graph.weight_ops`) go with the segments whose operators read their output.
Used by the converter's split and by `aiotedge profile` on a board (flatbuffers only).
"""

from __future__ import annotations

import copy

from ai_edge_litert import schema_py_generated as schema

from aiotedge.contracts.errors import ModelError
from aiotedge.tflite.flatbuffer import AlignedBuffer
from aiotedge.tflite.graph import Graph, decode_name, tensor_list

#: Model metadata entries that stay true for a segment. TFLITE_METADATA describes the whole
#: model's input and output (normalisation, labels) and would be wrong for a segment.
KEPT_METADATA = frozenset({"min_runtime_version"})


def extract_segment(graph: Graph, first_op: int, last_op: int) -> schema.ModelT:
    """A new model running ops [first_op..last_op] of `graph`, from one tensor to one tensor
    (to the model's outputs, for the last segment)."""
    source = graph.model
    input_index = graph.boundary_tensor(first_op - 1)
    output_indices = graph.boundary_tensors(last_op)
    if output_indices == (input_index,):
        raise ModelError(f"ops {first_op}..{last_op} do not compute anything that is used")

    tensor_map: dict[int, int] = {}
    buffer_map: dict[int, int] = {0: 0}
    code_map: dict[int, int] = {}
    tensors: list[schema.TensorT] = []
    buffers: list[schema.BufferT] = [AlignedBuffer()]  # buffer 0: the empty sentinel
    codes: list[schema.OperatorCodeT] = []

    def buffer_id(old: int) -> int:
        if old not in buffer_map:
            buffer_map[old] = len(buffers)
            buffers.append(AlignedBuffer(data=source.buffers[old].data))
        return buffer_map[old]

    def tensor_id(old: int) -> int:
        if old < 0:  # an omitted optional input
            return old
        if old not in tensor_map:
            tensor = copy.copy(graph.subgraph.tensors[old])
            tensor.buffer = buffer_id(tensor.buffer)
            tensor_map[old] = len(tensors)
            tensors.append(tensor)
        return tensor_map[old]

    body = [i for i in range(first_op, last_op + 1) if i not in graph.weight_ops]
    if not body:
        raise ModelError(f"ops {first_op}..{last_op} only prepare weights")
    tensor_id(input_index)
    operators = []
    for old_index in [*graph.weight_ops_for(body), *body]:
        old_op = graph.subgraph.operators[old_index]
        op = copy.copy(old_op)
        if op.opcodeIndex not in code_map:
            code_map[op.opcodeIndex] = len(codes)
            codes.append(source.operatorCodes[op.opcodeIndex])
        op.opcodeIndex = code_map[op.opcodeIndex]
        op.inputs = [tensor_id(t) for t in tensor_list(old_op.inputs)]
        op.outputs = [tensor_id(t) for t in tensor_list(old_op.outputs)]
        if old_op.intermediates is not None:
            op.intermediates = [tensor_id(t) for t in tensor_list(old_op.intermediates)]
        operators.append(op)

    subgraph = schema.SubGraphT()
    subgraph.tensors = tensors
    subgraph.operators = operators
    subgraph.inputs = [tensor_map[input_index]]
    subgraph.outputs = [tensor_map[t] for t in output_indices]
    subgraph.name = graph.subgraph.name

    model = schema.ModelT()
    model.version = source.version
    model.description = f"aiotedge segment: ops {first_op}..{last_op} of " + decode_name(
        source.description
    )
    model.operatorCodes = codes
    model.subgraphs = [subgraph]
    model.buffers = buffers
    model.metadata = []
    for entry in source.metadata or []:
        if decode_name(entry.name) in KEPT_METADATA:
            kept = copy.copy(entry)
            kept.buffer = buffer_id(entry.buffer)
            model.metadata.append(kept)
    # signatureDefs name tensor indices of the whole model: meaningless for a segment.
    model.signatureDefs = []
    return model

