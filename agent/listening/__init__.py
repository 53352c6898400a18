"""Listening front end: voice activity detection and utterance segmentation of the live stream.

The pipeline builds a VAD with load_vad(), wraps it in a Segmenter, feeds it audio blocks and acts
on the events it returns; nothing here does I/O or keeps threads.
"""

from agent.listening.events import Event, SilenceBegan, SpeechEnd, SpeechResumed, SpeechStart, UtteranceAudio
from agent.listening.segmenter import Segmenter
from agent.listening.settings import SegmenterSettings, VadSettings
from agent.listening.vad import EnergyVad, SileroVad, Vad, load_vad

__all__ = [
    "EnergyVad", "Event", "Segmenter", "SegmenterSettings", "SilenceBegan", "SileroVad", "SpeechEnd",
    "SpeechResumed", "SpeechStart", "UtteranceAudio", "Vad", "VadSettings", "load_vad",
]
