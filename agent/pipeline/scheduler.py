"""Decode scheduling: one model, many streams; finals first, partials skipped under load, speculative finals.

The model is the bottleneck, so one worker thread decides what it works on next, across every
stream (a `Lane` each):
- finals go first, the oldest end of speech first, and are never skipped; several ready finals
  (of any streams) run as one batch, each with its own language and ITN options;
- then speculative finals, one per stream, batched the same way;
- then partials: each stream's latest audio only (a newer request replaces one not yet started),
  spaced per stream so each stream's share of the model stays under a duty budget;
- a speculative or final decode cancels a partial batch in progress (it would only delay it);
- a stream's speculative decode whose silence turned out to be a pause is dropped when speech
  resumes (and cancelled if it runs alone): left running, it would delay the next one;
- a speculative final starts once a silence has lasted a moment (the pipeline asks); if the silence
  lasts to the endpoint its result is the final, published at once, so the final costs endpoint
  silence instead of endpoint silence + a full decode. If speech resumes, it is dropped. None is
  taken while finals wait: the model is behind, and speculation is the work it can skip.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional

import numpy as np

from agent.offline.batches import next_batch
from agent.recognizer.cancel import CancelToken, DecodeCancelled

log = logging.getLogger(__name__)

PARTIAL, FINAL, SPECULATIVE = "partial", "final", "speculative"
RATE = 16000
# Model time kept for the load estimate (admission control, health): the last minute.
LOAD_WINDOW_S = 60.0
# A live batch pads its audio by a quarter at most: padding costs as much model time as audio, and
# random lengths of 1.5-3.5 s padded a batch of four by up to half.
MAX_PADDING = 0.25


@dataclass(eq=False)  # jobs are compared by identity (they hold arrays)
class Job:
    kind: str
    lane: "Lane"
    utterance_id: int
    audio: np.ndarray
    end_sample: int  # stream position of the last speech sample `audio` covers
    start_sample: int = 0  # stream position of audio[0]
    options: object = None  # DecodeOptions when the request was made (None: the recognizer's defaults)
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class Done:
    """A finished decode as the pipeline publishes it."""

    kind: str  # partial | final
    utterance_id: int
    result: object  # Recognition; token times in stream seconds
    end_sample: int
    start_sample: int  # stream position of the decoded audio's first sample
    queue_ms: float  # waited before its decode started
    decode_ms: float  # its share of its batch's model time
    speculative: bool = False  # a final whose decode started before the endpoint
    endpoint_wait_ms: float = 0.0  # finals: from the endpoint (request_final) to publishing
    batch: int = 1  # how many items shared its model run


@dataclass
class _Run:
    kind: str  # what the batch holds: final (finals and speculative ones), speculative, partial
    jobs: List[Job]
    cancel: CancelToken = field(default_factory=CancelToken)


# decode(audios, options per item, offsets per item, cancel) -> results in the same order. An offset is
# the item's stream position in seconds, added to its token times: results come in stream seconds.
BatchDecode = Callable[[List[np.ndarray], List[object], List[float], CancelToken], List[object]]


class DecodeScheduler:
    """The one decode worker every stream shares. `lane()` gives each stream its face."""

    def __init__(self, decode: BatchDecode, *, batch_size: int = 1, max_batch_seconds: float = 60.0,
                 partial_interval_s: float = 0.5, duty_budget: float = 0.5):
        self._decode = decode
        self.batch_size = max(1, batch_size)
        self.max_batch_samples = int(max_batch_seconds * RATE)
        self.partial_interval_s = partial_interval_s
        self.duty_budget = duty_budget
        self._cond = threading.Condition()
        self._finals: List[Job] = []  # every lane's, oldest end of speech first
        self._lanes: List[Lane] = []
        self._running: Optional[_Run] = None
        self._stopping = False
        self._started = False
        self._busy: Deque = collections.deque()  # (finished, seconds, kind) of recent runs
        self.batches: collections.Counter = collections.Counter()  # batch size -> runs of finals
        self.model_seconds: collections.Counter = collections.Counter()  # run kind -> model time, for health
        self.cancelled: collections.Counter = collections.Counter()  # run kind -> runs stopped midway
        self.speculation: collections.Counter = collections.Counter()  # requested | declined | used
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)

    # ------------------------------------------------------------------ streams
    def lane(self, on_done: Callable[[Done], None], on_failed: Optional[Callable[[int, Exception], None]] = None,
             options: Callable[[], object] = lambda: None) -> Lane:
        """A stream's requests and results. `options()` is read at each request (language commands)."""
        lane = Lane(self, on_done, on_failed, options)
        with self._cond:
            self._lanes.append(lane)
        return lane

    def start(self):
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Finish queued finals of every lane (bounded wait), then stop; True if everything was drained."""
        with self._cond:
            self._stopping = True
            for lane in self._lanes:
                lane.partial = None
            self._cond.notify_all()
        if not self._started:
            return not self._finals
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running is not None

    def queued_finals(self) -> int:
        with self._cond:
            return len(self._finals)

    def load(self, now: Optional[float] = None) -> dict:
        """Share of the last minute the model spent on finals (and speculative finals), and on partials."""
        now = time.monotonic() if now is None else now
        with self._cond:
            while self._busy and self._busy[0][0] < now - LOAD_WINDOW_S:
                self._busy.popleft()
            finals = sum(s for _, s, kind in self._busy if kind != PARTIAL)
            partials = sum(s for _, s, kind in self._busy if kind == PARTIAL)
        span = min(LOAD_WINDOW_S, max(1e-3, now - (self._busy[0][0] if self._busy else now)))
        span = max(span, 5.0)  # a first decode is no load estimate
        return {"finals": min(1.0, finals / span), "partials": min(1.0, partials / span)}

    # ------------------------------------------------------------------ under the lock, for lanes
    def _cancel_running_partials(self):
        """A final must never wait behind partials: abort the batch decoding them (ONNX Runtime stops in ms)."""
        if self._running is not None and self._running.kind == PARTIAL:
            self._running.cancel.cancel()

    # ------------------------------------------------------------------ worker (decode thread)
    def _fill(self, candidates: List[Job]) -> List[Job]:
        """The oldest candidate, with the others closest to it in length (agent/offline/batches.py's
        next_batch: the one planner of live and offline batches), padded by a quarter at most."""
        picked = next_batch([len(j.audio) for j in candidates], self.batch_size, self.max_batch_samples,
                            MAX_PADDING)
        return [candidates[i] for i in picked]

    def _next_run(self) -> Optional[_Run]:
        with self._cond:
            while True:
                if self._finals:
                    jobs = self._fill(self._finals)
                    chosen = {id(j) for j in jobs}
                    self._finals = [j for j in self._finals if id(j) not in chosen]
                    run = _Run(FINAL, jobs)
                elif any(lane.speculative is not None for lane in self._lanes):
                    waiting = sorted((lane.speculative for lane in self._lanes if lane.speculative is not None),
                                     key=lambda j: j.submitted)
                    jobs = self._fill(waiting)
                    for job in jobs:
                        job.lane.speculative = None
                    run = _Run(SPECULATIVE, jobs)
                elif not self._stopping and any(lane.partial is not None for lane in self._lanes):
                    waiting = sorted((lane.partial for lane in self._lanes if lane.partial is not None),
                                     key=lambda j: j.submitted)
                    jobs = self._fill(waiting)
                    for job in jobs:
                        job.lane.partial = None
                    run = _Run(PARTIAL, jobs)
                elif self._stopping:
                    return None
                else:
                    self._cond.wait()
                    continue
                self._running = run
                for job in run.jobs:
                    job.lane._running.append(job)
                self._lanes = [lane for lane in self._lanes if not lane.finished()]
                return run

    def _run(self):
        while True:
            run = self._next_run()
            if run is None:
                return
            started = time.monotonic()
            results, failure = None, None
            try:
                results = self._decode([j.audio for j in run.jobs], [j.options for j in run.jobs],
                                       [j.start_sample / RATE for j in run.jobs], run.cancel)
            except DecodeCancelled:
                self.cancelled[run.kind] += 1
                for job in run.jobs:
                    job.lane._count_cancelled(job)
            except Exception as exc:  # one bad decode must not kill the worker
                log.exception("decode of %d utterance(s) (%s) failed", len(run.jobs), run.kind)
                failure = exc
            finished = time.monotonic()
            seconds = finished - started
            total = sum(len(j.audio) for j in run.jobs) or 1
            with self._cond:
                self._running = None
                self._busy.append((finished, seconds, run.kind))
                while self._busy[0][0] < finished - LOAD_WINDOW_S:
                    self._busy.popleft()
                self.model_seconds[run.kind] += seconds
                if run.kind == FINAL:
                    self.batches[len(run.jobs)] += 1
                for job in run.jobs:
                    job.lane._running.remove(job)
                    if job.kind == PARTIAL:
                        # Keep each stream's model duty under budget: its next partial waits decode/budget.
                        gap = max(self.partial_interval_s, seconds / self.duty_budget)
                        job.lane._next_partial_at = started + gap
                self._cond.notify_all()
            if failure is not None:
                for job in run.jobs:
                    job.lane._failed(job, failure)
                continue
            if results is None:
                continue
            for job, result in zip(run.jobs, results):
                done = Done(job.kind, job.utterance_id, result, job.end_sample, job.start_sample,
                            (started - job.submitted) * 1000, seconds * 1000 * len(job.audio) / total,
                            job.kind == SPECULATIVE, batch=len(run.jobs))
                job.lane._deliver(job, done)


class Lane:
    """One stream's side of the scheduler: its requests, its speculative results, its partial pace."""

    def __init__(self, scheduler: DecodeScheduler, on_done, on_failed, options):
        self._s = scheduler
        self._cond = scheduler._cond
        self._on_done = on_done
        self._on_failed = on_failed
        self._options = options
        self.partial: Optional[Job] = None  # at most one pending: the latest
        self.speculative: Optional[Job] = None  # at most one pending
        self._running: List[Job] = []
        # utterance id -> (end_sample, Done | None while in flight) of its speculative decode
        self._spec_results: dict = {}
        self._awaiting_spec: dict = {}  # utterance id -> final Job waiting on its speculative decode
        self._ended: set = set()  # utterances whose final was requested: their partials are stale
        self._next_partial_at = 0.0
        self._closed = False
        # Held while a partial is checked against _ended and published, and while an utterance is
        # marked ended: a partial can then never be published after its utterance's speech_end.
        self._emit_lock = threading.Lock()
        self.skipped_partials = 0
        self.cancelled_partials = 0
        self.cancelled_speculative = 0

    # ------------------------------------------------------------------ requests (the stream's thread)
    def partial_due(self, now: Optional[float] = None) -> bool:
        """Whether a partial for the open utterance should be requested now."""
        return (now if now is not None else time.monotonic()) >= self._next_partial_at

    @property
    def busy(self) -> bool:
        with self._cond:
            return bool(self._running)

    @property
    def shared(self) -> bool:
        """Whether other streams use the model too."""
        with self._cond:
            return len(self._s._lanes) > 1

    def _job(self, kind, utterance_id, audio, end_sample, start_sample) -> Job:
        return Job(kind, self, utterance_id, audio, end_sample, start_sample, self._options())

    def request_partial(self, utterance_id: int, audio: np.ndarray, end_sample: int, start_sample: int = 0):
        with self._cond:
            if self.partial is not None:
                self.skipped_partials += 1  # a newer view of the utterance replaces it
            self.partial = self._job(PARTIAL, utterance_id, audio, end_sample, start_sample)
            self._cond.notify_all()

    def request_speculative(self, utterance_id: int, audio: np.ndarray, end_sample: int,
                            start_sample: int = 0) -> bool:
        """Decode the utterance as if it ended at `end_sample`; False (nothing asked) while finals wait."""
        with self._cond:
            self._drop_partials(utterance_id)
            if self._s._finals:
                # Finals are waiting: the model is behind. A speculative decode would run after them, and
                # half of them are thrown away (16 conversation streams: 205 asked, 107 used).
                self._s.speculation["declined"] += 1
                return False
            self._s.speculation["requested"] += 1
            self._s._cancel_running_partials()
            self.speculative = self._job(SPECULATIVE, utterance_id, audio, end_sample, start_sample)
            self._spec_results[utterance_id] = (end_sample, None)
            self._cond.notify_all()
        return True

    def speech_resumed(self, utterance_id: int):
        """The silence was a pause: the speculative decode (pending, running or done) is dropped."""
        with self._cond:
            if self.speculative is not None and self.speculative.utterance_id == utterance_id:
                self.speculative = None
            self._spec_results.pop(utterance_id, None)
            run = self._s._running
            if (run is not None and run.kind == SPECULATIVE and len(run.jobs) == 1
                    and run.jobs[0].lane is self and run.jobs[0].utterance_id == utterance_id):
                run.cancel.cancel()  # its result would be dropped; the model is needed for the next one

    def end(self, utterance_id: int):
        """The utterance is over (call before publishing its speech_end): no partial of it is published
        after this returns."""
        with self._emit_lock, self._cond:
            self._drop_partials(utterance_id)
            self._ended.add(utterance_id)
            self._ended.discard(utterance_id - 100)  # keep the set small; ids only grow

    def request_final(self, utterance_id: int, audio: np.ndarray, end_sample: int, start_sample: int = 0):
        """The endpoint: publish the speculative result if it covers all speech, else decode now."""
        ready = None
        with self._cond:
            self._drop_partials(utterance_id)
            self._s._cancel_running_partials()
            self._ended.add(utterance_id)
            self._ended.discard(utterance_id - 100)  # keep the set small; ids only grow
            job = self._job(FINAL, utterance_id, audio, end_sample, start_sample)
            spec = self._spec_results.get(utterance_id)
            pending = self.speculative is not None and self.speculative.utterance_id == utterance_id
            if spec is not None and spec[0] >= end_sample and not pending:
                if spec[1] is None:
                    self._awaiting_spec[utterance_id] = job  # running: published when it is done
                    return
                ready = self._spec_results.pop(utterance_id)[1]
            else:
                # A speculative decode that has not started yet becomes this final: a final must never
                # wait in the one speculative slot, where the next utterance's would displace it.
                self._spec_results.pop(utterance_id, None)
                if pending:
                    self.speculative = None
                self._s._finals.append(job)
                self._cond.notify_all()
        if ready is not None:
            self._publish_spec(ready, job)

    def drain(self, timeout: float) -> bool:
        """Wait (bounded) until this stream's finals are decoded and delivered; True if they were."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self.partial = None
            while self._has_finals():
                left = deadline - time.monotonic()
                if left <= 0 or not self._s._started:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self):
        """The stream is gone: nothing new is asked; finals already asked are still decoded and delivered."""
        with self._cond:
            self._closed = True
            self.partial = None

    # ------------------------------------------------------------------ under the lock
    def _has_finals(self) -> bool:
        return (any(j.lane is self for j in self._s._finals) or bool(self._awaiting_spec)
                or any(j.kind != PARTIAL for j in self._running))

    def finished(self) -> bool:
        return self._closed and not self._has_finals() and self.speculative is None

    def _drop_partials(self, utterance_id: int):
        if self.partial is not None and self.partial.utterance_id == utterance_id:
            self.partial = None

    def _count_cancelled(self, job: Job):
        if job.kind == SPECULATIVE:
            self.cancelled_speculative += 1
        elif job.kind == PARTIAL:
            self.cancelled_partials += 1

    # ------------------------------------------------------------------ results (decode thread)
    def _failed(self, job: Job, exc: Exception):
        """A failed final is reported; a failed speculative decode leaves its final to a decode of its own."""
        if job.kind == SPECULATIVE:
            with self._cond:
                spec = self._spec_results.get(job.utterance_id)
                if spec is not None and spec[0] == job.end_sample:
                    del self._spec_results[job.utterance_id]
                waiting = self._awaiting_spec.pop(job.utterance_id, None)
                if waiting is not None:
                    self._s._finals.append(waiting)
                    self._cond.notify_all()
            return
        if job.kind == FINAL and self._on_failed is not None:
            try:
                self._on_failed(job.utterance_id, exc)
            except Exception:
                log.exception("reporting the failed final of utterance %s failed", job.utterance_id)

    def _deliver(self, job: Job, done: Done):
        if job.kind == PARTIAL:
            with self._emit_lock:
                with self._cond:
                    stale = job.utterance_id in self._ended or self._closed
                    if stale:
                        self.skipped_partials += 1  # decoded while the utterance ended: a final follows
                if not stale:
                    self._safe_emit(done)
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
            self._on_done(done)
        except Exception:  # a publisher fault must not kill the decode worker
            log.exception("publishing the %s of utterance %s failed", done.kind, done.utterance_id)
        with self._cond:
            self._cond.notify_all()  # drain() waits for deliveries

    def _publish_spec(self, done: Done, final_job: Job):
        done.kind = FINAL
        with self._cond:
            self._s.speculation["used"] += 1
        done.endpoint_wait_ms = (time.monotonic() - final_job.submitted) * 1000
        self._safe_emit(done)


class Scheduler(Lane):
    """A scheduler of its own for a single stream (tests): one lane, one item per run.

    `decode(audio, cancel)` is handed no stream offset: its token times are its own.
    """

    def __init__(self, decode: Callable[[np.ndarray, CancelToken], object], emit: Callable[[Done], None],
                 partial_interval_s: float = 0.5, duty_budget: float = 0.5,
                 fail: Optional[Callable[[int, Exception], None]] = None):
        shared = DecodeScheduler(lambda audios, options, offsets, cancel: [decode(audios[0], cancel)],
                                 partial_interval_s=partial_interval_s, duty_budget=duty_budget)
        super().__init__(shared, emit, fail, lambda: None)
        with shared._cond:
            shared._lanes.append(self)

    def start(self):
        self._s.start()

    def stop(self, timeout: float = 5.0) -> bool:
        return self._s.stop(timeout)
