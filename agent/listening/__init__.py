"""Listening front end: voice activity detection and utterance segmentation of the live stream.

The pipeline builds a VAD with load_vad(), wraps it in a Segmenter, feeds it audio blocks and acts
on the events it returns; nothing here does I/O or keeps threads.
"""


_EXPORTS = {
    "EnergyVad": "agent.listening.vad",
    "Event": "agent.listening.events",
    "Segmenter": "agent.listening.segmenter",
    "SegmenterSettings": "agent.listening.settings",
    "SilenceBegan": "agent.listening.events",
    "SileroVad": "agent.listening.vad",
    "SpeechEnd": "agent.listening.events",
    "SpeechResumed": "agent.listening.events",
    "SpeechStart": "agent.listening.events",
    "UtteranceAudio": "agent.listening.events",
    "Vad": "agent.listening.vad",
    "VadSettings": "agent.listening.settings",
    "load_vad": "agent.listening.vad",
}

__all__ = [
    "EnergyVad", "Event", "Segmenter", "SegmenterSettings", "SilenceBegan", "SileroVad", "SpeechEnd",
    "SpeechResumed", "SpeechStart", "UtteranceAudio", "Vad", "VadSettings", "load_vad",
]


def __getattr__(name):
    # Imported on first use: `agent.settings` imports this package's settings module, and
    # importing everything else here too cost transcribe's start-up for nothing.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
