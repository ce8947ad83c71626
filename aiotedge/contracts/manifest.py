"""The contract between the converter (workstation) and the stage daemons (boards).

`manifest.json` travels with the segment files. Everything a board needs to know about its
segment -- which tensor it receives, which it emits, how stage 0 preprocesses a photo, how the
last stage labels its output -- is read from here, never guessed from the model at run time.
The format is documented in docs/manifest.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from aiotedge.contracts.codec import CODECS
from aiotedge.contracts.errors import ManifestError
from aiotedge.contracts.tensors import TensorSpec

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: what the last stage's output means (docs/models.md); a manifest without `kind` classifies
KINDS = ("classification", "detection", "pose", "segmentation")
#: how stage 0 resizes a photo (Preprocessing.resize); a manifest without one: "antialiased"
RESIZES = ("antialiased", "sampled")


def _outputs_to_dict(extra: tuple[TensorSpec, ...]) -> dict[str, Any]:
    """`extra_outputs` when there are some: a single-output split's manifest reads as before."""
    return {"extra_outputs": [spec.to_dict() for spec in extra]} if extra else {}


def _outputs_from_dict(data: dict[str, Any]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec.from_dict(spec) for spec in data.get("extra_outputs", ()))


@dataclass(frozen=True)
class Preprocessing:
    """How stage 0 turns a photo into the model's input tensor.

    Pixels (RGB, 0..255, resized to width x height with bilinear filtering) become real values
    ``(pixel - mean) / std`` and are then quantized with the input's scale and zero point when
    the input is an integer tensor. This is the convention of TFLite model metadata
    (NormalizationOptions); for a uint8 model with mean = zero point and std = 1/scale it is the
    identity, so raw pixels are fed unchanged, as they are to an unquantized uint8 input with
    mean 0 and std 1 (MoveNet). The converter derives them from the model's input tensor
    (media.image.default_preprocessing).
    """

    width: int
    height: int
    mean: float = 127.5
    std: float = 127.5
    #: "antialiased": Pillow's bilinear, which widens its filter to the scale when shrinking
    #: (every source pixel counts); "sampled": bilinear interpolation of the 2x2 pixels nearest
    #: each output pixel's centre, as TensorFlow's tf.image.resize, TFLite Support (libyuv) and
    #: OpenCV's INTER_LINEAR do (what models trained in TensorFlow saw)
    resize: str = "antialiased"

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise ManifestError(f"unknown resize {self.resize!r} (known: {', '.join(RESIZES)})")


@dataclass(frozen=True)
class StageReference:
    """A stage's reference: a file beside its segment (`stageK.reference.npz`: `input`, and
    the `output` the workstation computed from it), which a board runs to prove its segment
    (aiotedge.tflite.selfcheck)."""

    file: str
    sha256: str


