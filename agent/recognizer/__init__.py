"""The recognizer behind a tiny interface: the pipeline never learns that ONNX exists.

    recognizer = load_recognizer(settings.recognizer)
    result = recognizer.recognize(samples)          # float32, 16 kHz, int16 scale
    results = recognizer.recognize_batch([a, b])    # same answers as one at a time

Nothing is imported here until first use, so `agent.recognizer.settings` loads without numpy.
"""

from agent.lazy import lazy_exports

_EXPORTS = {
    "CancelToken": "agent.recognizer.cancel",
    "DecodeCancelled": "agent.recognizer.cancel",
    "DecodeOptions": "agent.recognizer.decoding",
    "Recognition": "agent.recognizer.result",
    "Recognizer": "agent.recognizer.interface",
    "RecognizerSettings": "agent.recognizer.settings",
    "Token": "agent.recognizer.result",
    "load_recognizer": "agent.recognizer.interface",
}

__all__ = ["CancelToken", "DecodeCancelled", "DecodeOptions", "Recognition", "Recognizer", "RecognizerSettings",
           "Token", "load_recognizer"]

__getattr__ = lazy_exports(__name__, _EXPORTS)
