"""The interface every audio source has: start, read 16 kHz blocks, stop; state and stats.

A source owns a writer (a PortAudio callback, a pacing thread, a pipe reader) that fills a
`RingBuffer`, and hands the pipeline fixed blocks through a `BlockReader`. A source that can lose
its device (the microphone) starts a new ring and reader, a "session", each time it reconnects;
`read` moves on to the next session once the previous one is drained.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

from agent.audio.blocks import RATE, AudioBlock, BlockReader
from agent.audio.ring_buffer import RingBuffer

log = logging.getLogger(__name__)

STOPPED = "stopped"  # not started yet, or stopped
RUNNING = "running"  # audio is flowing
WAITING_FOR_DEVICE = "waiting_for_device"  # the device is missing or failed; retrying
FINISHED = "finished"  # a file or pipe reached its end (blocks may still be unread)


@dataclass
class SourceStats:
    state: str
    device: str  # what the audio comes from: device name, file path, "stdin"
    capture_rate: int  # the rate audio is captured at (resampled to 16 kHz when different)
    rate: int  # the rate blocks are delivered at: always 16 kHz
    overflows: int  # input overflows reported by the device driver (audio lost before us)
    lost_samples: int  # samples (at capture_rate) overwritten because the pipeline fell behind
    captured_samples: int  # samples (at capture_rate) written into the ring buffers
    reconnects: int  # times the device came back after being lost

    @property
    def lost_seconds(self) -> float:
        return self.lost_samples / self.capture_rate if self.capture_rate else 0.0


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class AudioSource:
    """Base class: subclasses implement `start`/`stop` and call `_begin_session` with their ring."""

    def __init__(self, name: str, *, block_ms: int = 50):
        self.name = name
        self.device_name = name  # what the audio comes from; a microphone sets its device's name
        self.rate = RATE
        self.block_samples = RATE * block_ms // 1000
        self._state = STOPPED
        self._sessions = threading.Condition()
        self._readers: collections.deque[BlockReader] = collections.deque()  # not yet drained, oldest first
        self._ring: RingBuffer | None = None  # the ring being written now
        self._no_more_sessions = False
        self.capture_rate = RATE
        self.overflows = 0
        self.reconnects = 0
        self._lost_closed = 0  # totals of rings no longer written
        self._captured_closed = 0

    # --- what the pipeline calls -----------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def state(self) -> str:
        return self._state

    @property
    def ended(self) -> bool:
        """True once no block will ever come again (end of file or pipe, or stopped)."""
        with self._sessions:
            return self._no_more_sessions and all(r.ended for r in self._readers)

    def read(self, timeout: float | None = None) -> AudioBlock | None:
        """The next block, or None if none came within `timeout` seconds or the stream ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._sessions:
                while len(self._readers) > 1 and self._readers[0].ended:
                    self._readers.popleft()
                reader = self._readers[0] if self._readers else None
                if reader is None or reader.ended:
                    if self._no_more_sessions:
                        return None
                    # Between sessions (device gone) or before the first: wait, do not spin.
                    if not self._sessions.wait_for(
                            lambda r=reader: self._no_more_sessions or (self._readers and self._readers[-1] is not r),
                            _remaining(deadline)):
                        return None  # timed out
                    continue
            block = reader.read(_remaining(deadline))
            if block is not None or not reader.ended:
                return block
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def stats(self) -> SourceStats:
        with self._sessions:
            ring = self._ring
            lost, captured = self._lost_closed, self._captured_closed
        return SourceStats(
            state=self._state, device=self.device_name, capture_rate=self.capture_rate, rate=self.rate,
            overflows=self.overflows,
            lost_samples=lost + (ring.lost_samples if ring else 0),
            captured_samples=captured + (ring.written_samples if ring else 0),
            reconnects=self.reconnects)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # --- for subclasses --------------------------------------------------------------------
    def _set_state(self, state: str, why: str = "") -> None:
        """Log state changes once each (not every retry): a warning when audio stops flowing."""
        if state == self._state:
            return
        self._state = state
        level = logging.WARNING if state == WAITING_FOR_DEVICE else logging.INFO
        log.log(level, "audio source %s: %s%s", self.name, state, f" ({why})" if why else "")

    def _begin_session(self, ring: RingBuffer, capture_rate: int, *, offset: int = 0, gap: bool = False) -> None:
        """Start reading `ring` (filled at `capture_rate`) once the earlier sessions are drained.

        `offset` is the stream position of the ring's first sample, at 16 kHz; `gap` marks the
        session's first block as a discontinuity.
        """
        with self._sessions:
            self._close_ring()
            self._ring = ring
            self.capture_rate = capture_rate
            self._readers.append(BlockReader(ring, capture_rate, self.block_samples, offset=offset, gap_first=gap))
            self._sessions.notify_all()

    def _end_session(self) -> None:
        """The current ring gets no more audio; the reader drains what is left in it."""
        with self._sessions:
            self._close_ring()

    def _end_sessions(self, *, discard: bool = False) -> None:
        """No session will follow: `read` returns None once everything is drained (at once if `discard`)."""
        with self._sessions:
            self._close_ring()
            self._no_more_sessions = True
            if discard:  # stop(): blocks not read yet are dropped
                self._readers.clear()
            self._sessions.notify_all()

    def _stream_end(self) -> int:
        """Stream position (16 kHz) one past the newest sample written so far."""
        with self._sessions:
            if not self._readers:
                return 0
            last = self._readers[-1]
            return last.offset + round(last.ring.written_samples * RATE / last.in_rate)

    def _close_ring(self) -> None:  # with self._sessions held
        if self._ring is not None:
            self._ring.close()
            self._lost_closed += self._ring.lost_samples
            self._captured_closed += self._ring.written_samples
            self._ring = None
