"""The voice activity detector interface and the factory that picks one from the settings."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from agent.listening.energy_vad import EnergyVad
from agent.listening.settings import VadSettings
from agent.listening.silero_vad import SileroVad

__all__ = ["EnergyVad", "SileroVad", "Vad", "load_vad"]


@runtime_checkable
class Vad(Protocol):
    """Scores fixed-size frames of 16 kHz float32 audio on the int16 scale.

    Implementations keep state across frames (recurrent model, noise floor): feed frames in stream
    order and call reset() at a discontinuity.
    """

    frame_samples: int

    def speech_probability(self, frame: np.ndarray) -> float:
        """Probability in [0, 1] that `frame` (exactly frame_samples long) holds speech."""
        ...

    def reset(self) -> None:
        """Forget all state, as at the start of a stream."""
        ...


def load_vad(settings: VadSettings) -> Vad:
    """Build the VAD named by settings.kind; silero raises ConfigError when its package is missing."""
    if settings.kind == "energy":
        return EnergyVad.from_settings(settings)
    if settings.kind == "silero":
        return SileroVad.from_settings(settings)
    raise ValueError(f"unknown VAD kind {settings.kind!r}")
