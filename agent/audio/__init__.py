"""Audio input: sources (microphone, WAV file, raw PCM on stdin) -> ring buffer -> 16 kHz blocks.

PortAudio (sounddevice) is imported only when a `MicSource` starts, so files and stdin work
without it.
"""

from agent.lazy import lazy_exports

_EXPORTS = {
    "AudioBlock": "agent.audio.blocks",
    "AudioSettings": "agent.audio.settings",
    "AudioSource": "agent.audio.source",
    "FINISHED": "agent.audio.source",
    "FileSource": "agent.audio.file_source",
    "MicSource": "agent.audio.mic",
    "RATE": "agent.audio.blocks",
    "RUNNING": "agent.audio.source",
    "RingBuffer": "agent.audio.ring_buffer",
    "STOPPED": "agent.audio.source",
    "SourceStats": "agent.audio.source",
    "StdinSource": "agent.audio.stdin_source",
    "WAITING_FOR_DEVICE": "agent.audio.source",
    "open_source": "agent.audio.sources",
}

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

__getattr__ = lazy_exports(__name__, _EXPORTS)
