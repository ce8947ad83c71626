"""Error events: what a node publishes on `.../errors` when it refuses or loses a frame.

An event quotes what went wrong, and what went wrong may be megabytes of hostile input: every
text in an event is clipped, so an event always fits in a small MQTT message whatever the frame
that caused it (a 7 MB field once produced a 40 MB event the broker refused, again and again).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field

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
    """A frame refused (bad input) or lost (no result in time); one JSON object per event."""

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
