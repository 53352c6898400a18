"""What the segmenter reports. Times are absolute stream samples at 16 kHz; `*_s` give seconds.

Every event carries `seq`, strictly increasing over the segmenter's life, and `detected_sample`,
the stream position at which it was decided (the end of the VAD frame that triggered it): the
delay from the moment it describes to detected_sample is the segmenter's own latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agent.listening.levels import SAMPLE_RATE


def seconds(samples: int) -> float:
    return samples / SAMPLE_RATE


@dataclass(frozen=True)
class SpeechStart:
    """An utterance began at `start_sample`, the true onset; it is reported min_speech_ms later."""

    seq: int
    utterance_id: int
    start_sample: int
    detected_sample: int

    @property
    def start_s(self) -> float:
        return seconds(self.start_sample)


@dataclass(frozen=True)
class SilenceBegan:
    """The VAD first saw silence inside an open utterance; the silence starts at `at_sample`.

    The pipeline may start a speculative final decode here: if no SpeechResumed follows,
    current_audio() now holds everything the SpeechEnd will, but the trailing silence.
    """

    seq: int
    utterance_id: int
    at_sample: int
    detected_sample: int

    @property
    def at_s(self) -> float:
        return seconds(self.at_sample)


@dataclass(frozen=True)
class SpeechResumed:
    """Speech came back at `at_sample`, before the silence reached the endpoint."""

    seq: int
    utterance_id: int
    at_sample: int
    detected_sample: int

    @property
    def at_s(self) -> float:
        return seconds(self.at_sample)


@dataclass(frozen=True)
class SpeechEnd:
    """An utterance ended; `audio` covers [audio_start_sample, end_sample).

    audio_start_sample is the onset minus the pre-roll (never before the previous utterance's
    audio). end_sample is the last speech sample plus the tail pad, or the cut point when an
    over-long utterance was split. reason: endpoint | max_length | gap (the input skipped samples)
    | flush (end of input).
    """

    seq: int
    utterance_id: int
    start_sample: int
    end_sample: int
    audio_start_sample: int
    detected_sample: int
    reason: str
    audio: np.ndarray = field(repr=False, compare=False)

    @property
    def start_s(self) -> float:
        return seconds(self.start_sample)

    @property
    def end_s(self) -> float:
        return seconds(self.end_sample)


@dataclass(frozen=True)
class UtteranceAudio:
    """The open utterance so far, for a partial decode: audio covers [start_sample, end_sample)."""

    utterance_id: int
    start_sample: int
    audio: np.ndarray = field(repr=False, compare=False)

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.audio)


Event = SpeechStart | SilenceBegan | SpeechResumed | SpeechEnd
