"""What the pipeline sees of a recognizer: the Recognizer protocol and load_recognizer()."""

from __future__ import annotations

from typing import List, Optional, Protocol, Sequence, Union

import numpy as np

from agent.recognizer.cancel import CancelToken
from agent.recognizer.decoding import DecodeOptions
from agent.recognizer.result import Recognition
from agent.recognizer.settings import RecognizerSettings


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


def load_recognizer(settings: RecognizerSettings) -> Recognizer:
    """Load the model the settings name (ONNX Runtime is imported only here)."""
    from agent.recognizer.sensevoice import SenseVoiceRecognizer

    return SenseVoiceRecognizer(settings)
