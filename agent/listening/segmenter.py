"""Turns a stream of audio blocks into utterances: a pure state machine over fixed VAD frames.

States: IDLE (no speech) -> PENDING (a run of speech shorter than min_speech) -> ACTIVE (utterance
open, speech) <-> PAUSED (utterance open, silence shorter than the endpoint) -> IDLE. Decisions
depend only on the sequence of VAD frames, never on how the input was split into blocks.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from agent.listening.events import Event, SilenceBegan, SpeechEnd, SpeechResumed, SpeechStart, UtteranceAudio
from agent.listening.history import AudioHistory
from agent.listening.levels import SAMPLE_RATE, quietest_point
from agent.listening.settings import SegmenterSettings
from agent.listening.vad import Vad

log = logging.getLogger(__name__)

IDLE, PENDING, ACTIVE, PAUSED = "idle", "pending", "active", "paused"


def _ms(value: float) -> int:
    return round(value * SAMPLE_RATE / 1000)


class Segmenter:
    """Feed float32 16 kHz blocks (int16 scale, any size) with feed(); it returns the events each causes.

    Speech is a VAD probability at or above `threshold`; once in speech, it lasts until the
    probability falls below `negative_threshold` (default threshold - 0.15). Not thread-safe: call
    feed() and current_audio() from the same (pipeline) thread.
    """

    def __init__(self, vad: Vad, settings: SegmenterSettings | None = None, *, threshold: float = 0.5,
                 negative_threshold: float | None = None, start_sample: int = 0, first_utterance_id: int = 1):
        s = settings or SegmenterSettings()
        self._vad = vad
        self._frame = vad.frame_samples
        self._threshold = threshold
        self._negative_threshold = (max(0.01, threshold - 0.15) if negative_threshold is None
                                    else negative_threshold)
        self._pre_roll = _ms(s.pre_roll_ms)
        self._min_speech = max(1, math.ceil(_ms(s.min_speech_ms) / self._frame)) * self._frame
        self._lookback = _ms(s.onset_lookback_ms)
        self._endpoint = _ms(s.endpoint_silence_ms)
        self._tail_pad = min(_ms(s.tail_pad_ms), self._endpoint)
        self._max_len = round(s.max_utterance_s * SAMPLE_RATE)
        self._cut_search = min(round(s.cut_search_s * SAMPLE_RATE), self._max_len // 2)
        self._cut_window = _ms(s.cut_window_ms)
        # An open utterance never exceeds max_len; a candidate chain plus its pre-roll must fit as well.
        capacity = max(self._max_len, self._pre_roll + self._lookback + self._min_speech) + 2 * self._frame
        self._history = AudioHistory(capacity, start_sample)
        self._seq = 0
        self._next_id = first_utterance_id  # a device that reconnects goes on counting
        self._reset_stream(start_sample)

    @classmethod
    def from_settings(cls, vad: Vad, settings: SegmenterSettings, vad_settings, first_utterance_id: int = 1) -> Segmenter:
        return cls(vad, settings, threshold=vad_settings.threshold,
                   negative_threshold=vad_settings.effective_negative_threshold(),
                   first_utterance_id=first_utterance_id)

    @property
    def next_utterance_id(self) -> int:
        return self._next_id

    def reserve_utterance_id(self) -> int:
        """An id for an utterance cut outside the segmenter (a client's own turn): numbering stays one sequence."""
        self._next_id += 1
        return self._next_id - 1

    # ---- input ----

    def feed(self, block: np.ndarray, start_sample: int | None = None) -> list[Event]:
        """Add samples; `start_sample` (if given) is the stream position of block[0].

        A position past the expected one means samples were lost (e.g. a ring buffer overrun): the
        open utterance ends there (reason "gap") and the segmenter restarts at the new position.
        """
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        events = [] if start_sample is None else self._follow(start_sample)
        data = np.concatenate((self._pending, block)) if len(self._pending) else block
        whole = len(data) // self._frame * self._frame
        for at in range(0, whole, self._frame):
            events += self._on_frame(data[at:at + self._frame])
        self._pending = data[whole:].copy()
        return events

    def _follow(self, start_sample: int) -> list[Event]:
        """Move to `start_sample` if the input jumped there."""
        expected = self.position + len(self._pending)
        if start_sample == expected:
            return []
        if self._history.start_sample == self._history.end_sample and not len(self._pending):
            self._reset_stream(start_sample)  # the first block sets the origin: nothing was lost
            return []
        if start_sample < expected:
            raise ValueError(f"block at sample {start_sample} overlaps audio already fed (up to {expected})")
        log.warning("input skipped samples %d..%d; restarting the segmenter there", expected, start_sample)
        events = self._end_open("gap")
        self._reset_stream(start_sample)
        return events

    def flush(self) -> list[Event]:
        """End of input: close the open utterance (reason "flush"); a partial frame is not scored."""
        return self._end_open("flush")

    def interrupt(self) -> list[Event]:
        """The audio stopped (a pipe's writer left, a device was lost): end the open utterance now
        (reason "gap") and forget the VAD state; the stream goes on where it was."""
        if self._state not in (ACTIVE, PAUSED) and not len(self._pending):
            return []
        events = self._end_open("gap")
        self._reset_stream(self.position + len(self._pending))
        return events

    def reset(self, start_sample: int | None = None) -> list[Event]:
        """Close any open utterance and forget all audio and VAD state; resume at `start_sample`."""
        events = self._end_open("flush")
        self._reset_stream(self.position if start_sample is None else start_sample)
        return events

    # ---- queries ----

    @property
    def position(self) -> int:
        """Stream position up to which audio has been scored by the VAD."""
        return self._history.end_sample

    @property
    def utterance_id(self) -> int | None:
        """The open utterance's id, or None between utterances."""
        return self._utt_id if self._state in (ACTIVE, PAUSED) else None

    @property
    def at_rest(self) -> bool:
        """Between utterances with nothing pending: no utterance is open, and no speech heard since the last
        one could still join the next (a short first word within endpoint_silence_ms before it). Ending the
        stream here cuts nothing."""
        if self._state != IDLE:
            return False
        return self._last_voiced_end is None or self.position - self._last_voiced_end >= self._endpoint

    def current_audio(self) -> UtteranceAudio | None:
        """A copy of the open utterance so far (pre-roll included, up to `position`), or None."""
        if self._state not in (ACTIVE, PAUSED):
            return None
        return UtteranceAudio(self._utt_id, self._audio_start,
                              self._history.slice(self._audio_start, self._history.end_sample))

    # ---- the state machine ----

    def _reset_stream(self, start_sample: int) -> None:
        self._history.reset(start_sample)
        self._vad.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._voiced = False
        self._state = IDLE
        self._onset = self._run_start = self._chain_start = start_sample
        self._last_voiced_end: int | None = None  # end of the last speech frame outside an utterance
        self._utt_id = 0
        self._audio_start = self._last_speech_end = start_sample
        self._prev_audio_end = start_sample  # a pre-roll never reaches back into the previous utterance

    def _is_speech(self, probability: float) -> bool:
        limit = self._negative_threshold if self._voiced else self._threshold
        self._voiced = probability >= limit
        return self._voiced

    def _on_frame(self, frame: np.ndarray) -> list[Event]:
        start = self._history.end_sample
        end = start + self._frame
        self._history.append(frame)
        speech = self._is_speech(self._vad.speech_probability(frame))
        if self._state in (IDLE, PENDING):
            return self._while_idle(speech, start, end)
        events = self._while_open(speech, start, end)
        if self._state in (ACTIVE, PAUSED) and end - self._audio_start >= self._max_len:
            events += self._split(end)
        return events

    def _while_idle(self, speech: bool, start: int, end: int) -> list[Event]:
        if not speech:
            if self._state == PENDING:
                log.debug("%d ms of speech, shorter than min_speech", (start - self._run_start) * 1000 // SAMPLE_RATE)
            self._state = IDLE
            return []
        if self._state == IDLE:
            self._begin_run(start)
        self._last_voiced_end = end
        if end - self._run_start < self._min_speech:
            return []
        self._audio_start = max(self._chain_start - self._pre_roll, self._history.start_sample, self._prev_audio_end)
        return [self._open(self._chain_start, end)]

    def _begin_run(self, start: int) -> None:
        """A run of speech frames begins; it joins the runs just before it if the pauses were short.

        Only a run of min_speech opens an utterance (clicks and typing never do), but a short word
        just before it ("what  time is it") belongs to the utterance: its onset is the chain's.
        """
        chained = (self._last_voiced_end is not None and start - self._last_voiced_end < self._endpoint
                   and start - self._chain_start <= self._lookback)
        if not chained:
            self._chain_start = start
        self._state, self._run_start = PENDING, start

    def _open(self, onset: int, detected: int) -> SpeechStart:
        self._utt_id, self._next_id = self._next_id, self._next_id + 1
        self._state, self._onset = ACTIVE, onset
        self._last_speech_end = detected
        event = SpeechStart(self._next_seq(), self._utt_id, onset, detected)
        log.debug("utterance %d starts at %.3f s", self._utt_id, event.start_s)
        return event

    def _while_open(self, speech: bool, start: int, end: int) -> list[Event]:
        if speech:
            self._last_speech_end = end
            if self._state == PAUSED:
                self._state = ACTIVE
                return [SpeechResumed(self._next_seq(), self._utt_id, start, end)]
            return []
        if self._state == ACTIVE:
            self._state = PAUSED
            return [SilenceBegan(self._next_seq(), self._utt_id, start, end)]
        if end - self._last_speech_end >= self._endpoint:
            return [self._close(self._last_speech_end + self._tail_pad, end, "endpoint")]
        return []

    def _split(self, now: int) -> list[Event]:
        """The open utterance reached max length: cut it where it is quietest, not inside a word."""
        limit = self._audio_start + self._max_len
        if self._state == PAUSED:
            # Already between words: end at the last speech, and let new speech start afresh.
            return [self._close(min(self._last_speech_end + self._tail_pad, limit), now, "max_length")]
        search_from = max(self._audio_start + 1, limit - self._cut_search)
        cut = search_from + quietest_point(self._history.slice(search_from, limit), self._cut_window)
        ended = self._close(cut, now, "max_length")
        self._audio_start = cut
        return [ended, self._open(cut, now)]

    def _close(self, end_sample: int, detected: int, reason: str) -> SpeechEnd:
        end_sample = min(end_sample, self._history.end_sample)
        event = SpeechEnd(self._next_seq(), self._utt_id, self._onset, end_sample, self._audio_start,
                          detected, reason, self._history.slice(self._audio_start, end_sample))
        log.debug("utterance %d ends at %.3f s (%s), %.2f s of audio", self._utt_id, event.end_s, reason,
                  len(event.audio) / SAMPLE_RATE)
        self._state = IDLE
        self._prev_audio_end = end_sample
        self._last_voiced_end = None  # speech before the close never joins a later utterance
        return event

    def _end_open(self, reason: str) -> list[Event]:
        if self._state in (ACTIVE, PAUSED):
            return [self._close(self._last_speech_end + self._tail_pad, self.position, reason)]
        self._state = IDLE
        return []

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq
