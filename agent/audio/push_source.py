"""Audio pushed in by someone else (a network client), as a source the live pipeline reads like a mic."""

from __future__ import annotations

import numpy as np

from agent.audio.blocks import RATE
from agent.audio.ring_buffer import RingBuffer
from agent.audio.source import FINISHED, RUNNING, STOPPED, AudioSource


class PushSource(AudioSource):
    """16 kHz float32 samples handed over with `push`; `finish()` when the sender is done.

    `room()` tells the sender how much fits before it would overwrite unread audio: a network
    handler stops reading its socket instead (TCP flow control), so nothing is ever lost here.
    """

    def __init__(self, name: str, *, block_ms: int = 50, ring_seconds: float = 10.0):
        super().__init__(name, block_ms=block_ms)
        self._buffer = RingBuffer(max(self.block_samples, int(RATE * ring_seconds)))
        self.pushed = 0
        # The session begins now, not at start(): a sender may push and finish before the pipeline starts.
        self._begin_session(self._buffer, RATE)

    def start(self) -> None:
        self._set_state(RUNNING)

    def push(self, samples: np.ndarray) -> None:
        self._buffer.write(np.asarray(samples, np.float32))
        self.pushed += len(samples)

    def room(self) -> int:
        return self._buffer.capacity - self._buffer.available

    def capacity(self) -> int:
        return self._buffer.capacity

    def finish(self) -> None:
        """No more audio: the pipeline reads what is left, then the stream ends."""
        self._end_sessions()
        if self._state == RUNNING:
            self._set_state(FINISHED)

    def stop(self) -> None:
        self._end_sessions(discard=True)
        self._set_state(STOPPED)
