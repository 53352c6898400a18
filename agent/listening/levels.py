"""Signal levels on the pipeline's sample scale (float32, int16 full scale = 32768)."""

from __future__ import annotations

import numpy as np

from agent.audio.format import RATE as SAMPLE_RATE

FULL_SCALE = 32768.0
# Digital silence has no finite level; this stands in for it so floors and comparisons stay finite.
SILENCE_DBFS = -150.0


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level in dBFS (a full-scale square wave is 0 dBFS, a full-scale sine -3 dBFS)."""
    if len(samples) == 0:
        return SILENCE_DBFS
    x = np.asarray(samples, dtype=np.float64)
    mean_square = float(np.dot(x, x)) / len(x)
    if mean_square <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * np.log10(mean_square / (FULL_SCALE * FULL_SCALE)))


def quietest_point(samples: np.ndarray, window: int) -> int:
    """Index of the centre of the lowest-energy window (hop window/2; the earliest wins a tie).

    Used to cut an over-long utterance between words rather than inside one.
    """
    n = len(samples)
    if n <= window:
        return n // 2
    hop = max(1, window // 2)
    x = np.asarray(samples, dtype=np.float64)
    energy = np.concatenate(([0.0], np.cumsum(x * x)))
    starts = np.arange(0, n - window + 1, hop)
    sums = energy[starts + window] - energy[starts]
    return int(starts[int(np.argmin(sums))] + window // 2)
