"""The live loop: audio blocks -> segmenter -> decode scheduler -> typed events to the sinks.

One pipeline thread reads the source and drives the segmenter; the scheduler's worker thread
decodes. Every event leaves through the stream's `Emitter` (agent/events.py), which numbers it
and hands it to the sinks: speech_start, partial, speech_end, final, then emotion and language.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Dict, Optional

from agent.events import Emitter, Emotion, Final, Language, Partial, Problem, SpeechEnded, SpeechStarted
from agent.listening import SilenceBegan, SpeechEnd, SpeechResumed, SpeechStart
from agent.pipeline.scheduler import FINAL, DecodeScheduler, Done, Scheduler
from agent.pipeline.settings import PipelineSettings

log = logging.getLogger(__name__)
RATE = 16000


class Clock:
    """Maps stream positions to wall-clock time, anchored on the newest block's arrival.

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


class LivePipeline:
    def __init__(self, source, segmenter, recognizer, emitter: Emitter, settings: PipelineSettings,
                 progress=None, scheduler: Optional[DecodeScheduler] = None):
        """`scheduler`: the decode worker shared with other streams (serve); None: one of its own."""
        self.source = source
        self.progress = progress  # agent.service.Progress: lets the systemd watchdog see the pipeline move
        self.options = None  # DecodeOptions set at run time (MQTT language commands); None = defaults
        self.muted = False
        self.last_latency_ms = None
        self.segmenter = segmenter
        self.recognizer = recognizer
        self.settings = settings
        self.emitter = emitter
        self._clock = Clock(realtime=getattr(source, "realtime", True))
        self._silence_at: Dict[int, int] = {}  # open utterance -> where its current silence began
        self._speculated: Optional[int] = None  # the utterance whose current silence has a speculative decode
        self._owns_scheduler = scheduler is None
        if scheduler is None:
            self.scheduler = Scheduler(self._decode, self._on_done, settings.partial_interval_ms / 1000.0,
                                       settings.duty_budget, fail=self._on_failed)
        else:  # a lane of the shared worker: this stream's requests, batched with the others'
            self.scheduler = scheduler.lane(self._on_done, self._on_failed, options=lambda: self.options)
        self.utterances = 0

    # ------------------------------------------------------------------ pipeline thread
    def run(self, stop: threading.Event, on_started: Optional[Callable[[], None]] = None) -> bool:
        """Run until the source ends or `stop` is set; True if every final was drained in time.

        `on_started` runs once the source is open (the service sends READY=1 there).
        """
        if self._owns_scheduler:
            self.scheduler.start()
        try:
            self.source.start()
            if on_started is not None:
                on_started()
            while not stop.is_set():
                block = self.source.read(timeout=0.2)
                if block is None:
                    if self.source.ended:
                        break
                    if self.source.state == "waiting_for_device":
                        if self.progress is not None:
                            self.progress.waiting_for_audio()  # a mic being reopened is not a stall
                        # The audio stopped (a pipe's writer left, the mic went away): the utterance is
                        # over now, not when audio comes back, which may be never.
                        for event in self.segmenter.interrupt():
                            self._on_segment_event(event)
                    continue
                if self.progress is not None:
                    self.progress.audio_consumed()
                self._clock.arrived(block.end)
                if self.muted:
                    for event in self.segmenter.flush():  # an open utterance still gets its final
                        self._on_segment_event(event)
                    continue
                for event in self.segmenter.feed(block.samples, block.start):
                    self._on_segment_event(event)
                self._maybe_speculate()
                self._maybe_partial()
            for event in self.segmenter.flush():
                self._on_segment_event(event)
        finally:
            self.source.stop()
            if self._owns_scheduler:
                drained = self.scheduler.stop(self.settings.drain_timeout_s)
            else:
                drained = self.scheduler.drain(self.settings.drain_timeout_s)
                self.scheduler.close()
        if not drained:
            log.error("stopped with finals still undecoded after %.1f s", self.settings.drain_timeout_s)
        return drained

    def _on_segment_event(self, event):
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
                self.scheduler.speech_resumed(event.utterance_id)
            self._speculated = None
        elif isinstance(event, SpeechEnd):
            self.utterances += 1
            speech_end = self._silence_at.pop(event.utterance_id, event.end_sample)
            if event.reason != "endpoint":
                speech_end = event.end_sample  # cut or end of input: no silence was heard
            self.scheduler.end(event.utterance_id)  # no partial of it may follow its speech_end
            self.emitter.emit(SpeechEnded(event.utterance_id, *self._vad_times(event.end_sample,
                                                                              event.detected_sample),
                                          reason=event.reason))
            self.scheduler.request_final(event.utterance_id, event.audio, speech_end, event.audio_start_sample)

    def _maybe_speculate(self):
        """Decode the open utterance as if it ended where its silence began: at once when the model is this
        stream's alone, else once the silence has lasted speculative_after_ms."""
        utterance = self.segmenter.utterance_id
        silence_at = self._silence_at.get(utterance) if utterance is not None else None
        if not self.settings.speculative_final or silence_at is None or self._speculated == utterance:
            return
        wait_ms = self.settings.speculative_after_ms if self.scheduler.shared else 0
        if self.segmenter.position - silence_at < wait_ms * RATE // 1000:
            return
        current = self.segmenter.current_audio()
        if current is not None and self.scheduler.request_speculative(utterance, current.audio, silence_at,
                                                                      current.start_sample):
            self._speculated = utterance

    def _maybe_partial(self):
        utterance = self.segmenter.utterance_id
        if (utterance is None or self.settings.partial_interval_ms == 0 or utterance in self._silence_at
                or self.scheduler.busy or not self.scheduler.partial_due()):
            return
        current = self.segmenter.current_audio()
        if current is not None:
            self.scheduler.request_partial(utterance, current.audio, current.end_sample, current.start_sample)

    def _vad_times(self, sample: int, detected_sample: int):
        """at, at_wall, detected_wall, vad_delay_ms of a segmenter event."""
        detected_wall = self._clock.wall(detected_sample)
        delay = None if detected_wall is None else _ms(time.time() - detected_wall)
        return sample / RATE, self._clock.wall(sample), detected_wall, delay

    # ------------------------------------------------------------------ decode thread
    def _decode(self, audio, cancel):
        if self.progress is None:
            return self.recognizer.recognize(audio, self.options, cancel=cancel)
        with self.progress.decoding():
            return self.recognizer.recognize(audio, self.options, cancel=cancel)

    def _on_done(self, done: Done):
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

    def _on_failed(self, utterance_id: int, exc: Exception):
        self.emitter.emit(Problem("pipeline", "decode_failed", f"the final could not be decoded: "
                                                               f"{type(exc).__name__}: {exc}"[:500],
                                  utterance_id=utterance_id))


