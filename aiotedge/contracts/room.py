"""The room message: how many more frames a replica takes now (docs/topics.md, Room).

`received` counts, per sender, the frames that reached the replica on its own topic: a sender
subtracts what it sent that had not arrived yet when the replica spoke, so a message that
crossed its frames on the way does not make it count the same room twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Room:
    free: int
    capacity: int
    received: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"free": self.free, "capacity": self.capacity,
                           "received": self.received})

    @classmethod
    def parse(cls, payload: bytes | str) -> Room | None:
        """The message, or None if it is not one (anyone may publish on the topic)."""
        try:
            data = json.loads(payload)
            free, capacity, received = data["free"], data["capacity"], data.get("received", {})
        except (ValueError, TypeError, KeyError):
            return None
        counts = (free, capacity, *received.values()) if isinstance(received, dict) else ()
        if not counts or not all(type(n) is int and n >= 0 for n in counts):
            return None
        return cls(free, capacity, {str(k): v for k, v in received.items()})
