"""Writing one .tflite per stage of a plan and the manifest that describes them.

The segments are cut out by aiotedge.tflite.segments (quantization kept, so the chain computes
exactly what the whole model computes); each is loaded back with the interpreter, and what it
takes and gives, its sha256, its MACs and its reference (the input it gets from a fixed
picture and the output computed here, which a board checks itself against:
aiotedge.tflite.selfcheck) go into `manifest.json`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from aiotedge_converter.errors import ConverterError
from aiotedge_converter.metadata import read_import_info
from aiotedge_converter.planner import Plan
from PIL import Image

from aiotedge.contracts.manifest import Manifest, SourceModel, StageSpec, sha256_file
from aiotedge.media.image import default_preprocessing, preprocess
from aiotedge.tflite.flatbuffer import pack_model
from aiotedge.tflite.graph import Graph
from aiotedge.tflite.kinds import class_count
from aiotedge.tflite.runtime import Segment
from aiotedge.tflite.segments import extract_segment
from aiotedge.tflite.selfcheck import write_reference

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SplitOptions:
    """What the user may choose beyond the cuts; None means the documented default."""

    labels: tuple[str, ...] | None = None
    #: what the outputs mean (aiotedge.tflite.kinds.model_kind): recognised or declared
    kind: str = "classification"
    mean: float | None = None
    std: float | None = None
    #: Preprocessing.resize
    resize: str = "antialiased"
    copy_source: bool = True
    num_threads: int | None = None


#: the first line of a label map that counts the background as class 0 (TensorFlow's object
#: detection label maps): the post-processing op numbers classes from the first real one
BACKGROUND_LABELS = frozenset({"???", "background"})


def read_labels(path: Path | str, graph: Graph, kind: str = "classification") -> tuple[str, ...]:
    """One class name a line, in class order: as many lines as the model has classes (a file
    for another model, or with a header or a background class too many, would put every
    prediction under the wrong name). A detection model's map may start with the background
    (`???`), which its post-processing op does not count: that line is dropped."""
    try:
        labels = tuple(Path(path).read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConverterError(f"{path}: cannot read labels: {exc}") from exc
    classes = class_count(graph, kind)
    if classes == 0:
        raise ConverterError(f"{path}: a {kind} model's results have no labels (its keypoints "
                             "are named by the model's convention): give no --labels")
    if (kind == "detection" and classes is not None and len(labels) == classes + 1
            and labels[0].strip() in BACKGROUND_LABELS):
        log.info("%s: the first line %r is the background, which the model does not count",
                 path, labels[0])
        labels = labels[1:]
    if classes is not None and len(labels) != classes:
        output = graph.tensor(graph.output_index)
        raise ConverterError(
            f"{path} has {len(labels)} lines, but the model has {classes} classes (its "
            f"output is {'x'.join(map(str, output.shape))}): give one label a line, in class "
            "order")
    return labels


def reference_picture(width: int, height: int) -> Image.Image:
    """The picture every stage's reference starts from: fixed, made of what a CNN responds to
    (two gradients and a checkerboard of edges), so no photo has to travel with the split."""
    y, x = np.mgrid[0:height, 0:width]
    red = x * 255 // max(1, width - 1)
    green = y * 255 // max(1, height - 1)
    blue = ((x // 16 + y // 16) % 2) * 255
    return Image.fromarray(np.stack([red, green, blue], axis=-1).astype(np.uint8), "RGB")


def split_model(graph: Graph, plan: Plan, out_dir: Path, options: SplitOptions,
                output_codecs: Sequence[str | None] = ()) -> Manifest:
    """Write the segment files, (optionally) the source model and manifest.json into out_dir;
    stage k's output travels in `output_codecs[k]` (raw by default)."""
    if graph.path is None:
        raise ConverterError("the graph must come from a file to record the source model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source_path = graph.path
    whole = Segment(source_path, options.num_threads)
    mean, std = options.mean, options.std
    info = read_import_info(graph.model)
    if info is not None:  # the normalisation the Keras model was trained with
        mean = info.mean if mean is None else mean
        std = info.std if std is None else std
    preprocessing = replace(default_preprocessing(whole.input_spec, mean, std),
                            resize=options.resize)
    if options.copy_source:
        target = out_dir / source_path.name
        if not target.exists() or not target.samefile(source_path):
            shutil.copyfile(source_path, target)

    # each stage's reference input is what the stage before computed here
    tensor = preprocess(reference_picture(preprocessing.width, preprocessing.height),
                        preprocessing, whole.input_spec)
    stages = []
    for index, stage in enumerate(plan.stages):
        path = out_dir / f"stage{index}.tflite"
        path.write_bytes(pack_model(extract_segment(graph, stage.first_op, stage.last_op)))
        segment = Segment(path, options.num_threads)
        log.info("stage %d: ops %d..%d -> %s", index, stage.first_op, stage.last_op, path.name)
        output = segment.run(tensor)
        reference = write_reference(out_dir, index, tensor, output)
        tensor = output
        stages.append(
            StageSpec(
                index=index,
                file=path.name,
                sha256=sha256_file(path),
                input=segment.input_spec,
                output=segment.output_spec,
                extra_outputs=segment.output_specs[1:],
                macs=graph.macs_between(stage.first_op, stage.last_op),
                first_op=stage.first_op,
                last_op=stage.last_op,
                output_codec=output_codecs[index] if output_codecs else None,
                reference=reference,
            )
        )
    manifest = Manifest(
        source=SourceModel(
            file=source_path.name,
            sha256=sha256_file(source_path),
            input=whole.input_spec,
            output=whole.output_spec,
            extra_outputs=whole.output_specs[1:],
            macs=graph.total_macs,
        ),
        preprocessing=preprocessing,
        stages=tuple(stages),
        labels=options.labels,
        kind=options.kind,
        directory=out_dir,
    )
    manifest.save(out_dir)
    return manifest
