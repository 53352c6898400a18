"""Audio input: sources (microphone, WAV file, raw PCM on stdin) -> ring buffer -> 16 kHz blocks.

PortAudio (sounddevice) is imported only when a `MicSource` starts, so files and stdin work
without it.
"""
from agent.audio.blocks import RATE, AudioBlock
from agent.audio.file_source import FileSource
from agent.audio.mic import MicSource
from agent.audio.ring_buffer import RingBuffer
from agent.audio.settings import AudioSettings
from agent.audio.source import FINISHED, RUNNING, STOPPED, WAITING_FOR_DEVICE, AudioSource, SourceStats
from agent.audio.sources import open_source
from agent.audio.stdin_source import StdinSource

__all__ = [
    "FINISHED",
    "RATE",
    "RUNNING",
    "STOPPED",
    "WAITING_FOR_DEVICE",
    "AudioBlock",
    "AudioSettings",
    "AudioSource",
    "FileSource",
    "MicSource",
    "RingBuffer",
    "SourceStats",
    "StdinSource",
    "open_source",
]
