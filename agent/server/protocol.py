"""What a device sends over /ws/stt/{device_id}, turned into 16 kHz samples and control messages.

Client -> server:
- optionally first, a text frame {"type": "start", "sample_rate": 16000, "format": "s16le"|"f32le"|"opus",
  "language": "auto", "allowed_languages": [...], "hotwords": ["Kitchen Light:2", "dimmer"]} (all fields
  optional; hotwords are 'phrase' or 'phrase:weight', added to recognizer.hotwords for this stream);
- binary frames of audio in that format (default s16le, 16 kHz, mono); an Opus frame is one packet
  (16 kHz mono, 20-60 ms, as ESP32 voice devices send them);
- text frames {"audio": "<hex of s16le 16 kHz mono>"} (the first /ws/stt clients sent these);
- {"type": "stop"}: finish the open utterance, deliver its final, close.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from agent.audio.format import RATE, Resampler, non_finite, pcm_to_float
from agent.recognizer.phrases import HotwordError, parse_phrases
FORMATS = ("s16le", "f32le", "opus")
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_START_FIELDS = {"type", "sample_rate", "format", "language", "allowed_languages", "channels", "hotwords"}


class ProtocolError(ValueError):
    """A message the server cannot take: answered with an error event (code) and, if fatal, a close."""

    def __init__(self, code: str, message: str, fatal: bool = True):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal


@dataclass(frozen=True)
class StreamFormat:
    sample_rate: int = RATE
    format: str = "s16le"
    language: str = "auto"
    allowed_languages: Tuple[str, ...] = ()
    hotwords: Tuple[Tuple[str, float], ...] = ()  # (phrase, weight)


def parse_text(text: str):
    """("start", StreamFormat) | ("stop", None) | ("audio", bytes): a text frame's meaning."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_message", "a text frame must be a JSON object", fatal=False) from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", "a text frame must be a JSON object", fatal=False)
    if "audio" in data and "type" not in data:
        try:
            return "audio", bytes.fromhex(data["audio"]) if isinstance(data["audio"], str) else b"?"
        except ValueError:
            raise ProtocolError("bad_audio", "'audio' must be the hex of 16-bit 16 kHz mono PCM", fatal=False) from None
    kind = data.get("type")
    if kind == "stop":
        return "stop", None
    if kind == "start":
        return "start", _start(data)
    raise ProtocolError("bad_message", f"unknown message type {str(kind)[:40]!r} (expected start, stop, or "
                                       "{\"audio\": hex})", fatal=False)


def _start(data: dict) -> StreamFormat:
    unknown = sorted(set(data) - _START_FIELDS)
    if unknown:
        raise ProtocolError("bad_start", f"start: unknown field(s) {', '.join(map(repr, unknown))[:200]}")
    fmt = data.get("format", "s16le")
    if fmt not in FORMATS:
        raise ProtocolError("bad_start", f"start: format {str(fmt)[:40]!r} is not one of {', '.join(FORMATS)}")
    rate = data.get("sample_rate", RATE)
    if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 192000:
        raise ProtocolError("bad_start", f"start: sample_rate {str(rate)[:40]} is not a rate from 8000 to 192000 Hz")
    if fmt == "opus" and rate not in OPUS_RATES:
        raise ProtocolError("bad_start", f"start: Opus decodes at {', '.join(map(str, OPUS_RATES))} Hz, not {rate}")
    if data.get("channels", 1) != 1:
        raise ProtocolError("bad_start", "start: send mono audio (channels: 1)")
    language = data.get("language", "auto")
    allowed = data.get("allowed_languages", [])
    if not isinstance(language, str) or not isinstance(allowed, list) or not all(isinstance(x, str) for x in allowed):
        raise ProtocolError("bad_start", "start: language is a string, allowed_languages a list of strings")
    hotwords = data.get("hotwords", [])
    if not isinstance(hotwords, list):
        raise ProtocolError("bad_start", "start: hotwords is a list of strings, each 'phrase' or 'phrase:weight'")
    try:
        phrases = parse_phrases(hotwords, "start: hotwords")
    except HotwordError as exc:
        raise ProtocolError("bad_start", str(exc)[:300]) from None
    return StreamFormat(rate, fmt, language, tuple(allowed), phrases)


class AudioDecoder:
    """Bytes of one format in, float32 16 kHz samples on the int16 scale out (kept across frames)."""

    def __init__(self, fmt: StreamFormat):
        self.format = fmt
        self._carry = b""
        self.non_finite = 0
        self._opus = None
        if fmt.format == "opus":
            try:
                import opuslib_next
            except (ImportError, OSError) as exc:  # the binding, or libopus itself (apt-get install libopus0)
                raise ProtocolError("unsupported", f"this server cannot decode Opus ({exc}); send s16le") from None
            self._opus_error = opuslib_next.OpusError
            self._opus = opuslib_next.Decoder(fmt.sample_rate, 1)
            self._max_frame = fmt.sample_rate * 120 // 1000  # Opus frames are at most 120 ms
        self._resample = Resampler(fmt.sample_rate)

    def decode(self, data: bytes) -> np.ndarray:
        if self._opus is not None:
            try:
                pcm = self._opus.decode(data, self._max_frame)
            except self._opus_error as exc:
                raise ProtocolError("bad_audio", f"not an Opus packet ({exc})", fatal=False) from None
            samples = pcm_to_float(pcm, 2)
        elif self.format.format == "s16le":
            samples = pcm_to_float(self._whole(data, 2), 2)
        else:
            whole = self._whole(data, 4)
            self.non_finite += non_finite(whole, 4)
            samples = pcm_to_float(whole, 4, floating=True)
        return self._resample(samples)

    def _whole(self, data: bytes, width: int) -> bytes:
        data = self._carry + data
        usable = len(data) - len(data) % width
        self._carry = data[usable:]
        return data[:usable]

    def flush(self) -> np.ndarray:
        """What the resampler still holds, at the end of the stream."""
        return self._resample.flush()
