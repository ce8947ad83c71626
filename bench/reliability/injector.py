"""Raw messages injected into stage topics by a scenario, paced by the answers that come back
(the run's observer)."""

from __future__ import annotations

from bench.reliability.harness import Run


class Injector:
    """Publishes raw messages into stage topics (QoS 1), kept at most `window` messages ahead
    of the predictions and error events that answer them: a burst beyond the broker's queue
    limit would be dropped by mosquitto, and that is the overload scenario, not this one."""

    def __init__(self, run: Run, window: int = 64) -> None:
        self.run = run
        self.window = window
        self.sent = 0
        #: messages given up on: no answer came within the run's quiet time (lost, or
        #: answered by nothing, like a dropped duplicate)
        self._written_off = 0
        self._session = run.session("injector")

    def _outstanding(self) -> int:
        assert self.run.observer is not None
        published = self.sent + sum(f.camera.published for f in self.run.feeds)
        return published - self.run.observer.progress - self._written_off

    def publish(self, stage: int, payload: bytes, answered: bool = True) -> None:
        """`answered`: whether a prediction or an error event will answer it (a duplicate,
        dropped by the stage, gets neither: it is not waited for)."""
        observer = self.run.observer
        assert observer is not None
        room = self.window + sum(feed.camera.options.in_flight for feed in self.run.feeds)
        if not observer.wait(lambda: self._outstanding() < room, self.run.deadline,
                             self.run.quiet, "answers to injected messages"):
            self._written_off += self._outstanding()
        self._session.publish(self.run.topics.stage_input(stage), payload, qos=1)
        self.sent += 1
        if not answered:
            self._written_off += 1
