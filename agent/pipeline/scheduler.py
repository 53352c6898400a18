"""Decode scheduling: one decode in flight, finals first, partials skipped under load, speculative finals.

The model is the bottleneck, so this decides what it works on next:
- a final is never skipped and goes before any partial;
- a partial is only "the latest audio of the open utterance": a newer request replaces an older
  one that has not started (latest audio wins), and partials are spaced so the model's duty cycle
  stays under a budget (the interval stretches as decodes of a growing utterance get slower);
- a speculative or final decode cancels a partial in progress (it would only delay the final);
- a speculative decode whose silence turned out to be a pause is cancelled as soon as speech
  resumes: left running, it would delay the next speculative decode, the one that becomes the final;
- a speculative final starts the moment the VAD first hears silence; if the silence lasts to the
  endpoint its result is the final, published at once, so the final costs endpoint silence instead
  of endpoint silence + a full decode. If speech resumes, it is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from agent.recognizer.cancel import CancelToken, DecodeCancelled

log = logging.getLogger(__name__)

PARTIAL, FINAL, SPECULATIVE = "partial", "final", "speculative"


@dataclass
class Job:
    kind: str
    utterance_id: int
    audio: np.ndarray
    end_sample: int  # stream position of the last speech sample `audio` covers
    start_sample: int = 0  # stream position of audio[0]
    submitted: float = field(default_factory=time.monotonic)
    cancel: CancelToken = field(default_factory=CancelToken)


@dataclass
class Done:
    """A finished decode as the pipeline publishes it."""

    kind: str  # partial | final
    utterance_id: int
    result: object  # Recognition
    end_sample: int
    start_sample: int  # stream position of the decoded audio's first sample
    queue_ms: float  # waited before its decode started
    decode_ms: float
    speculative: bool = False  # a final whose decode started before the endpoint
    endpoint_wait_ms: float = 0.0  # finals: from the endpoint (request_final) to publishing


class Scheduler:
    def __init__(self, decode: Callable[[np.ndarray, CancelToken], object], emit: Callable[[Done], None],
                 partial_interval_s: float = 0.5, duty_budget: float = 0.5,
                 fail: Optional[Callable[[int, Exception], None]] = None):
        """`fail(utterance_id, exc)`: a final could not be decoded (it is reported, never silently lost)."""
        self._decode = decode
        self._emit = emit
        self._fail = fail
        self.partial_interval_s = partial_interval_s
        self.duty_budget = duty_budget
        self._cond = threading.Condition()
        self._finals: list = []  # FIFO of final jobs
        self._partial: Optional[Job] = None  # at most one pending: the latest
        self._speculative: Optional[Job] = None  # pending speculative decode
        self._running: Optional[Job] = None
        # utterance id -> (end_sample, Done | None while in flight) of its speculative decode
        self._spec_results: dict = {}
        self._awaiting_spec: dict = {}  # utterance id -> final Job waiting on its speculative decode
        self._ended: set = set()  # utterances whose final was requested: their partials are stale
        self._next_partial_at = 0.0
        self._stopping = False
        self.skipped_partials = 0
        self.cancelled_partials = 0
        self.cancelled_speculative = 0
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)

    # ------------------------------------------------------------------ requests (pipeline thread)
    def start(self):
        self._thread.start()

    def partial_due(self, now: Optional[float] = None) -> bool:
        """Whether a partial for the open utterance should be requested now."""
        return (now if now is not None else time.monotonic()) >= self._next_partial_at

    def request_partial(self, utterance_id: int, audio: np.ndarray, end_sample: int, start_sample: int = 0):
        with self._cond:
            if self._partial is not None:
                self.skipped_partials += 1  # a newer view of the utterance replaces it
            self._partial = Job(PARTIAL, utterance_id, audio, end_sample, start_sample)
            self._cond.notify()

    def request_speculative(self, utterance_id: int, audio: np.ndarray, end_sample: int, start_sample: int = 0):
        with self._cond:
            self._drop_partials(utterance_id)
            self._cancel_running_partial()
            self._speculative = Job(SPECULATIVE, utterance_id, audio, end_sample, start_sample)
            self._spec_results[utterance_id] = (end_sample, None)
            self._cond.notify()

    def speech_resumed(self, utterance_id: int):
        """The silence was a pause: the speculative decode (pending, running or done) is dropped."""
        with self._cond:
            if self._speculative is not None and self._speculative.utterance_id == utterance_id:
                self._speculative = None
            self._spec_results.pop(utterance_id, None)
            running = self._running
            if running is not None and running.kind == SPECULATIVE and running.utterance_id == utterance_id:
                running.cancel.cancel()  # its result would be dropped; the model is needed for the next one

    def request_final(self, utterance_id: int, audio: np.ndarray, end_sample: int, start_sample: int = 0):
        """The endpoint: publish the speculative result if it covers all speech, else decode now."""
        ready = None
        with self._cond:
            self._drop_partials(utterance_id)
            self._cancel_running_partial()
            self._ended.add(utterance_id)
            self._ended.discard(utterance_id - 100)  # keep the set small; ids only grow
            job = Job(FINAL, utterance_id, audio, end_sample, start_sample)
            spec = self._spec_results.get(utterance_id)
            pending = self._speculative is not None and self._speculative.utterance_id == utterance_id
            if spec is not None and spec[0] >= end_sample and not pending:
                if spec[1] is None:
                    self._awaiting_spec[utterance_id] = job  # running: published when it is done
                    return
                ready = self._spec_results.pop(utterance_id)[1]
            else:
                # A speculative decode that has not started yet becomes this final: a final must never
                # wait in the one speculative slot, where the next utterance's would displace it.
                self._spec_results.pop(utterance_id, None)
                if self._speculative is not None and self._speculative.utterance_id == utterance_id:
                    self._speculative = None
                self._finals.append(job)
                self._cond.notify()
        if ready is not None:
            self._publish_spec(ready, job)

    def stop(self, timeout: float = 5.0) -> bool:
        """Finish queued finals (bounded wait), then stop; True if everything was drained."""
        with self._cond:
            self._stopping = True
            self._partial = None
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running is not None

    # ------------------------------------------------------------------ worker (decode thread)
    def _cancel_running_partial(self):
        """A final must never wait behind a partial: abort the one decoding now (ONNX Runtime stops in ms)."""
        if self._running is not None and self._running.kind == PARTIAL:
            self._running.cancel.cancel()

    def _drop_partials(self, utterance_id: int):
        if self._partial is not None and self._partial.utterance_id == utterance_id:
            self._partial = None

    def _next_job(self) -> Optional[Job]:
        with self._cond:
            while True:
                if self._finals:
                    job = self._finals.pop(0)
                elif self._speculative is not None:
                    job, self._speculative = self._speculative, None
                elif self._partial is not None and not self._stopping:
                    job, self._partial = self._partial, None
                elif self._stopping:
                    return None
                else:
                    self._cond.wait()
                    continue
                self._running = job
                return job

    def _run(self):
        while True:
            job = self._next_job()
            if job is None:
                return
            started = time.monotonic()
            try:
                result = self._decode(job.audio, job.cancel)
            except DecodeCancelled:
                if job.kind == SPECULATIVE:
                    self.cancelled_speculative += 1
                else:
                    self.cancelled_partials += 1
                result = None
            except Exception as exc:  # one bad decode must not kill the worker
                log.exception("decode of utterance %s (%s) failed", job.utterance_id, job.kind)
                self._failed(job, exc)
                result = None
            finished = time.monotonic()
            decode_ms = (finished - started) * 1000
            with self._cond:
                self._running = None
                if job.kind == PARTIAL:
                    # Keep the model's duty cycle under budget: wait decode/budget from this start.
                    gap = max(self.partial_interval_s, (finished - started) / self.duty_budget)
                    self._next_partial_at = started + gap
            if result is None:
                continue
            done = Done(job.kind, job.utterance_id, result, job.end_sample, job.start_sample,
                        (started - job.submitted) * 1000, decode_ms, job.kind == SPECULATIVE)
            self._deliver(job, done)

    def _failed(self, job: Job, exc: Exception):
        """A failed final is reported; a failed speculative decode leaves its final to a decode of its own."""
        if job.kind == SPECULATIVE:
            with self._cond:
                spec = self._spec_results.get(job.utterance_id)
                if spec is not None and spec[0] == job.end_sample:
                    del self._spec_results[job.utterance_id]
                waiting = self._awaiting_spec.pop(job.utterance_id, None)
                if waiting is not None:
                    self._finals.append(waiting)
                    self._cond.notify()
            return
        if job.kind == FINAL and self._fail is not None:
            try:
                self._fail(job.utterance_id, exc)
            except Exception:
                log.exception("reporting the failed final of utterance %s failed", job.utterance_id)

    def _deliver(self, job: Job, done: Done):
        if job.kind == PARTIAL:
            with self._cond:
                if job.utterance_id in self._ended:
                    self.skipped_partials += 1  # decoded while the utterance ended: a final follows
                    return
        if job.kind != SPECULATIVE:
            if job.kind == FINAL:
                done.endpoint_wait_ms = (time.monotonic() - job.submitted) * 1000
            self._safe_emit(done)
            return
        with self._cond:
            spec = self._spec_results.get(job.utterance_id)
            if spec is None or spec[0] != job.end_sample:
                return  # speech resumed meanwhile: dropped
            waiting = self._awaiting_spec.pop(job.utterance_id, None)
            if waiting is None:
                self._spec_results[job.utterance_id] = (job.end_sample, done)
                return
            del self._spec_results[job.utterance_id]
        self._publish_spec(done, waiting)

    def _safe_emit(self, done: Done):
        try:
            self._emit(done)
        except Exception:  # a publisher fault must not kill the decode worker
            log.exception("publishing the %s of utterance %s failed", done.kind, done.utterance_id)

    def _publish_spec(self, done: Done, final_job: Job):
        done.kind = FINAL
        done.endpoint_wait_ms = (time.monotonic() - final_job.submitted) * 1000
        self._safe_emit(done)
