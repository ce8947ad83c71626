"""A stand-in for a whole pipeline, for camera tests and benchmarks that are about what the
camera sends: it answers every frame sent to stage 0 with a prediction at once."""

from __future__ import annotations

import threading

from aiotedge.contracts.events import Prediction, Score
from aiotedge.contracts.topics import Topics
from aiotedge.contracts.wire import decode_photo
from aiotedge.nodes.mqtt.session import MqttSession


class AnsweringStage:
    """Answers every frame sent to stage 0 with a prediction (a camera waits for its frames'
    results). `frames` holds the payloads it took, in order; `answer` makes a frame's prediction
    (a fake last stage of another kind), else every frame is class 0 "answer". `topics`: a
    chain of the pipeline's other than its own (a release's)."""

    def __init__(self, broker, pipeline: str, answer=None, topics: Topics | None = None) -> None:
        self.topics = topics or Topics(pipeline)
        self.answer = answer
        self.frames: list[bytes] = []
        self._received = threading.Condition()
        self.session = MqttSession(broker.address, f"answering-{pipeline}")
        self.session.subscribe(self.topics.stage_input(0), self._answer)
        self.session.start()
        assert self.session.wait_connected(10)

    def _answer(self, message) -> None:
        with self._received:
            self.frames.append(message.payload)
            self._received.notify_all()
        frame = decode_photo(message.payload)
        prediction = self.answer(frame) if self.answer else Prediction(
            frame.frame_id, frame.source, frame.seq, frame.captured_at,
            [Score(0, "answer", 1.0)], 1.0, [])
        self.session.publish(self.topics.predictions, prediction.to_json(), qos=1)

    def wait_frames(self, count: int, timeout: float = 60.0) -> list[bytes]:
        """The payloads taken so far, once there are at least `count`."""
        with self._received:
            if not self._received.wait_for(lambda: len(self.frames) >= count, timeout):
                raise AssertionError(f"{len(self.frames)} frames within {timeout} s, not {count}")
            return list(self.frames)

    def stop(self) -> None:
        self.session.stop()
