"""The recognizer behind a tiny interface: the pipeline never learns that ONNX exists.

    recognizer = load_recognizer(settings.recognizer)
    result = recognizer.recognize(samples)          # float32, 16 kHz, int16 scale
    results = recognizer.recognize_batch([a, b])    # same answers as one at a time
"""

from __future__ import annotations

from typing import List, Optional, Protocol, Sequence, Union

import numpy as np

from agent.recognizer.cancel import CancelToken, DecodeCancelled
from agent.recognizer.decoding import DecodeOptions
from agent.recognizer.result import Recognition, Token

__all__ = ["CancelToken", "DecodeCancelled", "DecodeOptions", "Recognition", "Recognizer", "Token",
           "load_recognizer"]


class Recognizer(Protocol):
    sample_rate: int
    info: dict  # provider, model file, precision, load time: for logs and health
    defaults: DecodeOptions

    def options(self, **changes) -> DecodeOptions: ...

    def recognize(self, samples: np.ndarray, options: Optional[DecodeOptions] = None,
                  offset: float = 0.0, cancel: Optional[CancelToken] = None) -> Recognition: ...

    def recognize_batch(self, segments: Sequence[np.ndarray],
                        options: Union[DecodeOptions, Sequence[Optional[DecodeOptions]], None] = None,
                        offsets: Optional[Sequence[float]] = None,
                        cancel: Optional[CancelToken] = None) -> List[Recognition]: ...


def load_recognizer(settings) -> Recognizer:
    """Load the model named by RecognizerSettings (heavy imports happen only here)."""
    from agent.recognizer.sensevoice import SenseVoiceRecognizer

    return SenseVoiceRecognizer(settings)
