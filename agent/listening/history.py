"""A bounded record of the most recent audio, addressed by absolute stream sample."""

from __future__ import annotations

import numpy as np


class AudioHistory:
    """Keeps the last `capacity` samples in a preallocated ring; nothing is allocated per append."""

    def __init__(self, capacity: int, start_sample: int = 0):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self._ring = np.zeros(capacity, dtype=np.float32)
        self.reset(start_sample)

    def reset(self, start_sample: int = 0) -> None:
        """Forget everything; the next append begins at `start_sample`."""
        self._end = start_sample
        self._count = 0

    @property
    def capacity(self) -> int:
        return len(self._ring)

    @property
    def start_sample(self) -> int:
        """The oldest sample still held."""
        return self._end - self._count

    @property
    def end_sample(self) -> int:
        """One past the newest sample."""
        return self._end

    def append(self, samples: np.ndarray) -> None:
        n = len(samples)
        cap = len(self._ring)
        if n >= cap:
            self._ring[:] = samples[n - cap:]
            self._end += n
            self._count = cap
            self._rotate_to(self._end)
            return
        at = self._end % cap
        first = min(n, cap - at)
        self._ring[at:at + first] = samples[:first]
        self._ring[:n - first] = samples[first:]
        self._end += n
        self._count = min(cap, self._count + n)

    def _rotate_to(self, end: int) -> None:
        # After a whole-ring overwrite the data sits at [0, cap); move it where end % cap expects.
        self._ring[:] = np.roll(self._ring, end % len(self._ring))

    def slice(self, start: int, end: int) -> np.ndarray:
        """A copy of samples [start, end); raises if any of them is no longer (or not yet) held."""
        if start < self.start_sample or end > self._end or start > end:
            raise ValueError(f"samples [{start}, {end}) are not all held (history holds "
                             f"[{self.start_sample}, {self._end}))")
        cap = len(self._ring)
        a, b = start % cap, end - start
        if a + b <= cap:
            return self._ring[a:a + b].copy()
        return np.concatenate((self._ring[a:], self._ring[:a + b - cap]))
