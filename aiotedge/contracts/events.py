"""The JSON messages nodes publish for people and other programs, and their one reader each.

Predictions (what the last stage publishes), error events (a frame refused or lost, on
`.../errors`) and node info (retained `.../info/<node>`: what a node runs). Every text an event
quotes may come from hostile input, so it is clipped: an event always fits in a small MQTT
message, whatever the frame that caused it (a 7 MB field once made a 40 MB event the broker
refused, again and again).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from aiotedge import __version__
from aiotedge.contracts.errors import ManifestError
from aiotedge.contracts.geometry import Box
from aiotedge.contracts.manifest import KINDS, Manifest, Preprocessing
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.wire import Frame, Hop

log = logging.getLogger(__name__)

#: longest reason an event (or a log line about it) carries
MAX_REASON = 500
#: longest topic or frame id quoted
MAX_NAME = 200


def clip(text: str, limit: int) -> str:
    """`text`, or its start and how long it really was when longer than `limit`."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


@dataclass(frozen=True)
class ErrorEvent:
    """A frame refused (bad input) or lost (no result in time), or an online neighbour that
    does not fit a stage (no frame then); one JSON object per event."""

    node: str
    reason: str
    #: the stage that refused it; None for events of a camera
    stage: int | None = None
    topic: str = ""
    #: the frame's id when it could be read
    frame_id: str | None = None
    timestamp: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", clip(self.reason, MAX_REASON))
        object.__setattr__(self, "topic", clip(self.topic, MAX_NAME))
        if self.frame_id is not None:
            object.__setattr__(self, "frame_id", clip(self.frame_id, MAX_NAME))

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), allow_nan=False)

    @classmethod
    def parse(cls, payload: bytes) -> ErrorEvent | None:
        """The event in a message, or None when someone published something else there."""
        try:
            data = json.loads(payload)
            return cls(
                node=str(data["node"]),
                reason=str(data["reason"]),
                stage=data.get("stage") if isinstance(data.get("stage"), int) else None,
                topic=str(data.get("topic", "")),
                frame_id=data["frame_id"] if isinstance(data.get("frame_id"), str) else None,
                timestamp=float(data.get("timestamp", 0.0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            log.debug("ignored a message that is not an error event: %r", exc)
            return None


# -- predictions ---------------------------------------------------------------------------


class Labelled:
    """A result of one class: `name` is its label's first name, `hotdog` of `hotdog, hot dog,
    red hot` (ImageNet's labels list synonyms), what events and summaries call it."""

    label: str

    @property
    def name(self) -> str:
        return self.label.split(",")[0].strip()


@dataclass(frozen=True)
class Score(Labelled):
    index: int
    label: str
    score: float


@dataclass(frozen=True)
class DetectedObject(Labelled):
    """One object a detection model found."""

    index: int
    label: str
    score: float
    #: normalised (0..1) in the picture stage 0 received
    box: Box
    #: in the pixels of the camera's own frame, mapped back through its view (crop, turn,
    #: mirror; contracts.geometry); None when the frame said no view and was a tensor
    box_px: Box | None = None


@dataclass(frozen=True)
class Keypoint:
    """One named body point of a pose model: normalised x, y (and in frame pixels)."""

    name: str
    x: float
    y: float
    score: float
    x_px: float | None = None
    y_px: float | None = None


@dataclass(frozen=True)
class ClassShare(Labelled):
    """The share (0..1) of a segmented frame's pixels given to one class."""

    index: int
    label: str
    share: float


#: the prediction JSON's version (docs/topics.md): 2 added `kind` and the per-kind results
PREDICTION_SCHEMA = 2
#: each kind's result field in a prediction; a prediction carries its own kind's field only
RESULT_FIELDS = {"classification": "top", "detection": "objects", "pose": "keypoints",
                 "segmentation": "classes"}


@dataclass(frozen=True)
class StageTiming:
    stage: int
    #: from the previous node's publish (or the capture) to this stage receiving it
    transfer_ms: float
    #: from receiving to having the output ready (queueing, decoding and inference)
    compute_ms: float


@dataclass(frozen=True)
class Prediction:
    frame_id: str
    source: str
    seq: int
    captured_at: float
    top: list[Score]
    latency_ms: float
    stages: list[StageTiming]
    #: which picture: the photo's file name, or the stream it came from (null: not said)
    name: str | None = None
    kind: str = "classification"
    objects: list[DetectedObject] = field(default_factory=list)
    keypoints: list[Keypoint] = field(default_factory=list)
    classes: list[ClassShare] = field(default_factory=list)
    schema: int = PREDICTION_SCHEMA
    #: the release that computed it (a node daemon's stage, docs/fleet.md); absent otherwise
    release: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}: one of {', '.join(KINDS)}")

    def to_json(self) -> str:
        """Raises ValueError on a NaN or infinite number: JSON has none, and subscribers'
        parsers would refuse the whole message. Carries only its own kind's results."""
        data = asdict(self)
        for kind, name in RESULT_FIELDS.items():
            if kind != self.kind:
                del data[name]
        if self.release is None:
            del data["release"]
        return json.dumps(data, separators=(",", ":"), allow_nan=False)

    @classmethod
    def parse(cls, payload: bytes) -> Prediction | None:
        """A prediction from a message, or None (logged) when someone sent something else."""
        try:
            return cls.from_json(payload)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            log.warning("ignored a message that is not a prediction: %r", exc)
            return None

    @classmethod
    def from_json(cls, text: str | bytes) -> Prediction:
        data = json.loads(text)
        return cls(
            frame_id=data["frame_id"],
            source=data["source"],
            seq=data["seq"],
            captured_at=data["captured_at"],
            top=[Score(**s) for s in data.get("top", [])],
            latency_ms=data["latency_ms"],
            stages=[StageTiming(**t) for t in data["stages"]],
            name=data["name"] if isinstance(data.get("name"), str) else None,
            kind=data.get("kind", "classification"),
            objects=[_detected_object(o) for o in data.get("objects", [])],
            keypoints=[Keypoint(**k) for k in data.get("keypoints", [])],
            classes=[ClassShare(**c) for c in data.get("classes", [])],
            schema=int(data.get("schema", 1)),
            release=data["release"] if isinstance(data.get("release"), str) else None,
        )

    def summary(self) -> str:
        """One line for a terminal: `cam0#3 macaw 0.973 41.2 ms` (first name of the label);
        a detection's objects, a pose's keypoints, a segmentation's largest classes."""
        return (f"{self.source}#{self.seq} "
                f"{results_text(self.kind, self.top, self.objects, self.keypoints, self.classes)}"
                f" {self.latency_ms:.1f} ms")


#: results a prediction's one-line summary names at most
SUMMARY_ITEMS = 3


def results_text(kind: str, top: list[Score], objects: list[DetectedObject],
                 keypoints: list[Keypoint], classes: list[ClassShare]) -> str:
    """A kind's results in a few words: `macaw 0.973`, `2 objects: cat 0.64, dog 0.50`,
    `17 keypoints (mean score 0.62)`, `background 0.80, person 0.20`."""
    if kind == "detection":
        named = ", ".join(f"{o.name} {o.score:.2f}" for o in objects[:SUMMARY_ITEMS])
        more = ", ..." if len(objects) > SUMMARY_ITEMS else ""
        return f"{len(objects)} objects" + (f": {named}{more}" if named else "")
    if kind == "pose":
        if not keypoints:
            return "no keypoints"
        mean = sum(k.score for k in keypoints) / len(keypoints)
        return f"{len(keypoints)} keypoints (mean score {mean:.2f})"
    if kind == "segmentation":
        return ", ".join(f"{c.label} {c.share:.2f}" for c in classes[:SUMMARY_ITEMS]) \
            or "no class"
    if not top:
        return "no class"
    return f"{top[0].name} {top[0].score:.3f}"


def _detected_object(data: dict[str, Any]) -> DetectedObject:
    pixels = data.get("box_px")
    return DetectedObject(index=data["index"], label=data["label"], score=data["score"],
                          box=Box(**data["box"]), box_px=Box(**pixels) if pixels else None)


def top_k(output: np.ndarray, spec: TensorSpec, manifest: Manifest, k: int) -> list[Score]:
    """The k best classes with dequantized scores, best first."""
    scores = spec.dequantize(output).reshape(-1)
    k = min(k, scores.size)
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.lexsort((best, -scores[best]))]
    return [Score(int(i), manifest.label(int(i)), round(float(scores[i]), 6)) for i in best]


def build_prediction(frame: Frame, top: list[Score], last_hop: Hop, *,
                     kind: str = "classification", objects: list[DetectedObject] | None = None,
                     keypoints: list[Keypoint] | None = None,
                     classes: list[ClassShare] | None = None,
                     release: str | None = None) -> Prediction:
    """The prediction for a frame: its timings, the results of its kind, and the release that
    computed it (a node daemon's stage)."""
    hops = [*frame.trace, last_hop]
    timings = []
    previous_done = frame.captured_at
    for hop in hops:
        timings.append(
            StageTiming(
                stage=hop.stage,
                transfer_ms=round((hop.received - previous_done) * 1000, 3),
                compute_ms=round((hop.done - hop.received) * 1000, 3),
            )
        )
        previous_done = hop.done
    return Prediction(
        frame_id=frame.frame_id,
        source=frame.source,
        seq=frame.seq,
        captured_at=frame.captured_at,
        top=top,
        latency_ms=round((last_hop.done - frame.captured_at) * 1000, 3),
        stages=timings,
        name=frame.name,
        kind=kind,
        objects=objects or [],
        keypoints=keypoints or [],
        classes=classes or [],
        release=release,
    )


# -- node info -----------------------------------------------------------------------------


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
    #: stage 0 only: how it turns a photo into its input, for cameras that do it for it
    preprocessing: Preprocessing | None = None
    #: its segment's self-check on its reference at start (aiotedge.tflite.selfcheck):
    #: `identical`, or the difference and the tolerance; "" when not checked
    self_check: str = ""

    @classmethod
    def for_stage(cls, manifest: Manifest, index: int, node: str, share_group: str) -> NodeInfo:
        spec = manifest.stage(index)
        return cls(node=node, stage=index, stages=len(manifest.stages),
                   manifest=manifest.fingerprint, model=manifest.source.file,
                   input=spec.input, output=spec.output, share_group=share_group,
                   preprocessing=manifest.preprocessing if index == 0 else None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node, "kind": "stage", "version": self.version, "stage": self.stage,
            "stages": self.stages, "manifest": self.manifest, "model": self.model,
            "input": self.input.to_dict(), "output": self.output.to_dict(),
            "share_group": self.share_group,
            **({"preprocessing": asdict(self.preprocessing)} if self.preprocessing else {}),
            **({"self_check": self.self_check} if self.self_check else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

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
                       version=str(data.get("version", "")),
                       preprocessing=_preprocessing(data.get("preprocessing")),
                       self_check=str(data.get("self_check", "")))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError,
                ManifestError) as exc:
            log.debug("ignored a message that is not node info: %r", exc)
            return None


#: the largest model input side a node's info may announce (a camera resizes frames to it)
MAX_INPUT_SIDE = 4096


def _preprocessing(data: Any) -> Preprocessing | None:
    """Stage 0's preprocessing from its info; a ValueError for values no model has."""
    if data is None:
        return None
    prep = Preprocessing(width=int(data["width"]), height=int(data["height"]),
                         mean=float(data["mean"]), std=float(data["std"]),
                         resize=str(data.get("resize", "antialiased")))
    sides_ok = all(1 <= side <= MAX_INPUT_SIDE for side in (prep.width, prep.height))
    if not (sides_ok and math.isfinite(prep.mean) and math.isfinite(prep.std) and prep.std):
        raise ValueError(f"unusable preprocessing {prep}")
    return prep
