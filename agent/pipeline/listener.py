"""One stream's ears, push-driven: samples in, utterances out to the decode scheduler, typed events out.

    listener = Listener(segmenter, emitter, settings, decoder=shared_decoder)
    listener.feed(samples)            # any size, from one thread: the mic's pull loop, a network handler
    listener.apply(command)           # mute, set/clear language: on that same thread, between feeds
    listener.finish()                 # end of audio: the open utterance ends, its final is asked for
    await listener.delivered(timeout) # (or drain(timeout) off a loop) every final reached the sinks

It owns no thread, ring buffer or poll: the caller's `feed` runs the VAD and segmenter on its own
thread and makes the scheduler's requests; the scheduler's worker delivers results through
`_on_done`, which emits speech results through the stream's `Emitter`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from typing import Optional, Set

import numpy as np

from agent.audio.format import RATE
from agent.events import Emitter, Emotion, Final, Language, Partial, Problem, SpeechEnded, SpeechStarted
from agent.listening import SilenceBegan, SpeechEnd, SpeechResumed, SpeechStart
from agent.pipeline.scheduler import FINAL, DecodeScheduler, Done
from agent.pipeline.settings import PipelineSettings

log = logging.getLogger(__name__)


class Clock:
    """Maps stream positions to wall-clock time, anchored on the newest audio's arrival.

    Only for a stream that runs in real time: a file decoded as fast as possible has no wall time
    worth reporting (its "latency" would be how far the decode ran ahead of the file).
    """

    def __init__(self, realtime: bool = True):
        self.realtime = realtime
        self.anchor: Optional[float] = None  # wall time of stream sample 0

    def arrived(self, end_sample: int):
        if self.realtime:
            self.anchor = time.time() - end_sample / RATE

    def wall(self, sample: int) -> Optional[float]:
        return None if self.anchor is None else self.anchor + sample / RATE


class Listener:
    """VAD + segmenter + decode requests of one stream; see the module docstring."""

    def __init__(self, segmenter, emitter: Emitter, settings: PipelineSettings, *, decoder: DecodeScheduler,
                 realtime: bool = True, options=None, progress=None):
        """`options`: the stream's DecodeOptions (None: the recognizer's defaults), read at each request;
        `progress`: the watchdog's Progress, ticked for every block fed."""
        self.segmenter = segmenter
        self.emitter = emitter
        self.settings = settings
        self.options = options
        self.muted = False
        self.progress = progress
        self.utterances = 0
        self.last_latency_ms: Optional[float] = None
        self._clock = Clock(realtime)
        self._position = 0  # stream position of the next sample fed
        self._silence_at: dict = {}  # open utterance -> where its current silence began
        self._speculated: Optional[int] = None  # the utterance whose current silence has a speculative decode
        self._finals: Set[concurrent.futures.Future] = set()  # asked for, not yet delivered
        self.lane = decoder.lane(self._on_done, self._on_failed, options=lambda: self.options)

    # ------------------------------------------------------------------ the feeding thread
    def feed(self, samples: np.ndarray, start: Optional[int] = None) -> None:
        """16 kHz float samples on the int16 scale; `start`: their stream position when the source knows it
        (a jump forward means audio was lost: the open utterance ends there)."""
        if start is None:
            start = self._position
        self._position = start + len(samples)
        if self.progress is not None:
            self.progress.audio_consumed()
        self._clock.arrived(self._position)
        if self.muted:
            self._handle(self.segmenter.flush())  # an open utterance still gets its final
            return
        self._handle(self.segmenter.feed(samples, start))
        self._maybe_speculate()
        self._maybe_partial()

    def interrupt(self) -> None:
        """The audio stopped (a pipe's writer left, the mic went away): the utterance is over now, not
        when audio comes back, which may be never."""
        self._handle(self.segmenter.interrupt())

    def finish(self) -> None:
        """No more audio: the open utterance ends and its final is asked for."""
        self._handle(self.segmenter.flush())

    def apply(self, command: dict) -> None:
        """A validated command (docs/schemas/command.json): mute, unmute, set_language (with its resolved
        "options"), clear_language; and from a protocol: end_utterance, clear."""
        name = command["command"]
        if name in ("mute", "unmute"):
            self.muted = name == "mute"
        elif name == "clear_language":
            defaults = command.get("defaults")
            self.options = None if self.options is None or defaults is None else dataclasses.replace(
                self.options, language=defaults.language, allowed_languages=defaults.allowed_languages)
        elif name == "set_language":  # the stream's phrases stay
            self.options = command["options"] if self.options is None else dataclasses.replace(
                command["options"], hotwords=self.options.hotwords)
        elif name == "set_hotwords":  # "hotwords": the configured phrases and the command's, merged
            self.options = dataclasses.replace(self.options or command["defaults"], hotwords=command["hotwords"])
        elif name == "clear_hotwords":
            self.options = dataclasses.replace(self.options or command["defaults"],
                                               hotwords=command["defaults"].hotwords)
        elif name == "end_utterance":  # a client's own end of turn (OpenAI realtime's commit)
            self._handle(self.segmenter.flush())
        elif name == "clear":  # the client takes back what it sent: the open utterance goes, undecoded
            utterance = self.segmenter.utterance_id
            self.segmenter.reset(self._position)  # resumes where the next sample will be
            if utterance is not None:
                self.lane.end(utterance)
                self._silence_at.pop(utterance, None)

    def take_turn(self, audio: np.ndarray, start: int) -> int:
        """A turn the client ended itself, without our VAD (OpenAI realtime with turn_detection null): its
        final is asked for as one utterance; returns its utterance id."""
        utterance = self.segmenter.reserve_utterance_id()
        end = start + len(audio)
        self._clock.arrived(end)
        self.lane.end(utterance)
        future = self.lane.request_final(utterance, audio, end, start)
        self._finals = {f for f in self._finals if not f.done()}
        self._finals.add(future)
        return utterance

    def close(self) -> None:
        """Nothing more will be asked; finals already asked for are still decoded and delivered."""
        self.lane.close()

    # ------------------------------------------------------------------ waiting for delivery
    def pending_finals(self) -> Set[concurrent.futures.Future]:
        return {f for f in self._finals if not f.done()}

    def drain(self, timeout: float) -> bool:
        """Block until every final asked for was delivered to the sinks; False if `timeout` passed first."""
        _, left = concurrent.futures.wait(self.pending_finals(), timeout)
        return not left

    async def delivered(self, timeout: float) -> bool:
        """`drain` for an event loop."""
        pending = self.pending_finals()
        if not pending:
            return True
        _, left = await asyncio.wait([asyncio.wrap_future(f) for f in pending], timeout=timeout)
        return not left

    # ------------------------------------------------------------------ segmenter events
    def _handle(self, events) -> None:
        for event in events:
            if isinstance(event, SpeechStart):
                self.emitter.emit(SpeechStarted(event.utterance_id, *self._vad_times(event.start_sample,
                                                                                    event.detected_sample)))
            elif isinstance(event, SilenceBegan):
                self._silence_at[event.utterance_id] = event.at_sample
                self._speculated = None
                self._maybe_speculate()
            elif isinstance(event, SpeechResumed):
                self._silence_at.pop(event.utterance_id, None)
                if self._speculated == event.utterance_id:
                    self.lane.speech_resumed(event.utterance_id)
                self._speculated = None
            elif isinstance(event, SpeechEnd):
                self._ended(event)

    def _ended(self, event: SpeechEnd) -> None:
        self.utterances += 1
        speech_end = self._silence_at.pop(event.utterance_id, event.end_sample)
        if event.reason != "endpoint":
            speech_end = event.end_sample  # cut or end of input: no silence was heard
        self.lane.end(event.utterance_id)  # no partial of it may follow its speech_end
        self.emitter.emit(SpeechEnded(event.utterance_id, *self._vad_times(event.end_sample, event.detected_sample),
                                      reason=event.reason))
        future = self.lane.request_final(event.utterance_id, event.audio, speech_end, event.audio_start_sample)
        self._finals = {f for f in self._finals if not f.done()}
        self._finals.add(future)

    def _maybe_speculate(self) -> None:
        """Decode the open utterance as if it ended where its silence began: at once when the model is this
        stream's alone, else once the silence has lasted speculative_after_ms."""
        utterance = self.segmenter.utterance_id
        silence_at = self._silence_at.get(utterance) if utterance is not None else None
        if not self.settings.speculative_final or silence_at is None or self._speculated == utterance:
            return
        wait_ms = self.settings.speculative_after_ms if self.lane.shared else 0
        if self.segmenter.position - silence_at < wait_ms * RATE // 1000:
            return
        current = self.segmenter.current_audio()
        if current is not None and self.lane.request_speculative(utterance, current.audio, silence_at,
                                                                 current.start_sample):
            self._speculated = utterance

    def _maybe_partial(self) -> None:
        utterance = self.segmenter.utterance_id
        if (utterance is None or self.settings.partial_interval_ms == 0 or utterance in self._silence_at
                or self.lane.busy or not self.lane.partial_due()):
            return
        current = self.segmenter.current_audio()
        if current is not None:
            self.lane.request_partial(utterance, current.audio, current.end_sample, current.start_sample)

    def _vad_times(self, sample: int, detected_sample: int):
        """at, at_wall, detected_wall, vad_delay_ms of a segmenter event."""
        detected_wall = self._clock.wall(detected_sample)
        delay = None if detected_wall is None else _ms(time.time() - detected_wall)
        return sample / RATE, self._clock.wall(sample), detected_wall, delay

    # ------------------------------------------------------------------ decode thread
    def _on_done(self, done: Done) -> None:
        start = done.start_sample
        end = start + int(round(done.result.duration * RATE))
        timing = dict(audio_start=start / RATE, audio_end=end / RATE, audio_start_wall=self._clock.wall(start),
                      audio_end_wall=self._clock.wall(end), queue_ms=done.queue_ms, decode_ms=done.decode_ms)
        if done.kind != FINAL:
            self.emitter.emit(Partial(done.utterance_id, done.result, **timing))
            return
        end_wall = self._clock.wall(done.end_sample)
        latency = None if end_wall is None else _ms(time.time() - end_wall)  # end of speech -> final
        self.last_latency_ms = latency
        emit_final(self.emitter, done.utterance_id, done.result, start, timing, latency, done.speculative)

    def _on_failed(self, utterance_id: int, exc: Exception) -> None:
        self.emitter.emit(Problem("pipeline", "decode_failed", f"the final could not be decoded: "
                                                               f"{type(exc).__name__}: {exc}"[:500],
                                  utterance_id=utterance_id))


