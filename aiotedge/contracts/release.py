"""A release: one model deployed over the broker to the nodes of a pipeline (docs/fleet.md).

The deployer publishes, retained, the model as content-addressed chunks (each on a topic named
by its sha256, within the broker's message limit) and then the release: its id, the model's
kind and sha256, the chunks' hashes, the split (the manifest, with each stage's cut points and
segment sha256, so every node cuts the same segments, and each stage's reference), and which
node serves which stage. Each stage's reference file travels as chunks of its own, on the same
content-addressed topics. A node fetches the chunks, checks every hash, cuts its own segment,
writes its stage's reference beside it and serves it (the stage's self-check runs on it). The live
pointer says which release the cameras send to; a node's report says what it does.

Everything here comes from the network: `parse` checks every field and refuses with a reason,
as contracts/wire.py does for frames.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiotedge.contracts.errors import ManifestError, ReleaseError
from aiotedge.contracts.events import KINDS
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import Topics

RELEASE_VERSION = 1
#: a chunk's size: well within mosquitto's default message limit and a Pi's memory
CHUNK_BYTES = 256 * 1024
#: the largest chunk a node accepts (a release saying more is refused)
MAX_CHUNK_BYTES = 8 * 1024 * 1024
#: the largest model a node accepts
MAX_MODEL_BYTES = 2 * 1024 ** 3
#: a release id: one topic level, readable, short
RELEASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: a node's name: one topic level (its broker user on the secure brokers)
_NODE = re.compile(r"[^/+#\0]{1,128}")
#: what a node does with a release (its report's `state`)
STATES = ("standby", "fetching", "ready", "refused")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_release_id(model: Path | str) -> str:
    """`<model stem>-<UTC time>`: sortable by when it was made, readable in `status`."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(model).stem)[:40] or "model"
    return f"{stem}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