@dataclass(frozen=True)
class StageSpec:
    """One segment: which file, which tensors cross its two boundaries, what it costs."""

    index: int
    file: str
    sha256: str
    input: TensorSpec
    output: TensorSpec
    macs: int
    first_op: int
    last_op: int
    #: the lossless codec its output travels in (contracts.codec), None for raw bytes
    output_codec: str | None = None
    #: the last stage only: the model's outputs after `output` (a detection model's classes,
    #: scores and count); they are read into the prediction, never sent on
    extra_outputs: tuple[TensorSpec, ...] = ()
    #: its reference input and output; None in a manifest written before references were
    reference: StageReference | None = None

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (self.output, *self.extra_outputs)

    def __post_init__(self) -> None:
        if self.output_codec is not None and self.output_codec not in CODECS:
            raise ManifestError(f"stage {self.index}: unknown output_codec "
                                f"{self.output_codec!r} (known: {', '.join(CODECS)})")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input"] = self.input.to_dict()
        out["output"] = self.output.to_dict()
        if self.output_codec is None:  # a raw split's manifest reads as before
            del out["output_codec"]
        if self.reference is None:
            del out["reference"]
        del out["extra_outputs"]
        return {**out, **_outputs_to_dict(self.extra_outputs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageSpec:
        return cls(
            index=int(data["index"]),
            file=str(data["file"]),
            sha256=str(data["sha256"]),
            input=TensorSpec.from_dict(data["input"]),
            output=TensorSpec.from_dict(data["output"]),
            macs=int(data["macs"]),
            first_op=int(data["first_op"]),
            last_op=int(data["last_op"]),
            output_codec=data.get("output_codec"),
            extra_outputs=_outputs_from_dict(data),
            reference=(StageReference(file=str(data["reference"]["file"]),
                                      sha256=str(data["reference"]["sha256"]))
                       if data.get("reference") is not None else None),
        )


@dataclass(frozen=True)
class SourceModel:
    file: str
    sha256: str
    input: TensorSpec
    output: TensorSpec
    macs: int
    #: the model's outputs after `output`, as StageSpec.extra_outputs
    extra_outputs: tuple[TensorSpec, ...] = ()

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (self.output, *self.extra_outputs)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input"] = self.input.to_dict()
        out["output"] = self.output.to_dict()
        del out["extra_outputs"]
        return {**out, **_outputs_to_dict(self.extra_outputs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceModel:
        return cls(file=str(data["file"]), sha256=str(data["sha256"]),
                   input=TensorSpec.from_dict(data["input"]),
                   output=TensorSpec.from_dict(data["output"]), macs=int(data["macs"]),
                   extra_outputs=_outputs_from_dict(data))


@dataclass(frozen=True)
class Manifest:
    source: SourceModel
    preprocessing: Preprocessing
    stages: tuple[StageSpec, ...]
    labels: tuple[str, ...] | None = None
    #: what the model's outputs mean (KINDS): how the last stage reads them
    kind: str = "classification"
    format_version: int = MANIFEST_VERSION
    #: directory the manifest was read from; segment files are resolved against it.
    directory: Path = field(default=Path("."), compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ManifestError(f"unknown kind {self.kind!r} (known: {', '.join(KINDS)})")
        if self.stages and self.stages[-1].output_codec is not None:
            raise ManifestError("the last stage sends a prediction, not a tensor: it has no "
                                "output_codec")
        for stage in self.stages:
            stage.input.check_wire_dtype()
            if stage.extra_outputs and stage is not self.stages[-1]:
                raise ManifestError(f"stage {stage.index} has several outputs: only the last "
                                    "stage may")
        for before, after in pairwise(self.stages):
            before.output.check_wire_dtype()
            if not before.output.matches(after.input):
                raise ManifestError(
                    f"stage {after.index} takes {after.input}, but stage {before.index} "
                    f"sends {before.output}: the stages do not form one chain"
                )

    @property
    def fingerprint(self) -> str:
        """sha256 of the manifest's content: equal on every board of one split."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def segment_path(self, index: int) -> Path:
        return self.directory / self.stage(index).file

    def stage(self, index: int) -> StageSpec:
        if not 0 <= index < len(self.stages):
            raise ManifestError(
                f"stage index {index} is out of range: the manifest has {len(self.stages)} stages"
            )
        return self.stages[index]

    def label(self, class_index: int) -> str:
        if self.labels and 0 <= class_index < len(self.labels):
            return self.labels[class_index]
        return str(class_index)

    def to_dict(self) -> dict[str, Any]:
        """A classifier resized as before writes no `kind` and no `resize`: its manifest reads
        as it did, with the same fingerprint, so boards can be upgraded one at a time."""
        preprocessing = asdict(self.preprocessing)
        if self.preprocessing.resize == Preprocessing.resize:
            del preprocessing["resize"]
        return {
            "format_version": self.format_version,
            **({"kind": self.kind} if self.kind != "classification" else {}),
            "source": self.source.to_dict(),
            "preprocessing": preprocessing,
            "labels": list(self.labels) if self.labels is not None else None,
            "stages": [stage.to_dict() for stage in self.stages],
        }

    def save(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], directory: Path) -> Manifest:
        version = data.get("format_version")
        if version != MANIFEST_VERSION:
            raise ManifestError(
                f"manifest format_version {version!r} is not supported "
                f"(this aiotedge reads version {MANIFEST_VERSION})"
            )
        labels = data.get("labels")
        return cls(
            source=SourceModel.from_dict(data["source"]),
            preprocessing=Preprocessing(**data["preprocessing"]),
            stages=tuple(StageSpec.from_dict(s) for s in data["stages"]),
            labels=tuple(labels) if labels is not None else None,
            kind=str(data.get("kind", "classification")),
            format_version=version,
            directory=directory,
        )

    @classmethod
    def load(cls, path: Path | str) -> Manifest:
        """Read a manifest from its file or from the directory that holds it."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path}: cannot read manifest: {exc}") from exc
        try:
            return cls.from_dict(data, path.parent)
        except ManifestError as exc:
            raise ManifestError(f"{path}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{path}: malformed manifest: {exc!r}") from exc

    def check_segment(self, index: int) -> Path:
        """Path of a stage's segment file after checking it is the one the manifest names."""
        spec = self.stage(index)
        path = self.segment_path(index)
        if not path.is_file():
            raise ManifestError(f"segment file {path} for stage {index} does not exist")
        digest = sha256_file(path)
        if digest != spec.sha256:
            raise ManifestError(
                f"segment file {path} has sha256 {digest}, the manifest expects {spec.sha256}"
            )
        return path


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
