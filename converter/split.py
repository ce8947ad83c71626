"""Writing one .tflite per stage and the manifest that describes them.

Each segment is a new flatbuffer model holding a consecutive run of the source's operators,
only the tensors, buffers and operator codes they use (renumbered), and the crossing tensors as
its single input and output. Tensor quantization parameters are kept as they are, so a uint8 or
int8 activation crosses the network as one byte per element and the chain of segments computes
exactly what the whole model computes. Weight ops (a float16 model's DEQUANTIZE of its
weights, see `Graph.weight_ops`) go with the segments whose operators read their output.
"""

from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ai_edge_litert import schema_py_generated as schema

from aiotedge.manifest import (
    Manifest,
    Preprocessing,
    SourceModel,
    StageSpec,
    TensorSpec,
    sha256_file,
)
from converter.errors import ConverterError, open_segment
from converter.flatbuffer import AlignedBuffer, pack_model
from converter.graph import Graph, decode_name, tensor_list
from converter.metadata import read_import_info
from converter.planner import Plan

log = logging.getLogger(__name__)

#: Model metadata entries that stay true for a segment. TFLITE_METADATA describes the whole
#: model's input and output (normalisation, labels) and would be wrong for a segment.
KEPT_METADATA = frozenset({"min_runtime_version"})


def extract_segment(graph: Graph, first_op: int, last_op: int) -> schema.ModelT:
    """A new model running ops [first_op..last_op] of `graph`, from one tensor to one tensor."""
    source = graph.model
    input_index = graph.boundary_tensor(first_op - 1)
    output_index = graph.boundary_tensor(last_op)
    if input_index == output_index:
        raise ConverterError(f"ops {first_op}..{last_op} do not compute anything that is used")

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
        raise ConverterError(f"ops {first_op}..{last_op} only prepare weights")
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
    subgraph.outputs = [tensor_map[output_index]]
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


@dataclass(frozen=True)
class SplitOptions:
    """What the user may choose beyond the cuts; None means the documented default."""

    labels: tuple[str, ...] | None = None
    mean: float | None = None
    std: float | None = None
    copy_source: bool = True
    num_threads: int | None = None


def default_preprocessing(spec: TensorSpec, mean: float | None, std: float | None) -> Preprocessing:
    """Raw pixels for a quantized input (mean = zero point, std = 1/scale); [-1, 1] for float.

    `split_model` passes the normalisation recorded by `import` instead, when there is one.
    """
    if len(spec.shape) != 4 or spec.shape[3] != 3:
        raise ConverterError(
            f"input {spec.name!r} has shape {list(spec.shape)}; an NHWC RGB image input "
            "(1, height, width, 3) is needed to preprocess photos"
        )
    if spec.quantized:
        default_mean, default_std = float(spec.zero_point), 1.0 / spec.scale
    else:
        default_mean, default_std = 127.5, 127.5
    return Preprocessing(
        width=spec.shape[2],
        height=spec.shape[1],
        mean=default_mean if mean is None else float(mean),
        std=default_std if std is None else float(std),
    )


def read_labels(path: Path | str) -> tuple[str, ...]:
    try:
        return tuple(Path(path).read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConverterError(f"{path}: cannot read labels: {exc}") from exc


def split_model(graph: Graph, plan: Plan, out_dir: Path, options: SplitOptions) -> Manifest:
    """Write the segment files, (optionally) the source model and manifest.json into out_dir."""
    if graph.path is None:
        raise ConverterError("the graph must come from a file to record the source model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source_path = graph.path
    whole = open_segment(source_path, options.num_threads)
    mean, std = options.mean, options.std
    info = read_import_info(graph.model)
    if info is not None:  # the normalisation the Keras model was trained with
        mean = info.mean if mean is None else mean
        std = info.std if std is None else std
    preprocessing = default_preprocessing(whole.input_spec, mean, std)
    if options.copy_source:
        target = out_dir / source_path.name
        if not target.exists() or not target.samefile(source_path):
            shutil.copyfile(source_path, target)

    stages = []
    for index, stage in enumerate(plan.stages):
        path = out_dir / f"stage{index}.tflite"
        path.write_bytes(pack_model(extract_segment(graph, stage.first_op, stage.last_op)))
        segment = open_segment(path, options.num_threads)
        log.info("stage %d: ops %d..%d -> %s", index, stage.first_op, stage.last_op, path.name)
        stages.append(
            StageSpec(
                index=index,
                file=path.name,
                sha256=sha256_file(path),
                input=segment.input_spec,
                output=segment.output_spec,
                macs=graph.macs_between(stage.first_op, stage.last_op),
                first_op=stage.first_op,
                last_op=stage.last_op,
            )
        )
    manifest = Manifest(
        source=SourceModel(
            file=source_path.name,
            sha256=sha256_file(source_path),
            input=whole.input_spec,
            output=whole.output_spec,
            macs=graph.total_macs,
        ),
        preprocessing=preprocessing,
        stages=tuple(stages),
        labels=options.labels,
        directory=out_dir,
    )
    manifest.save(out_dir)
    return manifest
