"""Frames that never reached stage 0: gaps in each source's frame numbers.

Mosquitto drops QoS 1 messages beyond `max_queued_messages` and says so only in its own log
and `$SYS`. An aiotedge camera follows each frame to its result and notices; any other
publisher (a script, a Node-RED flow) does not. Every frame carries its source's number
(`seq`, from 0 at each start of the source), so stage 0, which sees every frame of a source,
can count the numbers that never came. A replicated stage 0 cannot: each replica sees only
its share of the frames.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

#: frame numbers remembered as missing per source, and sources followed at most: a source's
#: jump further than this is taken for a restart of its numbering, not for a loss
REMEMBERED = 4096
SOURCES = 256


@dataclass
class _Source:
    highest: int
    missing: OrderedDict[int, None] = field(default_factory=OrderedDict)


@dataclass(frozen=True)
class Arrival:
    """What one frame's number says: how many numbers before it were skipped (now found
    missing), and whether it is itself one found missing earlier (late, not lost)."""

    skipped: int = 0
    late: bool = False


class SequenceGaps:
    """Follows each source's frame numbers; one caller at a time (stage 0 computes one frame
    at a time)."""

    def __init__(self) -> None:
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def arrived(self, source: str, seq: int) -> Arrival:
        known = self._sources.get(source)
        if known is None or seq == 0 or seq - known.highest > REMEMBERED:
            self._sources[source] = _Source(seq)  # new, restarted, or renumbered
            self._sources.move_to_end(source)
            if len(self._sources) > SOURCES:
                self._sources.popitem(last=False)
            return Arrival()
        self._sources.move_to_end(source)
        if seq <= known.highest:  # a frame sent again, or one skipped earlier arriving late
            late = seq in known.missing
            known.missing.pop(seq, None)
            return Arrival(late=late)
        skipped = range(known.highest + 1, seq)
        known.missing.update(dict.fromkeys(skipped))
        while len(known.missing) > REMEMBERED:
            known.missing.popitem(last=False)
        known.highest = seq
        return Arrival(skipped=len(skipped))