def emit_final(emitter: Emitter, utterance_id: int, result, start_sample: int, timing: dict,
               latency_ms: Optional[float], speculative: bool) -> None:
    """An utterance's final, then its emotion and language; logged once. `result` comes from a model run
    that was given the utterance's stream position (start_sample / 16000): its token times are stream
    seconds already."""
    # Fields operators query in the journal; the text goes only in TEXT (dropped unless log_text).
    after = "" if latency_ms is None else f"{latency_ms:.0f} ms after end of speech, "  # none without a wall clock
    log.info("final of utterance %s: %sdecode %.0f ms", utterance_id, after, timing["decode_ms"],
             extra={"EVENT": "final", "UTTERANCE_ID": utterance_id, "LATENCY_MS": latency_ms,
                    "DECODE_MS": round(timing["decode_ms"], 1), "LANGUAGE": result.language,
                    "EMOTION": result.emotion, "TEXT": result.text})
    emitter.emit(Final(utterance_id, result, **timing, endpoint_delay_ms=latency_ms, speculative=speculative))
    if result.text:  # an utterance with no words says nothing about mood or language
        emitter.emit(Emotion(utterance_id, result.emotion, result.emotion_scores, result.confidence))
        emitter.emit(Language(utterance_id, result.language, result.language_scores, result.confidence))


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 1)
