"""`aiotedge watch`: predictions as they arrive, each frame once, for a terminal or a script."""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Callable

from aiotedge.config.loader import NodeConfig
from aiotedge.contracts.events import Prediction
from aiotedge.nodes.daemons.lifecycle import connect_once, stop_on_signals
from aiotedge.nodes.mqtt.session import MqttSession
from aiotedge.nodes.mqtt.transport import Received
from aiotedge.nodes.observe.dedup import RecentIds


def run_watch(config: NodeConfig, write: Callable[[str], None], *, count: int | None = None,
              as_json: bool = False, stop: threading.Event | None = None) -> int:
    """Pass each prediction to `write` (a one-line summary, or its JSON) until `count` came
    or `stop` is set; a frame's repeats (a QoS 1 redelivery, a camera's new attempt) are left
    out, and so is anything on the topic that is not a prediction. With `count`, a broker that
    cannot be used raises BrokerError at once."""
    stop = stop or stop_on_signals()
    recent = RecentIds()
    seen = 0

    def show(message: Received) -> None:
        nonlocal seen
        prediction = Prediction.parse(message.payload)
        if prediction is None or recent.seen(prediction.frame_id):
            return
        write(message.payload.decode() if as_json else prediction.summary())
        seen += 1
        if count and seen >= count:
            stop.set()

    session = MqttSession(config.broker, f"watch-{socket.gethostname()}-{secrets.token_hex(3)}",
                          one_shot=count is not None)
    session.subscribe(config.topics.predictions, show, qos=1)
    if count is None:  # until stopped: wait for the broker like a daemon
        session.start()
    else:  # a script waiting for `count` predictions wants to know at once if none can come
        connect_once(session)
    stop.wait()
    session.stop()
    return 0
