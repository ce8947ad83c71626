"""Which release the frames go to: the live pointer the deployer keeps (docs/fleet.md).

A camera sends to the live release's own stage 0, so a frame is computed by one release from
end to end; a camera's resend goes to the release live at that moment. A pointer that moves
with `resend` says the release before was abandoned, its stages stopped: the camera sends its
unanswered frames to the new one at once. With no live release (stages started by hand),
frames go to the pipeline's own stage 0 as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiotedge.contracts.release import LiveRelease, ReleaseTopics
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.mqtt.transport import Received, Session

log = logging.getLogger(__name__)


def live_topics(topics: Topics, live: LiveRelease | None) -> Topics:
    """Where frames go: the live release's own chain, or the pipeline's without one."""
    if live is None:
        return topics
    return ReleaseTopics(topics.pipeline, topics.prefix, release=live.release)


def follow_live_release(session: Session, topics: Topics,
                        send_to: Callable[[Topics, bool], None]) -> None:
    """Call `send_to(chain, resend)` with the live release's topics, and whether the pointer
    says the release before was abandoned, whenever the live release is said (the retained
    pointer on connecting, then each change; on the network thread)."""
    def take(message: Received) -> None:
        live = LiveRelease.parse(message.payload) if message.payload else None
        chain = live_topics(topics, live)
        log.info("frames go to %s (live release: %s%s)", chain.stage_input(0),
                 live.release if live else "none",
                 ", the one before abandoned" if live and live.resend else "")
        send_to(chain, live is not None and live.resend)

    session.subscribe(topics.live_release, take, qos=1)
