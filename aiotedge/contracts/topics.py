"""Topic names: every topic a pipeline uses, built here and nowhere else (docs/topics.md)."""

from __future__ import annotations

from dataclasses import dataclass

from aiotedge.contracts.errors import ConfigError

DEFAULT_PREFIX = "aiotedge"
ONLINE = "online"
OFFLINE = "offline"
#: mosquitto's count of the messages it dropped at its queue limits (max_queued_messages,
#: max_inflight_messages) since it started, even at QoS 1: what a publisher is never told
BROKER_DROPPED = "$SYS/broker/publish/messages/dropped"


def broker_count(payload: bytes) -> int | None:
    """A $SYS counter's value (mosquitto publishes it as decimal text); None if it is not one."""
    return int(payload) if payload.isdigit() else None


@dataclass(frozen=True)
class Topics:
    pipeline: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.pipeline or any(c in self.pipeline for c in "/+#\0"):
            raise ConfigError(f"pipeline name {self.pipeline!r} must be one topic level")
        if not self.prefix or any(c in self.prefix for c in "+#\0"):
            raise ConfigError(f"topic prefix {self.prefix!r} must not hold wildcards")

    @property
    def base(self) -> str:
        """Everything people and other programs read: JSON and plain text only."""
        return f"{self.prefix}/{self.pipeline}"

    @property
    def frames_base(self) -> str:
        """Photos and activations, on a branch of their own: `mosquitto_sub -t
        'aiotedge/<pipeline>/#'` then shows readable JSON, not megabytes of JPEGs and tensors."""
        return f"{self.prefix}-frames/{self.pipeline}"

    def stage_input(self, index: int) -> str:
        """Where stage `index` takes its frames from (stage 0: photos from cameras)."""
        return f"{self.frames_base}/stage/{index}"

    def replica_input(self, index: int, node: str, sender: str) -> str:
        """A replica's own input: frames a sender gives it because it said it has room
        (docs/architecture.md, Dispatch); the sender's name is the last level."""
        return f"{self.frames_base}/stage/{index}/to/{node}/{sender}"

    def replica_inputs(self, index: int, node: str) -> str:
        """What a replica subscribes to for its own input, whoever sends."""
        return f"{self.frames_base}/stage/{index}/to/{node}/+"

    @property
    def all_stage_inputs(self) -> str:
        return f"{self.frames_base}/stage/+"

    def snapshot(self, camera: str) -> str:
        """Retained: the camera's latest JPEG that got a prediction (dashboards, Home Assistant)."""
        return f"{self.frames_base}/snapshot/{camera}"

    def event_snapshot(self, camera: str, label: str) -> str:
        """Retained: the frame of a camera's latest event of a label, its objects drawn."""
        return f"{self.frames_base}/event-snapshot/{camera}/{label}"

    def camera_event_snapshots(self, camera: str) -> str:
        return f"{self.frames_base}/event-snapshot/{camera}/+"

    @property
    def events(self) -> str:
        """An object of a tracked label appeared, is still there, is gone (JSON)."""
        return f"{self.base}/events"

    def count(self, camera: str, label: str) -> str:
        """Retained: how many objects of a tracked label a camera sees now (JSON)."""
        return f"{self.base}/count/{camera}/{label}"

    def camera_counts(self, camera: str) -> str:
        return f"{self.base}/count/{camera}/+"
    def mask(self, source: str) -> str:
        """Retained: a segmentation model's latest class mask of a source's frame, as a PNG
        (one byte a pixel: the class index; its `frame_id` in a text chunk)."""
        return f"{self.frames_base}/mask/{source}"

    @property
    def predictions(self) -> str:
        return f"{self.base}/predictions"

    @property
    def errors(self) -> str:
        return f"{self.base}/errors"

    def availability(self, node: str) -> str:
        return f"{self.base}/availability/{node}"

    @property
    def all_availability(self) -> str:
        return f"{self.base}/availability/+"

    @property
    def pipeline_availability(self) -> str:
        """Retained: `online` while every stage has a node online (kept by the stages)."""
        return f"{self.base}/availability"

    def label(self, source: str) -> str:
        """Retained: a camera's current top-1 label, published when it changes."""
        return f"{self.base}/label/{source}"

    @property
    def all_labels(self) -> str:
        return f"{self.base}/label/+"

    def info(self, node: str) -> str:
        """Retained: what the node runs (version, stage, manifest), for checks and `status`."""
        return f"{self.base}/info/{node}"

    @property
    def all_info(self) -> str:
        return f"{self.base}/info/+"

    def room(self, index: int, node: str) -> str:
        """A replica of stage `index` says how many more frames it has room for."""
        return f"{self.base}/room/{index}/{node}"

    def stage_rooms(self, index: int) -> str:
        return f"{self.base}/room/{index}/+"

    def probe(self, client_id: str) -> str:
        """A client's own topic, to learn that the retained messages it asked for are all in."""
        return f"{self.base}/probe/{client_id}"

    def stats(self, node: str) -> str:
        return f"{self.base}/stats/{node}"

    @property
    def all_stats(self) -> str:
        return f"{self.base}/stats/+"

    # -- releases (contracts/release.py, docs/fleet.md) --------------------------------------

    @property
    def release_plan(self) -> str:
        """Retained: the newest release, published by the deployer alone."""
        return f"{self.base}/fleet/release"

    @property
    def live_release(self) -> str:
        """Retained: which release the cameras send to, switched by the deployer."""
        return f"{self.base}/fleet/live"

    def coordinator(self, name: str) -> str:
        """Retained while a self-healing coordinator runs (Last Will: cleared): the oldest
        one present decides (docs/fleet.md, self-healing)."""
        return f"{self.base}/fleet/coordinator/{name}"

    @property
    def all_coordinators(self) -> str:
        return f"{self.base}/fleet/coordinator/+"

    def model_chunk(self, sha256: str) -> str:
        """Retained: a piece of a release's model, named by its sha256 (binary: frames branch)."""
        return f"{self.frames_base}/chunk/{sha256}"
