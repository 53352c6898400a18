"""Settings for the audio input (agent.settings.Settings puts AudioSettings in the config as `audio`)."""
from __future__ import annotations

from dataclasses import dataclass

from agent.config_schema import setting


@dataclass
class AudioSettings:
    input: str = setting(
        "mic", 'Where audio comes from: "mic"; a WAV file path; "-" for stdin; or the path of a named pipe '
               '(mkfifo), read again after each writer closes it: the input of a box without a microphone. '
               'stdin and pipes take raw PCM (signed 16-bit little-endian, 16 kHz, mono) or a WAV stream '
               '(any rate, channels and sample format, as arecord and ffmpeg -f wav write).')
    device: str = setting(
        "default", 'The microphone: part of its name, any case (names survive USB replugs, indices do '
                   'not), an index as a quoted number like "2", or default for the system default.')
    capture_rate: int = setting(
        0, "Microphone capture rate in Hz. 0: 16000 if the device takes it, else its default rate, "
           "resampled to 16 kHz by soxr. Set 48000 (or the device's native rate) to bypass the "
           "low-quality resampler of ALSA's plug layer.", min=0, max=384000)
    block_ms: int = setting(50, "Length of the audio blocks handed to the pipeline, in ms.", min=10, max=500)
    ring_seconds: float = setting(
        10.0, "Audio buffered between capture and the pipeline, in seconds. If the pipeline falls "
              "further behind, the oldest audio is dropped and counted.", min=1.0, max=600.0)
    realtime: bool = setting(
        True, "Play a WAV input at real-time pace, like a microphone; false: as fast as it is consumed.")
    reconnect_min_s: float = setting(
        0.5, "First wait before reopening a lost or missing microphone, in seconds; doubles per try.",
        min=0.05, max=60.0)
    reconnect_max_s: float = setting(
        10.0, "Longest wait between tries to reopen the microphone, in seconds.", min=0.1, max=600.0)
    stall_seconds: float = setting(
        2.0, "A microphone that delivers nothing for this long is treated as lost and reopened; a named "
             "pipe's writer that sends nothing for this long counts as waiting (not as a stalled pipeline).",
        min=0.2, max=60.0)

    def check(self):
        """Cross-field checks; yields (key, message)."""
        if self.reconnect_max_s < self.reconnect_min_s:
            yield "reconnect_max_s", (f"{self.reconnect_max_s} is below reconnect_min_s "
                                      f"({self.reconnect_min_s})")
