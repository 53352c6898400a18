"""The reader side of every source: ring buffer at any rate -> fixed 16 kHz blocks.

Resampling happens here, on the pipeline's thread, never in PortAudio's callback. soxr's
streaming resampler keeps its filter state across chunks (so block edges leave no clicks and the
anti-aliasing is the same as for a whole file), and is flushed and restarted at every gap, so audio
from either side of a gap is never filtered together.
"""
from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass

import numpy as np
import soxr

from agent.audio.format import RATE
from agent.audio.ring_buffer import RingBuffer


@dataclass
class AudioBlock:
    """Mono float32 samples on the int16 scale at 16 kHz, and where they sit in the stream."""

    samples: np.ndarray
    start: int  # stream position (16 kHz samples since the source started) of samples[0]
    discontinuity: bool = False  # audio right before this block is missing (lost, or device gone)

    @property
    def time(self) -> float:
        """Seconds from the start of the stream to this block's first sample."""
        return self.start / RATE

    @property
    def end(self) -> int:
        return self.start + len(self.samples)


class BlockReader:
    """Reads a ring buffer filled at `in_rate` and hands out `block_samples`-long 16 kHz blocks.

    Blocks are contiguous; a block is shorter only right before a gap or at the end of the
    stream, because audio from both sides of a gap must never be glued into one block.
    """

    def __init__(self, ring: RingBuffer, in_rate: int, block_samples: int, *, offset: int = 0,
                 gap_first: bool = False):
        self.ring = ring
        self.in_rate = int(in_rate)
        self.block_samples = int(block_samples)
        self.offset = offset  # stream position of this ring's sample 0, at 16 kHz
        self._pieces: collections.deque = collections.deque()  # [start, samples, gap_before]
        self._in_next = 0  # ring position expected next; a jump means the ring overwrote audio
        self._out_next = offset
        self._gap_pending = gap_first
        self._resampler = self._new_resampler()
        self._input_done = False

    @property
    def ended(self) -> bool:
        """The ring is closed and every block has been handed out."""
        return self._input_done and not self._pieces

    def read(self, timeout: float | None = None) -> AudioBlock | None:
        """The next block, or None if none is complete within `timeout` seconds (or at the end)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready():
            if self._input_done:
                return None
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            wanted = self._input_needed()
            data = self.ring.read_wait(wanted, remaining)
            if len(data):
                self._convert(data, self.ring.last_read_start)
            elif self.ring.exhausted:
                self._finish()
            if len(data) < wanted and not self.ring.closed and not self._ready():
                return None  # timed out
        return self._take()

    # --- input side ------------------------------------------------------------------------
    def _new_resampler(self):
        if self.in_rate == RATE:
            return None
        return soxr.ResampleStream(self.in_rate, RATE, 1, dtype="float32", quality="HQ")

    def _input_needed(self) -> int:
        missing = max(1, self.block_samples - self._contiguous()[0])
        return max(1, math.ceil(missing * self.in_rate / RATE))

    def _convert(self, data: np.ndarray, in_start: int) -> None:
        if in_start != self._in_next:  # the writer overwrote samples we never read
            self._flush_resampler()  # its tail belongs before the gap
            self._resampler = self._new_resampler()
            self._out_next = self.offset + round(in_start * RATE / self.in_rate)
            self._gap_pending = True
        self._in_next = in_start + len(data)
        data = np.asarray(data, np.float32)
        self._push(self._resampler.resample_chunk(data) if self._resampler else data)

    def _flush_resampler(self) -> None:
        if self._resampler is not None:
            self._push(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))

    def _finish(self) -> None:
        self._flush_resampler()
        self._input_done = True

    def _push(self, samples: np.ndarray) -> None:
        if len(samples) == 0:
            return  # the resampler may hold everything back at first; a pending gap waits too
        self._pieces.append([self._out_next, samples, self._gap_pending])
        self._out_next += len(samples)
        self._gap_pending = False

    # --- output side -----------------------------------------------------------------------
    def _contiguous(self) -> tuple[int, bool]:
        """(samples from the front up to the first gap, whether a gap follows them)."""
        count = 0
        for i, (_, samples, gap) in enumerate(self._pieces):
            if gap and i > 0:
                return count, True
            count += len(samples)
        return count, False

    def _ready(self) -> bool:
        count, gap_follows = self._contiguous()
        return count >= self.block_samples or (count > 0 and (gap_follows or self._input_done))

    def _take(self) -> AudioBlock:
        first = self._pieces[0]
        block = AudioBlock(np.empty(0, np.float32), first[0], first[2])
        parts, n = [], 0
        while self._pieces and n < self.block_samples:
            piece = self._pieces[0]
            if parts and piece[2]:
                break
            k = min(self.block_samples - n, len(piece[1]))
            parts.append(piece[1][:k])
            n += k
            if k == len(piece[1]):
                self._pieces.popleft()
            else:
                piece[0] += k
                piece[1] = piece[1][k:]
                piece[2] = False
        block.samples = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return block
