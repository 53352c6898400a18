"""A level-based VAD for boxes where Silero is unavailable: frame RMS against an adaptive noise floor.

It answers 1.0 or 0.0 (a "probability" in name only) and keeps its own hysteresis, so the
segmenter's threshold hysteresis passes its decisions through unchanged.
"""

from __future__ import annotations

import numpy as np

from agent.listening.levels import SAMPLE_RATE, rms_dbfs


class EnergyVad:
    """Speech is a frame `on_db` above the noise floor; it lasts until a frame falls below `off_db`.

    The floor is a minimum tracker: it drops to any quieter frame at once and rises toward a louder
    background at `floor_rise_db_per_s`, so a steady hum stops counting as speech after a while but
    the pauses between words keep it low while someone talks.
    """

    def __init__(self, *, on_db: float = 12.0, off_db: float = 6.0, min_dbfs: float = -55.0,
                 floor_rise_db_per_s: float = 2.0, frame_samples: int = 512):
        if off_db >= on_db:
            raise ValueError(f"off_db ({off_db}) must be below on_db ({on_db})")
        self.frame_samples = frame_samples
        self._on_db = on_db
        self._off_db = off_db
        self._min_dbfs = min_dbfs
        self._rise_per_frame = floor_rise_db_per_s * frame_samples / SAMPLE_RATE
        self.reset()

    @classmethod
    def from_settings(cls, settings) -> EnergyVad:
        return cls(on_db=settings.energy_on_db, off_db=settings.energy_off_db,
                   min_dbfs=settings.energy_min_dbfs, floor_rise_db_per_s=settings.energy_floor_rise_db_per_s)

    def reset(self) -> None:
        self._floor_dbfs = None  # set from the first frame: a stream is assumed to start without speech
        self._speaking = False

    @property
    def noise_floor_dbfs(self) -> float | None:
        return self._floor_dbfs

    def speech_probability(self, frame: np.ndarray) -> float:
        if len(frame) != self.frame_samples:
            raise ValueError(f"EnergyVad takes frames of {self.frame_samples} samples, got {len(frame)}")
        level = rms_dbfs(frame)
        floor = self._track_floor(level)
        above = level - floor
        if level < self._min_dbfs:
            self._speaking = False
        elif self._speaking:
            self._speaking = above >= self._off_db
        else:
            self._speaking = above >= self._on_db
        return 1.0 if self._speaking else 0.0

    def _track_floor(self, level: float) -> float:
        # Never below the quietest possible speech minus on_db: after digital silence (a muted or
        # just-opened microphone) a waking background must not read as speech for minutes.
        level = max(level, self._min_dbfs - self._on_db)
        if self._floor_dbfs is None or level < self._floor_dbfs:
            self._floor_dbfs = level
        else:
            self._floor_dbfs = min(level, self._floor_dbfs + self._rise_per_frame)
        return self._floor_dbfs
