"""A preallocated single-writer / single-reader ring buffer of audio samples.

The writer is usually PortAudio's callback thread, so `write` only copies into storage allocated
once, and never waits for the reader: when the reader falls behind, the oldest unread samples are
overwritten and counted in `lost_samples`. Every sample has a stream position (0, 1, 2, ... since
the buffer was made, lost ones included), which lets the pipeline time-stamp what it reads and see
exactly where audio is missing.

The default dtype is float32 holding values on the int16 scale (what `agent.audio_file` and the
recognizer's frontend use): int16 capture converts to it exactly during the copy, WAV files with
more than 16 bits keep their precision, and the resampler works in float32 anyway. At 16 kHz ten
seconds cost 640 KB, so the doubled size against int16 does not matter.

Why a lock is acceptable on the audio thread: it is only ever held for a bounded copy (one block
on the write side; at most `capacity` samples on the read side, well under a millisecond), never
while waiting (`Condition.wait` releases it). A PortAudio block is tens of milliseconds and the
host API buffers more, so a sub-millisecond wait cannot cause an overflow; the Python callback
has to take the GIL anyway, which is a far larger source of jitter.
"""
from __future__ import annotations

import threading

import numpy as np


class RingBuffer:
    """Fixed-size FIFO of samples with overwrite-oldest semantics and stream positions."""

    def __init__(self, capacity: int, dtype=np.float32):
        if capacity < 1:
            raise ValueError(f"ring buffer capacity must be at least 1 sample, got {capacity}")
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, dtype)
        self._cond = threading.Condition(threading.Lock())
        self._written = 0  # stream position one past the newest sample
        self._read = 0  # stream position of the oldest unread sample
        self._lost = 0
        self._closed = False
        self.last_read_start = 0  # stream position of the first sample of the latest read

    # --- state -----------------------------------------------------------------------------
    @property
    def written_samples(self) -> int:
        """Samples ever written (lost ones included): the stream position of the next write."""
        return self._written

    @property
    def read_position(self) -> int:
        """Stream position of the next sample `read` will return."""
        return self._read

    @property
    def lost_samples(self) -> int:
        """Samples overwritten before the reader got them."""
        return self._lost

    @property
    def available(self) -> int:
        with self._cond:
            return self._written - self._read

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def exhausted(self) -> bool:
        """Closed and everything in it has been read."""
        with self._cond:
            return self._closed and self._written == self._read

    # --- writer side -----------------------------------------------------------------------
    def write(self, block) -> int:
        """Copy `block` in without waiting; returns how many unread samples were lost to make room.

        Writes after `close` are dropped (a late callback from a stream being shut down).
        """
        n = len(block)
        with self._cond:
            if self._closed or n == 0:
                return 0
            if n > self.capacity:  # only the newest `capacity` samples can be kept
                block = block[n - self.capacity:]
            self._copy_in(block, self._written + n - len(block))
            self._written += n
            lost = self._written - self.capacity - self._read
            if lost > 0:
                self._read += lost
                self._lost += lost
            self._cond.notify_all()
            return max(lost, 0)

    def write_wait(self, block, timeout: float | None = None) -> bool:
        """Write all of `block`, waiting for the reader to make room instead of losing audio.

        For sources that can be paused (files, pipes): back-pressure instead of overwrites.
        Returns False if the buffer was closed or `timeout` passed first (then part may be written).
        """
        pos, n = 0, len(block)
        with self._cond:
            while pos < n:
                ok = self._cond.wait_for(lambda: self._closed or self._written - self._read < self.capacity, timeout)
                if self._closed or not ok:
                    return False
                k = min(n - pos, self.capacity - (self._written - self._read))
                self._copy_in(block[pos:pos + k], self._written)
                self._written += k
                pos += k
                self._cond.notify_all()
        return True

    def close(self) -> None:
        """No more data will come: wakes a waiting reader, which still gets what is left."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- reader side -----------------------------------------------------------------------
    def read(self, max_samples: int | None = None) -> np.ndarray:
        """Return the unread samples (at most `max_samples`), oldest first; possibly empty."""
        with self._cond:
            return self._take(max_samples)

    def read_wait(self, n: int, timeout: float | None = None) -> np.ndarray:
        """Wait until `n` samples are unread, then return exactly `n` of them.

        Returns fewer (possibly none) if `timeout` seconds pass or the buffer is closed first.
        `n` is capped at the capacity, the most that can ever be unread at once.
        """
        n = min(int(n), self.capacity)
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._written - self._read >= n, timeout)
            return self._take(n)

    # --- internals (called with the lock held) ---------------------------------------------
    def _copy_in(self, block, position: int) -> None:
        """Store `block` (at most capacity long) at stream `position`: one or two slice copies."""
        i = position % self.capacity
        first = min(len(block), self.capacity - i)
        self._buf[i:i + first] = block[:first]
        self._buf[:len(block) - first] = block[first:]

    def _take(self, max_samples: int | None) -> np.ndarray:
        n = self._written - self._read
        if max_samples is not None:
            n = max(0, min(n, int(max_samples)))
        out = np.empty(n, self._buf.dtype)
        i = self._read % self.capacity
        first = min(n, self.capacity - i)
        out[:first] = self._buf[i:i + first]
        out[first:] = self._buf[:n - first]
        self.last_read_start = self._read
        self._read += n
        if n:
            self._cond.notify_all()  # a write_wait writer may be waiting for room
        return out