def emit_final(emitter: Emitter, utterance_id: int, result, start_sample: int, timing: dict,
               latency_ms: Optional[float], speculative: bool) -> None:
    """An utterance's final (tokens moved to stream seconds), then its emotion and language; logged once."""
    offset = start_sample / RATE
    result = dataclasses.replace(result, tokens=[dataclasses.replace(t, start=t.start + offset, end=t.end + offset)
                                                 for t in result.tokens])
    # Fields operators query in the journal; the text goes only in TEXT (dropped unless log_text).
    log.info("final of utterance %s: %s ms after end of speech, decode %.0f ms", utterance_id, latency_ms,
             timing["decode_ms"],
             extra={"EVENT": "final", "UTTERANCE_ID": utterance_id, "LATENCY_MS": latency_ms,
                    "DECODE_MS": round(timing["decode_ms"], 1), "LANGUAGE": result.language,
                    "EMOTION": result.emotion, "TEXT": result.text})
    emitter.emit(Final(utterance_id, result, **timing, endpoint_delay_ms=latency_ms, speculative=speculative))
    if result.text:  # an utterance with no words says nothing about mood or language
        emitter.emit(Emotion(utterance_id, result.emotion, result.emotion_scores, result.confidence))
        emitter.emit(Language(utterance_id, result.language, result.language_scores, result.confidence))


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 1)
