"""Listening front end: voice activity detection and utterance segmentation of the live stream.

The pipeline builds a VAD with load_vad(), wraps it in a Segmenter, feeds it audio blocks and acts
on the events it returns; nothing here does I/O or keeps threads.
"""


from agent.lazy import lazy_exports

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

__getattr__ = lazy_exports(__name__, _EXPORTS)
