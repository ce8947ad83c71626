"""A segment proves on its board that it computes what the workstation computed.

`aiotedge-convert split` stores for every stage a reference beside its segment
(`stageK.reference.npz`: the `input` the stage was given on the split's reference picture, and
the `output` the workstation's interpreter computed from it), named in the manifest with its
sha256. A stage daemon runs its segment on that input at start, and `aiotedge verify` does it
for every stage a board has: an output within the tolerance proves the file, the interpreter
and the CPU's kernels together; beyond it the stage refuses to start, as for a corrupt file.

Why a tolerance and not equality: XNNPACK's int8 kernels round differently on x86_64 and arm
(a stage fed the same activation differs by a few quantization steps, docs/architecture.md),
so an integer output may differ by `TOLERANCE_STEPS` steps, a float one by
`FLOAT_RELATIVE_TOLERANCE` of its largest magnitude.
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiotedge.contracts.errors import ManifestError, ModelError
from aiotedge.contracts.manifest import Manifest, StageReference, sha256_file
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.tflite.runtime import Segment, open_segment

log = logging.getLogger(__name__)

#: how many quantization steps an integer output may differ by from the workstation's: the
#: stages of MobileNetV2 on arm64 differ from x86_64 by up to 12 (docs/architecture.md)
TOLERANCE_STEPS = 16
#: how far a float output may differ, as a share of its largest magnitude (at least 1)
FLOAT_RELATIVE_TOLERANCE = 1e-3


class SelfCheckError(ModelError):
    """A segment computes on this board beyond the tolerance of its reference output."""


@dataclass(frozen=True)
class SelfCheck:
    """A stage's output on its reference input against the workstation's."""

    stage: int
    #: the largest difference: in quantization steps for an integer output, else absolute
    max_diff: float
    tolerance: float
    #: "steps" (integer output) or "" (float output)
    unit: str

    @property
    def identical(self) -> bool:
        return self.max_diff == 0

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.tolerance

    def describe(self) -> str:
        """`identical`, or the difference beside the tolerance."""
        if self.identical:
            return "identical"
        unit = f" {self.unit}" if self.unit else ""
        return (f"max difference {self.max_diff:g}{unit} "
                f"({'within' if self.ok else 'beyond'} the tolerance of {self.tolerance:g})")

    def as_dict(self) -> dict[str, object]:
        return {"max_diff": self.max_diff, "tolerance": self.tolerance, "unit": self.unit,
                "ok": self.ok}


def reference_file(index: int) -> str:
    """The name of stage `index`'s reference, beside its `stage{index}.tflite`."""
    return f"stage{index}.reference.npz"


def write_reference(directory: Path, index: int, tensor_in: np.ndarray,
                    tensor_out: np.ndarray) -> StageReference:
    """Store a stage's reference input and output and name it for the manifest.

    The file is what `np.savez_compressed` writes, but with a fixed date on its members: the
    same split gives the same bytes, so the same sha256 and manifest fingerprint."""
    path = Path(directory) / reference_file(index)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, tensor in (("input", tensor_in), ("output", tensor_out)):
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(member, "w") as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(tensor),
                                          allow_pickle=False)
    path.write_bytes(buffer.getvalue())
    return StageReference(file=path.name, sha256=sha256_file(path))


def read_reference(manifest: Manifest, index: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A stage's reference input and output, checked against the manifest (sha256, and the
    tensors the stage takes and gives); None when the manifest has none for it."""
    spec = manifest.stage(index)
    if spec.reference is None:
        return None
    path = manifest.directory / spec.reference.file
    if not path.is_file():
        raise ManifestError(f"reference file {path} for stage {index} does not exist")
    digest = sha256_file(path)
    if digest != spec.reference.sha256:
        raise ManifestError(f"reference file {path} has sha256 {digest}, the manifest expects "
                            f"{spec.reference.sha256}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            tensors = stored["input"], stored["output"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ManifestError(f"reference file {path}: cannot read it: {exc}") from exc
    for side, tensor, promised in zip(("input", "output"), tensors, (spec.input, spec.output),
                                      strict=True):
        if not _fits(tensor, promised):
            raise ManifestError(f"reference file {path}: its {side} is {tensor.dtype.name}"
                                f"{list(tensor.shape)}, stage {index} {side} is {promised}")
    return tensors


def _fits(tensor: np.ndarray, spec: TensorSpec) -> bool:
    return tensor.dtype.name == spec.dtype and list(tensor.shape) == list(spec.shape)


def compare(index: int, spec: TensorSpec, expected: np.ndarray,
            actual: np.ndarray) -> SelfCheck:
    """How far `actual` is from `expected`, and the tolerance for the stage's output."""
    difference = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    max_diff = float(difference.max()) if difference.size else 0.0
    if np.dtype(spec.dtype).kind == "f":
        magnitude = float(np.abs(expected).max()) if expected.size else 0.0
        return SelfCheck(index, max_diff, FLOAT_RELATIVE_TOLERANCE * max(1.0, magnitude), "")
    return SelfCheck(index, max_diff, float(TOLERANCE_STEPS), "steps")


def self_check(manifest: Manifest, index: int, segment: Segment) -> SelfCheck | None:
    """Run stage `index`'s segment on its reference input; None without a reference."""
    reference = read_reference(manifest, index)
    if reference is None:
        return None
    tensor_in, expected = reference
    return compare(index, manifest.stage(index).output, expected, segment.run(tensor_in))


def require_reference(manifest: Manifest, index: int, segment: Segment) -> SelfCheck | None:
    """The self-check of a stage at start: logged, and a SelfCheckError beyond tolerance."""
    check = self_check(manifest, index, segment)
    if check is None:
        log.info("stage %d: the manifest has no reference for it (split before references "
                 "were written): not self-checked", index)
    elif not check.ok:
        raise SelfCheckError(
            f"stage {index} ({manifest.segment_path(index)}) computes on this machine beyond "
            f"its reference: {check.describe()}; re-split, or check the segment file and the "
            "interpreter (aiotedge verify)")
    else:
        log.info("stage %d self-check on its reference: %s", index, check.describe())
    return check


def verify_board(manifest: Manifest, num_threads: int | None = None
                 ) -> dict[int, SelfCheck | None]:
    """`aiotedge verify`: every stage whose segment is on this board (beside the manifest), on
    its reference; None for a stage the manifest has no reference for."""
    present = [spec.index for spec in manifest.stages
               if manifest.segment_path(spec.index).is_file()]
    if not present:
        raise ManifestError(f"{manifest.directory}: none of the manifest's segment files is "
                            "there: copy this board's stageK.tflite beside its manifest.json")
    return {index: self_check(manifest, index, open_segment(manifest, index, num_threads))
            for index in present}


def verify_table(manifest: Manifest, checks: dict[int, SelfCheck | None]) -> str:
    """The table `aiotedge verify` prints: stage, max diff, tolerance, ok."""
    rows = [("stage", "max diff", "tolerance", "ok")]
    for spec in manifest.stages:
        check = checks.get(spec.index, False)
        if check is False:
            rows.append((str(spec.index), "-", "-", "not on this board"))
        elif check is None:
            rows.append((str(spec.index), "-", "-", "no reference (an older split)"))
        else:
            unit = f" {check.unit}" if check.unit else ""
            verdict = "identical" if check.identical else "yes" if check.ok else "NO"
            rows.append((str(spec.index), f"{check.max_diff:g}{unit}",
                         f"{check.tolerance:g}{unit}", verdict))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                         strict=True)).rstrip()
                     for row in rows)
