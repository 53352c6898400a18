"""The live loop: audio blocks -> segmenter -> decode scheduler -> events (speech_start, partial, final, speech_end).

One pipeline thread reads the source and drives the segmenter; the scheduler's worker thread
decodes. Events go to a sink (JSON lines on stdout now, MQTT later) with their timing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, Optional

from agent.listening import SilenceBegan, SpeechEnd, SpeechResumed, SpeechStart
from agent.pipeline.scheduler import FINAL, Done, Scheduler
from agent.pipeline.settings import PipelineSettings

log = logging.getLogger(__name__)
RATE = 16000


class Clock:
    """Maps stream positions to wall-clock time, anchored on the newest block's arrival."""

    def __init__(self):
        self.anchor: Optional[float] = None  # wall time of stream sample 0

    def arrived(self, end_sample: int):
        self.anchor = time.time() - end_sample / RATE

    def wall(self, sample: int) -> Optional[float]:
        return None if self.anchor is None else self.anchor + sample / RATE


class LivePipeline:
    def __init__(self, source, segmenter, recognizer, emit: Callable[[dict], None], settings: PipelineSettings,
                 progress=None):
        self.source = source
        self.progress = progress  # agent.service.Progress: lets the systemd watchdog see the pipeline move
        self.options = None  # DecodeOptions set at run time (MQTT language commands); None = defaults
        self.muted = False
        self.last_latency_ms = None
        self.segmenter = segmenter
        self.recognizer = recognizer
        self.settings = settings
        self._emit = emit
        self._clock = Clock()
        self._silence_at: Dict[int, int] = {}  # open utterance -> where its current silence began
        self._starts: Dict[int, int] = {}  # utterance -> audio start sample (for result timing)
        self.scheduler = Scheduler(self._decode, self._on_done, settings.partial_interval_ms / 1000.0,
                                   settings.duty_budget)
        self.utterances = 0

    # ------------------------------------------------------------------ pipeline thread
    def run(self, stop: threading.Event, on_started: Optional[Callable[[], None]] = None) -> bool:
        """Run until the source ends or `stop` is set; True if every final was drained in time.

        `on_started` runs once the source is open (the service sends READY=1 there).
        """
        self.scheduler.start()
        self.source.start()
        if on_started is not None:
            on_started()
        try:
            while not stop.is_set():
                block = self.source.read(timeout=0.2)
                if block is None:
                    if self.source.ended:
                        break
                    if self.progress is not None and self.source.state == "waiting_for_device":
                        self.progress.waiting_for_audio()  # a mic being reopened is not a stall
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
                self._maybe_partial()
            for event in self.segmenter.flush():
                self._on_segment_event(event)
        finally:
            self.source.stop()
            drained = self.scheduler.stop(self.settings.drain_timeout_s)
        if not drained:
            log.error("stopped with finals still undecoded after %.1f s", self.settings.drain_timeout_s)
        return drained

    def _on_segment_event(self, event):
        if isinstance(event, SpeechStart):
            self._speech_event("speech_start", event.utterance_id, event.start_sample, event.detected_sample)
        elif isinstance(event, SilenceBegan):
            self._silence_at[event.utterance_id] = event.at_sample
            if self.settings.speculative_final:
                current = self.segmenter.current_audio()
                if current is not None:
                    self._starts[event.utterance_id] = current.start_sample
                    self.scheduler.request_speculative(event.utterance_id, current.audio, event.at_sample)
        elif isinstance(event, SpeechResumed):
            self._silence_at.pop(event.utterance_id, None)
            self.scheduler.speech_resumed(event.utterance_id)
        elif isinstance(event, SpeechEnd):
            self.utterances += 1
            speech_end = self._silence_at.pop(event.utterance_id, event.end_sample)
            if event.reason != "endpoint":
                speech_end = event.end_sample  # cut or end of input: no silence was heard
            self._speech_event("speech_end", event.utterance_id, event.end_sample, event.detected_sample,
                               reason=event.reason)
            self._starts[event.utterance_id] = event.audio_start_sample
            self.scheduler.request_final(event.utterance_id, event.audio, speech_end)

    def _maybe_partial(self):
        utterance = self.segmenter.utterance_id
        if (utterance is None or self.settings.partial_interval_ms == 0 or utterance in self._silence_at
                or self.scheduler.busy or not self.scheduler.partial_due()):
            return
        current = self.segmenter.current_audio()
        if current is not None:
            self._starts[utterance] = current.start_sample
            self.scheduler.request_partial(utterance, current.audio, current.end_sample)

    def _speech_event(self, kind, utterance_id, sample, detected_sample, **extra):
        now = time.time()
        detected_wall = self._clock.wall(detected_sample)
        self._emit({"type": kind, "utterance_id": utterance_id, "at": round(sample / RATE, 3),
                    "at_wall": _r(self._clock.wall(sample)), "detected_wall": _r(detected_wall),
                    "emitted_at": _r(now), "vad_delay_ms": _ms(now - detected_wall if detected_wall else None),
                    **extra})

    # ------------------------------------------------------------------ decode thread
    def _decode(self, audio, cancel):
        if self.progress is None:
            return self.recognizer.recognize(audio, self.options, cancel=cancel)
        with self.progress.decoding():
            return self.recognizer.recognize(audio, self.options, cancel=cancel)

    def _on_done(self, done: Done):
        # The final is an utterance's last result (later partials are dropped by the scheduler): forget it.
        start = (self._starts.pop if done.kind == FINAL else self._starts.get)(done.utterance_id, 0)
        end = start + int(round(done.result.duration * RATE))
        now = time.time()
        end_wall = self._clock.wall(done.end_sample)
        record = {"type": done.kind, "utterance_id": done.utterance_id,
                  **done.result.to_dict(tokens=done.kind == FINAL),
                  "audio_start": round(start / RATE, 3), "audio_end": round(end / RATE, 3),
                  "audio_start_wall": _r(self._clock.wall(start)), "audio_end_wall": _r(self._clock.wall(end)),
                  "queue_ms": round(done.queue_ms, 1), "decode_ms": round(done.decode_ms, 1),
                  "emitted_at": _r(now)}
        if done.kind == FINAL:
            record["speculative"] = done.speculative
            # End of speech -> final emitted: the latency a listener feels.
            record["endpoint_delay_ms"] = _ms(now - end_wall if end_wall else None)
            self.last_latency_ms = record["endpoint_delay_ms"]
            # Fields operators query in the journal; the text goes only in TEXT (dropped unless log_text).
            log.info("final of utterance %s: %s ms after end of speech, decode %.0f ms", done.utterance_id,
                     record["endpoint_delay_ms"], done.decode_ms,
                     extra={"EVENT": "final", "UTTERANCE_ID": done.utterance_id,
                            "LATENCY_MS": record["endpoint_delay_ms"], "DECODE_MS": round(done.decode_ms, 1),
                            "LANGUAGE": record["language"], "EMOTION": record["emotion"],
                            "TEXT": record["text"]})
            for token in record["tokens"]:
                token["start"] = round(token["start"] + start / RATE, 3)
                token["end"] = round(token["end"] + start / RATE, 3)
        self._emit(record)


def _r(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 3)


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 1)
