"""Predictions: what the last stage publishes, as JSON any MQTT client can read."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import numpy as np

from aiotedge.manifest import Manifest, TensorSpec
from aiotedge.wire import Frame, Hop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    index: int
    label: str
    score: float


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

    def to_json(self) -> str:
        """Raises ValueError on a NaN or infinite number: JSON has none, and subscribers'
        parsers would refuse the whole message."""
        return json.dumps(asdict(self), separators=(",", ":"), allow_nan=False)

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
            top=[Score(**s) for s in data["top"]],
            latency_ms=data["latency_ms"],
            stages=[StageTiming(**t) for t in data["stages"]],
        )

    def summary(self) -> str:
        """One line for a terminal: `cam0#3 macaw 0.973 41.2 ms` (first name of the label)."""
        best = self.top[0]
        name = best.label.split(",")[0]
        return f"{self.source}#{self.seq} {name} {best.score:.3f} {self.latency_ms:.1f} ms"


def top_k(output: np.ndarray, spec: TensorSpec, manifest: Manifest, k: int) -> list[Score]:
    """The k best classes with dequantized scores, best first."""
    scores = spec.dequantize(output).reshape(-1)
    k = min(k, scores.size)
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.lexsort((best, -scores[best]))]
    return [Score(int(i), manifest.label(int(i)), round(float(scores[i]), 6)) for i in best]


def build_prediction(frame: Frame, top: list[Score], last_hop: Hop) -> Prediction:
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
    )