def split_chunks(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> list[bytes]:
    return [data[start:start + chunk_bytes] for start in range(0, len(data), chunk_bytes)]


@dataclass(frozen=True)
class Release:
    """What the deployer publishes (retained) on `Topics.release_plan`."""

    release: str
    kind: str
    model_file: str
    model_sha256: str
    model_bytes: int
    chunk_bytes: int
    #: sha256 of each chunk, in order; chunk i is on `Topics.model_chunk(chunks[i])`
    chunks: tuple[str, ...]
    #: the split: manifest.json's content (cut points, tensors, segment sha256s, labels)
    manifest: dict[str, Any]
    #: per stage, the nodes serving it (more than one: replicas sharing its frames)
    assignments: tuple[tuple[str, ...], ...]
    #: the runtime version the model needs (its `min_runtime_version` metadata), if it says
    min_runtime: str | None = None
    #: per stage, the sha256 of each chunk of its reference file (none for a stage without
    #: one); empty from a deployer before references travelled (its manifest has none)
    references: tuple[tuple[str, ...], ...] = ()
    created_at: float = field(default_factory=time.time)
    version: int = RELEASE_VERSION

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        if not RELEASE_ID.fullmatch(self.release):
            raise ReleaseError(f"release id {self.release[:80]!r} is not one topic level of "
                               "letters, digits, '.', '_' and '-' (at most 64)")
        if self.kind not in KINDS:
            raise ReleaseError(f"unknown model kind {self.kind[:40]!r} (known: "
                               f"{', '.join(KINDS)})")
        if not _SHA256.fullmatch(self.model_sha256) or not all(
                _SHA256.fullmatch(c) for c in (*self.chunks, *self.reference_chunks)):
            raise ReleaseError("a sha256 in the release is not 64 lowercase hex digits")
        if not 0 < self.model_bytes <= MAX_MODEL_BYTES:
            raise ReleaseError(f"model size {self.model_bytes} is out of range")
        if not 0 < self.chunk_bytes <= MAX_CHUNK_BYTES:
            raise ReleaseError(f"chunk size {self.chunk_bytes} is out of range "
                               f"(1 to {MAX_CHUNK_BYTES})")
        if len(self.chunks) != math.ceil(self.model_bytes / self.chunk_bytes):
            raise ReleaseError(f"{len(self.chunks)} chunks cannot hold {self.model_bytes} bytes "
                               f"in chunks of {self.chunk_bytes}")
        manifest = self.split()
        if manifest.source.sha256 != self.model_sha256:
            raise ReleaseError("the split's source model is not the release's model")
        if len(self.assignments) != len(manifest.stages):
            raise ReleaseError(f"{len(self.assignments)} stage assignments for "
                               f"{len(manifest.stages)} stages")
        referenced = tuple(stage.reference is not None for stage in manifest.stages)
        if tuple(bool(chunks) for chunks in self.references) != referenced and (
                self.references or any(referenced)):
            raise ReleaseError("the stages' reference chunks do not match the references "
                               "the release's split names")
        nodes = [node for stage in self.assignments for node in stage]
        if not all(self.assignments) or not all(_NODE.fullmatch(n) for n in nodes):
            raise ReleaseError("every stage needs nodes, each named as one topic level")
        if len(set(nodes)) != len(nodes):
            raise ReleaseError("a node serves two stages of one release")

    def split(self, directory: Path = Path(".")) -> Manifest:
        """The release's manifest, its segments resolved against `directory`."""
        try:
            return Manifest.from_dict(self.manifest, Path(directory))
        except ManifestError as exc:
            raise ReleaseError(f"the release's split: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReleaseError(f"the release's split is malformed: {exc!r}") from exc

    @property
    def reference_chunks(self) -> tuple[str, ...]:
        """Every chunk of every stage's reference."""
        return tuple(digest for stage in self.references for digest in stage)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(node for stage in self.assignments for node in stage)

    def role(self, node: str) -> int | None:
        """The stage `node` serves in this release; None: it stands by."""
        for index, stage in enumerate(self.assignments):
            if node in stage:
                return index
        return None

    def share_group(self, stage: int) -> str:
        """The replicas of a stage share its frames in this group; '' for a lone node."""
        return f"{self.release}-stage{stage}" if len(self.assignments[stage]) > 1 else ""

    def topics(self, pipeline: Topics) -> ReleaseTopics:
        return ReleaseTopics(pipeline.pipeline, pipeline.prefix, release=self.release)

    def to_json(self) -> str:
        return json.dumps({
            "version": self.version, "release": self.release, "kind": self.kind,
            "model_file": self.model_file, "model_sha256": self.model_sha256,
            "model_bytes": self.model_bytes, "chunk_bytes": self.chunk_bytes,
            "chunks": list(self.chunks), "manifest": self.manifest,
            "assignments": [list(stage) for stage in self.assignments],
            "min_runtime": self.min_runtime, "created_at": self.created_at,
            **({"references": [list(stage) for stage in self.references]}
               if self.references else {}),
        }, separators=(",", ":"))

    @classmethod
    def parse(cls, payload: bytes | str) -> Release:
        """The release in a message; ReleaseError saying why it is not one."""
        try:
            data = json.loads(payload)
            if not isinstance(data, dict):
                raise ReleaseError("a release is a JSON object")
            if data.get("version") != RELEASE_VERSION:
                raise ReleaseError(f"release format version {str(data.get('version'))[:20]} "
                                   f"is not supported (this aiotedge reads {RELEASE_VERSION})")
            min_runtime = data.get("min_runtime")
            return cls(
                release=_text(data["release"]), kind=_text(data["kind"]),
                model_file=Path(_text(data["model_file"])).name or "model.tflite",
                model_sha256=_text(data["model_sha256"]),
                model_bytes=_integer(data["model_bytes"]),
                chunk_bytes=_integer(data["chunk_bytes"]),
                chunks=tuple(_text(c) for c in _list(data["chunks"])),
                manifest=_dict(data["manifest"]),
                assignments=tuple(tuple(_text(n) for n in _list(stage))
                                  for stage in _list(data["assignments"])),
                min_runtime=_text(min_runtime) if min_runtime is not None else None,
                created_at=float(data.get("created_at", 0.0)),
                references=tuple(tuple(_text(c) for c in _list(stage))
                                 for stage in _list(data.get("references", []))),
            )
        except ReleaseError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise ReleaseError(f"not a release: {exc!r}"[:300]) from None

    def assemble(self, chunks: dict[str, bytes]) -> bytes:
        """The model from its chunks (by sha256), every hash checked."""
        model = _join("the model", self.chunks, chunks, self.model_sha256)
        if len(model) != self.model_bytes:
            raise ReleaseError(f"the model put together from its chunks is {len(model)} bytes, "
                               f"the release says {self.model_bytes}")
        return model

    def reference(self, stage: int, chunks: dict[str, bytes]) -> bytes | None:
        """Stage `stage`'s reference file from its chunks (by sha256), every hash checked
        against the release; None for a stage without one (or a release from a deployer
        before references travelled)."""
        spec = self.split().stage(stage)
        if spec.reference is None:
            return None
        return _join(f"stage {stage}'s reference", self.references[stage], chunks,
                     spec.reference.sha256)


def _join(what: str, digests: tuple[str, ...], chunks: dict[str, bytes], sha256: str) -> bytes:
    """`what` put together from its chunks, each chunk's hash and the whole's checked."""
    parts = []
    for index, digest in enumerate(digests):
        data = chunks.get(digest)
        if data is None:
            raise ReleaseError(f"{what}: chunk {index} ({digest[:12]}...) is missing")
        if sha256_hex(data) != digest:
            raise ReleaseError(f"{what}: chunk {index}: bad hash ({sha256_hex(data)[:12]}..., "
                               f"the release says {digest[:12]}...)")
        parts.append(data)
    whole = b"".join(parts)
    if sha256_hex(whole) != sha256:
        raise ReleaseError(f"{what} put together from its chunks has a bad hash "
                           f"({sha256_hex(whole)[:12]}..., the release says {sha256[:12]}...)")
    return whole


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _integer(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class LiveRelease:
    """Retained on `Topics.live_release`: the release cameras send their frames to."""

    release: str
    since: float = field(default_factory=time.time)
    #: the release before was abandoned, not drained (a board of it was lost): its stages
    #: stopped before this pointer moved, so cameras send every frame still unanswered to this
    #: release at once
    resend: bool = False

    def to_json(self) -> str:
        return json.dumps({"release": self.release, "since": self.since,
                           **({"resend": True} if self.resend else {})})

    @classmethod
    def parse(cls, payload: bytes) -> LiveRelease | None:
        """None for an empty (cleared) or malformed pointer."""
        try:
            data = json.loads(payload)
            release = data["release"]
            if not isinstance(release, str) or not RELEASE_ID.fullmatch(release):
                return None
            return cls(release, float(data.get("since", 0.0)), data.get("resend") is True)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None


@dataclass(frozen=True)
class NodeReport:
    """A node daemon's retained info (`Topics.info`, kind "node"): what it is, how fast, and
    what it does with the newest release."""

    node: str
    architecture: str
    runtime: str
    runtime_version: str
    memory_mb: int
    available_mb: int
    #: the speed profile: millions of multiply-accumulates per second (nodes/daemons/speed.py)
    mmacs_per_s: float
    cpus: int
    version: str
    release: str | None = None
    state: str = "standby"
    #: the stage it serves in `release` (None: standby)
    stage: int | None = None
    reason: str = ""
    #: the releases whose stage it runs now (the live one and, while a new one starts or an
    #: old one drains, another)
    serving: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"kind": "node", **asdict(self)})

    @classmethod
    def parse(cls, payload: bytes) -> NodeReport | None:
        """The report in a retained info message; None for a stage's info or anything else."""
        try:
            data = json.loads(payload)
            if data.get("kind") != "node" or data.get("state") not in STATES:
                return None
            speed = float(data["mmacs_per_s"])
            if not (math.isfinite(speed) and speed > 0):  # the planner divides by it
                return None
            stage = data.get("stage")
            return cls(
                node=str(data["node"]), architecture=str(data["architecture"]),
                runtime=str(data["runtime"]), runtime_version=str(data["runtime_version"]),
                memory_mb=int(data["memory_mb"]), available_mb=int(data["available_mb"]),
                mmacs_per_s=speed, cpus=int(data["cpus"]),
                version=str(data["version"]),
                release=data["release"] if isinstance(data.get("release"), str) else None,
                state=data["state"], stage=stage if isinstance(stage, int) else None,
                reason=str(data.get("reason", ""))[:500],
                serving=tuple(str(r) for r in data.get("serving", [])),
            )
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None


@dataclass(frozen=True)
class ReleaseTopics(Topics):
    """A release's own chain: its frames, and its stages' info, availability and stats, under
    `release/<id>`, so that two releases never exchange a frame (a rolling update runs both);
    its predictions, errors and labels on the pipeline's own topics."""

    release: str = ""

    @property
    def base(self) -> str:
        return f"{super().base}/release/{self.release}"

    @property
    def frames_base(self) -> str:
        return f"{super().frames_base}/release/{self.release}"

    @property
    def pipeline_base(self) -> str:
        return Topics(self.pipeline, self.prefix).base

    @property
    def predictions(self) -> str:
        return f"{self.pipeline_base}/predictions"

    @property
    def errors(self) -> str:
        return f"{self.pipeline_base}/errors"

    def label(self, source: str) -> str:
        return f"{self.pipeline_base}/label/{source}"

    @property
    def all_labels(self) -> str:
        return f"{self.pipeline_base}/label/+"
