"""Checking a split on real photos: the chain of segments must compute the whole model.

Each photo is preprocessed once, exactly as stage 0 will (aiotedge.media.image), then fed to the
source model and to the chain of segments. Integer outputs must be identical; float outputs may
differ by FLOAT_TOLERANCE (the interpreter may fuse or order float work differently across
segment boundaries). Every output counts (a detection model's four), and the whole model's
results are shown as the last stage would publish them (aiotedge.tflite.results).

With a reference model (typically the float32 import of the model whose quantized version was
split), each photo also goes through the reference, preprocessed to the same real values, and
the two results are compared as probabilities: does the top-1 class agree, and by how much do
the dequantized outputs differ at most. Quantization changes results legitimately, so this is
reported, not judged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
from aiotedge_converter.errors import ConverterError
from PIL import Image

from aiotedge.contracts.errors import ImageError
from aiotedge.contracts.manifest import Manifest, sha256_file
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.media.image import decode_image, list_images, preprocess
from aiotedge.tflite.results import ResultFilter, read_results
from aiotedge.tflite.runtime import Segment, open_segment

log = logging.getLogger(__name__)

FLOAT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ReferenceResult:
    """The reference model's answer for one photo, next to the chain's."""

    top1: int
    label: str
    agrees: bool
    probability_diff: float


@dataclass(frozen=True)
class ImageResult:
    image: str
    max_abs_diff: float
    tolerance: float
    #: the whole model's results in a few words (`top-1 18: horse`, `3 objects: cat 0.64, ...`)
    result: str
    reference: ReferenceResult | None = None

    @property
    def identical(self) -> bool:
        return self.max_abs_diff == 0.0

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def find_source(manifest: Manifest, model: Path | None) -> Path:
    """The source model named by the manifest, next to it or at `model`, sha256-checked."""
    path = Path(model) if model is not None else manifest.directory / manifest.source.file
    if not path.is_file():
        raise ConverterError(
            f"source model {path} not found; pass --model with {manifest.source.file}"
        )
    digest = sha256_file(path)
    if digest != manifest.source.sha256:
        raise ConverterError(
            f"{path} has sha256 {digest}, but the manifest's source {manifest.source.file} "
            f"has {manifest.source.sha256}: wrong source model"
        )
    return path


def load_chain(manifest: Manifest, num_threads: int | None = None) -> list[Segment]:
    """Every segment, sha256-checked, whose tensors are what the manifest promises."""
    if not manifest.stages:
        raise ConverterError(f"{manifest.directory}: the manifest lists no stages")
    segments = [open_segment(manifest, spec.index, num_threads) for spec in manifest.stages]
    stages = manifest.stages
    edges = [("the source input and stage 0 input", manifest.source.input, stages[0].input)]
    edges += [
        (f"stage {a.index} output and stage {b.index} input", a.output, b.input)
        for a, b in pairwise(stages)
    ]
    edges.append(
        ("the last stage outputs and the source outputs", stages[-1].outputs,
         manifest.source.outputs)
    )
    for what, left, right in edges:
        if not _all_match(left, right):
            raise ConverterError(f"{what} differ: {_text(left)} vs {_text(right)}")
    return segments


def _all_match(left: TensorSpec | tuple[TensorSpec, ...],
               right: TensorSpec | tuple[TensorSpec, ...]) -> bool:
    lefts = left if isinstance(left, tuple) else (left,)
    rights = right if isinstance(right, tuple) else (right,)
    return len(lefts) == len(rights) and all(a.matches(b) for a, b in zip(lefts, rights,
                                                                          strict=True))


def _text(specs: TensorSpec | tuple[TensorSpec, ...]) -> str:
    return ", ".join(map(str, specs)) if isinstance(specs, tuple) else str(specs)


def run_chain_all(segments: Sequence[Segment], tensor: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every output of the last segment, the tensor passed on from each segment before."""
    for segment in segments[:-1]:
        tensor = segment.run(tensor)
    return segments[-1].run_all(tensor)


