"""Which release the frames go to: the live pointer the deployer keeps (docs/fleet.md).

A camera sends to the live release's own stage 0, so a frame is computed by one release from
end to end; a camera's resend goes to the release live at that moment. With no live release
(stages started by hand), frames go to the pipeline's own stage 0 as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiotedge.contracts.release import LiveRelease, ReleaseTopics
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.mqtt.transport import Received, Session

log = logging.getLogger(__name__)


def live_stage0(topics: Topics, live: LiveRelease | None) -> str:
    """Where frames go: the live release's stage 0, or the pipeline's own without one."""
    if live is None:
        return topics.stage_input(0)
    return ReleaseTopics(topics.pipeline, topics.prefix, release=live.release).stage_input(0)


def follow_live_release(session: Session, topics: Topics,
                        send_to: Callable[[str], None]) -> None:
    """Call `send_to(topic)` with stage 0's topic whenever the live release is said (the
    retained pointer on connecting, then each change)."""
    def take(message: Received) -> None:
        live = LiveRelease.parse(message.payload) if message.payload else None
        topic = live_stage0(topics, live)
        log.info("frames go to %s (live release: %s)", topic, live.release if live else "none")
        send_to(topic)

    session.subscribe(topics.live_release, take, qos=1)
