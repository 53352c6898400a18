"""Pick the audio source that `AudioSettings.input` names."""
from __future__ import annotations

from agent.audio.file_source import FileSource
from agent.audio.mic import MicSource
from agent.audio.settings import AudioSettings
from agent.audio.source import AudioSource
from agent.audio.stdin_source import FifoSource, StdinSource, is_fifo


def open_source(settings: AudioSettings) -> AudioSource:
    """A source for "mic", "-" (stdin), a named pipe or a WAV path; call `start()` on it."""
    if settings.input == "-":
        return StdinSource(block_ms=settings.block_ms, ring_seconds=settings.ring_seconds)
    if is_fifo(settings.input):
        return FifoSource(settings.input, block_ms=settings.block_ms, ring_seconds=settings.ring_seconds,
                          stall_seconds=settings.stall_seconds)
    if settings.input == "mic":
        return MicSource(
            settings.device, capture_rate=settings.capture_rate, block_ms=settings.block_ms,
            ring_seconds=settings.ring_seconds, reconnect_min_s=settings.reconnect_min_s,
            reconnect_max_s=settings.reconnect_max_s, stall_seconds=settings.stall_seconds)
    return FileSource(settings.input, realtime=settings.realtime, block_ms=settings.block_ms,
                      ring_seconds=settings.ring_seconds)