def run_chain(segments: Sequence[Segment], tensor: np.ndarray) -> np.ndarray:
    """The chain's (first) output."""
    return run_chain_all(segments, tensor)[0]


def open_reference(manifest: Manifest, path: Path, num_threads: int | None) -> Segment:
    """The reference model, checked to take the same photo size and give as many classes."""
    reference = Segment(Path(path), num_threads)
    prep, source = manifest.preprocessing, manifest.source
    if tuple(reference.input_spec.shape[1:3]) != (prep.height, prep.width):
        raise ConverterError(
            f"reference {path} takes {list(reference.input_spec.shape)}, the split "
            f"{prep.height}x{prep.width} photos"
        )
    if reference.output_spec.shape != source.output.shape:
        raise ConverterError(
            f"reference {path} outputs {list(reference.output_spec.shape)}, the split "
            f"{list(source.output.shape)}"
        )
    return reference


def compare_reference(
    manifest: Manifest, reference: Segment, photo: Image.Image, chain_output: np.ndarray
) -> ReferenceResult:
    """Top-1 agreement and largest probability difference between reference and chain."""
    tensor = preprocess(photo, manifest.preprocessing, reference.input_spec)
    expected = reference.output_spec.dequantize(reference.run(tensor))
    actual = manifest.source.output.dequantize(chain_output)
    top1 = int(np.argmax(expected))
    return ReferenceResult(
        top1=top1,
        label=manifest.label(top1),
        agrees=top1 == int(np.argmax(actual)),
        probability_diff=float(np.abs(expected - actual).max()),
    )


def _max_abs_diff(expected: np.ndarray, actual: np.ndarray) -> float:
    if expected.shape != actual.shape:
        return float("inf")
    diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    return float(diff.max()) if diff.size else 0.0


def _result_text(manifest: Manifest, outputs: tuple[np.ndarray, ...]) -> str:
    """The whole model's results: the top class of a classifier, else as a prediction says."""
    if manifest.kind == "classification":
        top1 = int(np.argmax(outputs[0]))
        return f"top-1 {top1}: {manifest.label(top1)}"
    results = read_results(outputs, manifest.source.outputs, manifest, None, top=1,
                           keep=ResultFilter())
    return results.summary()


def verify(
    directory: Path,
    images: Path,
    model: Path | None = None,
    num_threads: int | None = None,
    reference: Path | None = None,
) -> list[ImageResult]:
    """Compare the whole model with the chain of segments on every photo in `images`."""
    manifest = Manifest.load(directory)
    if reference is not None and manifest.kind != "classification":
        raise ConverterError(f"--reference compares a classifier's top-1 class; this split is "
                             f"a {manifest.kind} model")
    whole = Segment(find_source(manifest, model), num_threads)
    chain = load_chain(manifest, num_threads)
    baseline = open_reference(manifest, reference, num_threads) if reference else None
    floats = any(np.dtype(spec.dtype).kind == "f" for spec in manifest.source.outputs)
    tolerance = FLOAT_TOLERANCE if floats else 0.0
    results = []
    for path in list_images(images):
        try:
            photo = decode_image(path.read_bytes())
        except (OSError, ImageError) as exc:
            raise ConverterError(f"{path}: {exc}") from exc
        tensor = preprocess(photo, manifest.preprocessing, whole.input_spec)
        expected = whole.run_all(tensor)
        actual = run_chain_all(chain, tensor)
        result = ImageResult(
            image=path.name,
            max_abs_diff=max(_max_abs_diff(e, a) for e, a in zip(expected, actual, strict=True)),
            tolerance=tolerance,
            result=_result_text(manifest, expected),
            reference=(
                compare_reference(manifest, baseline, photo, actual[0]) if baseline else None
            ),
        )
        log.debug("%s: %s", path.name, result)
        results.append(result)
    return results
