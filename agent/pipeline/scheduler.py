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
  taken while finals wait: the model is behind, and speculation is the work it can skip;
- uploads (whole files sent over HTTP, cut into utterances) run when no final or speculative decode
  waits, batched among themselves, before partials; a final or speculative request stops an upload
  batch in progress, which is queued again: an upload never delays a live stream's final.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterable, List, Optional

import numpy as np

from agent.audio.format import RATE
from agent.offline.batches import next_batch
from agent.recognizer.cancel import CancelToken, DecodeCancelled

log = logging.getLogger(__name__)

PARTIAL, FINAL, SPECULATIVE, UPLOAD = "partial", "final", "speculative", "upload"
# Runs a live final stops at once (ONNX Runtime stops within milliseconds): they would only delay it.
_YIELDING = (PARTIAL, UPLOAD)
# Model time kept for the load estimate (admission control, health): the last minute.
LOAD_WINDOW_S = 60.0
# A live batch pads its audio by a quarter at most: padding costs as much model time as audio, and
# random lengths of 1.5-3.5 s padded a batch of four by up to half.
MAX_PADDING = 0.25


def _future() -> concurrent.futures.Future:
    """A request's future, already running: a caller's cancel() cannot take it from the worker."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_running_or_notify_cancel()
    return future


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
    future: concurrent.futures.Future = field(default_factory=_future)  # what the request returned
    started: bool = False  # taken into a model run


@dataclass
class Done:
    """A finished decode as the pipeline publishes it."""

    kind: str  # partial | final (speculative: a speculative decode's own result, in its future)
    utterance_id: int
    result: object  # Recognition; token times in stream seconds
    end_sample: int
    start_sample: int  # stream position of the decoded audio's first sample
    queue_ms: float  # waited before its decode started
    decode_ms: float  # its share of its batch's model time
    speculative: bool = False  # a final whose decode started before the endpoint
    endpoint_wait_ms: float = 0.0  # finals: from the endpoint (request_final) to publishing
    batch: int = 1  # how many items shared its model run


@dataclass(eq=False)
class _Utterance:
    """What one utterance of a lane asked for beyond partials; dropped once its final is delivered."""

    speculative: Optional[Job] = None  # its speculative decode: waiting to start, running, or done
    result: Optional[Done] = None  # that decode's result, held until the endpoint says whether it covers all
    final: Optional[Job] = None  # asked for at the endpoint; waits for `speculative` while that runs
    ended: bool = False  # its speech ended: a partial of it is stale


@dataclass
class _Run:
    kind: str  # what the batch holds: final, speculative or partial
    jobs: List[Job]
    cancel: CancelToken = field(default_factory=CancelToken)


# decode(audios, options per item, offsets per item, cancel) -> results in the same order. An offset is
# the item's stream position in seconds, added to its token times: results come in stream seconds.
BatchDecode = Callable[[List[np.ndarray], List[object], List[float], CancelToken], List[object]]


def _settle(jobs: Iterable[Optional[Job]], result=None, exc: Optional[BaseException] = None):
    """Complete the futures of `jobs` (None entries skipped) with `result`, or with `exc`."""
    for job in jobs:
        if job is None or job.future.done():
            continue
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)


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
        self._uploads: List[Job] = []  # uploaded files' utterances, oldest first
        self._upload_lane = _Uploads(self)
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

    def upload(self, audio: np.ndarray, options=None, start_sample: int = 0) -> concurrent.futures.Future:
        """An uploaded file's utterance: decoded when no live final or speculative decode waits; the
        future completes with its Recognition (token times in the file's seconds), or an exception."""
        job = Job(UPLOAD, self._upload_lane, 0, audio, start_sample + len(audio), start_sample, options)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the decoder is stopping")
            self._uploads.append(job)
            self._cond.notify_all()
        return job.future

    def queued_uploads(self) -> int:
        with self._cond:
            return len(self._uploads)

    def start(self):
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Finish the finals every lane asked for (bounded wait), then stop; True if every one was delivered
        (its on_done or on_failed returned)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            dropped = [lane._take_partial() for lane in self._lanes]
            finals = [future for lane in self._lanes for future in lane._open_finals()]
            uploads, self._uploads = self._uploads, []
            self._cond.notify_all()
        _settle(dropped)
        _settle(uploads, exc=RuntimeError("the decoder stopped before this upload's turn"))
        if not self._started:
            return not finals
        _, left = concurrent.futures.wait(finals, timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not left

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running is not None

    def queued_finals(self) -> int:
        with self._cond:
            return len(self._finals)

    def oldest_final_age(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds the oldest final queued for a decode has waited (None: none waits): the watchdog's backlog."""
        now = time.monotonic() if now is None else now
        with self._cond:
            return now - min(j.submitted for j in self._finals) if self._finals else None

    def load(self, now: Optional[float] = None) -> dict:
        """Share of the last minute the model spent on finals (and speculative finals), and on partials."""
        now = time.monotonic() if now is None else now
        with self._cond:
            while self._busy and self._busy[0][0] < now - LOAD_WINDOW_S:
                self._busy.popleft()
            finals = sum(s for _, s, kind in self._busy if kind in (FINAL, SPECULATIVE))
            partials = sum(s for _, s, kind in self._busy if kind == PARTIAL)
            uploads = sum(s for _, s, kind in self._busy if kind == UPLOAD)
        span = min(LOAD_WINDOW_S, max(1e-3, now - (self._busy[0][0] if self._busy else now)))
        span = max(span, 5.0)  # a first decode is no load estimate
        return {"finals": min(1.0, finals / span), "partials": min(1.0, partials / span),
                "uploads": min(1.0, uploads / span)}

    # ------------------------------------------------------------------ under the lock, for lanes
    def _cancel_running_partials(self):
        """A final must never wait behind partials or uploads: abort the batch decoding them (ONNX Runtime
        stops in ms); an upload's utterances are queued again."""
        if self._running is not None and self._running.kind in _YIELDING:
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
                speculative = [] if self._finals else [j for lane in self._lanes for j in lane._waiting_speculative()]
                if self._finals:
                    kind, jobs = FINAL, self._fill(self._finals)
                    chosen = {id(j) for j in jobs}
                    self._finals = [j for j in self._finals if id(j) not in chosen]
                elif speculative:
                    kind, jobs = SPECULATIVE, self._fill(sorted(speculative, key=lambda j: j.submitted))
                elif self._uploads and not self._stopping:
                    kind, jobs = UPLOAD, self._fill(self._uploads)
                    chosen = {id(j) for j in jobs}
                    self._uploads = [j for j in self._uploads if id(j) not in chosen]
                elif not self._stopping and any(lane.partial is not None for lane in self._lanes):
                    waiting = sorted((lane.partial for lane in self._lanes if lane.partial is not None),
                                     key=lambda j: j.submitted)
                    kind, jobs = PARTIAL, self._fill(waiting)
                    for job in jobs:
                        job.lane.partial = None
                elif self._stopping:
                    return None
                else:
                    self._cond.wait()
                    continue
                for job in jobs:
                    job.started = True
                self._running = _Run(kind, jobs)
                self._lanes = [lane for lane in self._lanes if not lane.finished()]
                return self._running

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
                    if job.kind == PARTIAL:
                        # Keep each stream's model duty under budget: its next partial waits decode/budget.
                        gap = max(self.partial_interval_s, seconds / self.duty_budget)
                        job.lane._next_partial_at = started + gap
                self._cond.notify_all()
            for i, job in enumerate(run.jobs):
                try:
                    if failure is not None:
                        job.lane._failed(job, failure)
                    elif results is None:
                        job.lane._cancelled(job)
                    else:
                        done = Done(job.kind, job.utterance_id, results[i], job.end_sample, job.start_sample,
                                    (started - job.submitted) * 1000, seconds * 1000 * len(job.audio) / total,
                                    job.kind == SPECULATIVE, batch=len(run.jobs))
                        job.lane._deliver(job, done)
                except Exception as exc:  # a fault in delivery must not kill the worker either
                    log.exception("handing over the %s of utterance %s failed", job.kind, job.utterance_id)
                    _settle([job], exc=exc)


class _Uploads:
    """The lane of uploaded utterances: each job's future gets its Recognition; a stopped run queues its
    jobs again, at the front (they are the oldest)."""

    def __init__(self, scheduler: DecodeScheduler):
        self._s = scheduler

    def _deliver(self, job: Job, done: Done):
        _settle([job], result=done.result)

    def _failed(self, job: Job, exc: Exception):
        _settle([job], exc=exc)

    def _cancelled(self, job: Job):
        with self._s._cond:
            if self._s._stopping:
                job.future.set_exception(RuntimeError("the decoder stopped before this upload's turn"))
                return
            job.started = False
            self._s._uploads.insert(0, job)
            self._s._cond.notify_all()


class Lane:
    """One stream's side of the scheduler: its requests, its utterances' speculative state, its partial pace.

    Every request returns a concurrent.futures.Future (request_speculative: or None, nothing asked):
    - a final's completes with its Done once `on_done` returned, or with the exception once
      `on_failed` returned: a final asked for is never dropped;
    - a partial's with the Done published, or None when it was not (a newer request replaced it,
      its utterance ended, a final cancelled its decode);
    - a speculative decode's with its own Done (kind speculative) once decoded, or None when dropped
      first (speech resumed, or the endpoint came before it started: the final decodes instead).
    A failed decode of any kind completes its future with the exception.
    """

    def __init__(self, scheduler: DecodeScheduler, on_done, on_failed, options):
        self._s = scheduler
        self._cond = scheduler._cond
        self._on_done = on_done
        self._on_failed = on_failed
        self._options = options
        self.partial: Optional[Job] = None  # at most one waiting: the latest
        self._utterances: Dict[int, _Utterance] = {}  # by utterance id, until its final is delivered
        self._next_partial_at = 0.0
        self._closed = False
        # Held while a partial is checked against its utterance's end and published, and while an
        # utterance is marked ended: a partial can then never be published after its speech_end.
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
        """Whether the model is decoding something of this stream now."""
        with self._cond:
            run = self._s._running
            return run is not None and any(j.lane is self for j in run.jobs)

    @property
    def shared(self) -> bool:
        """Whether other streams use the model too."""
        with self._cond:
            return len(self._s._lanes) > 1

    def _job(self, kind, utterance_id, audio, end_sample, start_sample) -> Job:
        return Job(kind, self, utterance_id, audio, end_sample, start_sample, self._options())

    def request_partial(self, utterance_id: int, audio: np.ndarray, end_sample: int,
                        start_sample: int = 0) -> concurrent.futures.Future:
        """Decode the open utterance so far; the future gives the Done published, or None."""
        with self._cond:
            replaced = self._take_partial()
            if replaced is not None:
                self.skipped_partials += 1  # a newer view of the utterance replaces it
            self._utterance(utterance_id)
            job = self.partial = self._job(PARTIAL, utterance_id, audio, end_sample, start_sample)
            self._cond.notify_all()
        _settle([replaced])
        return job.future

    def request_speculative(self, utterance_id: int, audio: np.ndarray, end_sample: int,
                            start_sample: int = 0) -> Optional[concurrent.futures.Future]:
        """Decode the utterance as if it ended at `end_sample`: a future of that decode (truthy: asked),
        or None (nothing asked) while finals wait."""
        dropped = []
        with self._cond:
            dropped.append(self._drop_partials(utterance_id))
            if self._s._finals:
                # Finals are waiting: the model is behind. A speculative decode would run after them, and
                # half of them are thrown away (16 conversation streams: 205 asked, 107 used).
                self._s.speculation["declined"] += 1
                job = None
            else:
                self._s.speculation["requested"] += 1
                self._s._cancel_running_partials()
                for other in self._utterances.values():  # one waiting per stream: the newest
                    if other.speculative is not None and not other.speculative.started:
                        dropped.append(other.speculative)
                        other.speculative = None
                record = self._utterance(utterance_id)
                job = record.speculative = self._job(SPECULATIVE, utterance_id, audio, end_sample, start_sample)
                record.result = None
                self._cond.notify_all()
        _settle(dropped)
        return None if job is None else job.future

    def speech_resumed(self, utterance_id: int):
        """The silence was a pause: the speculative decode (waiting, running or done) is dropped."""
        with self._cond:
            record = self._utterances.get(utterance_id)
            job = None if record is None else record.speculative
            if job is None:
                return
            record.speculative = record.result = None
            run = self._s._running
            if run is not None and run.kind == SPECULATIVE and run.jobs == [job]:
                run.cancel.cancel()  # its result would be dropped; the model is needed for the next one
        if not job.started:
            _settle([job])

    def end(self, utterance_id: int):
        """The utterance is over (call before publishing its speech_end): no partial of it is published
        after this returns."""
        with self._emit_lock, self._cond:
            dropped = self._drop_partials(utterance_id)
            self._utterance(utterance_id).ended = True
        _settle([dropped])

    def request_final(self, utterance_id: int, audio: np.ndarray, end_sample: int,
                      start_sample: int = 0) -> concurrent.futures.Future:
        """The endpoint: publish the speculative result if it covers all speech, else decode now. The future
        completes once the final was delivered (on_done returned) or reported failed (on_failed returned)."""
        ready, dropped = None, []
        with self._cond:
            dropped.append(self._drop_partials(utterance_id))
            self._s._cancel_running_partials()
            record = self._utterance(utterance_id)
            record.ended = True
            job = record.final = self._job(FINAL, utterance_id, audio, end_sample, start_sample)
            spec = record.speculative
            if spec is not None and spec.started and spec.end_sample >= end_sample:
                if record.result is not None:
                    ready = record.result
                    record.speculative = record.result = None
                # else running: published when it is done
            else:
                # A speculative decode that has not started yet becomes this final: a final must never
                # wait in the one speculative slot, where the next utterance's would displace it.
                if spec is not None and not spec.started:
                    dropped.append(spec)
                record.speculative = record.result = None
                self._s._finals.append(job)
                self._cond.notify_all()
        _settle(dropped)
        if ready is not None:
            self._publish_spec(ready, job)
        return job.future

    def drain(self, timeout: float) -> bool:
        """Wait (bounded) until every final this stream asked for was delivered or reported failed (its
        future completed); True if they all were."""
        deadline = time.monotonic() + timeout
        with self._cond:
            dropped = self._take_partial()
        _settle([dropped])
        while True:
            with self._cond:
                finals = self._open_finals()
            if not finals:
                return True
            left = deadline - time.monotonic()
            if left <= 0 or not self._s._started:
                return False
            _, pending = concurrent.futures.wait(finals, left)
            if pending:
                return False

    def close(self):
        """The stream is gone: nothing new is asked; finals already asked are still decoded and delivered."""
        with self._cond:
            self._closed = True
            dropped = [self._take_partial()]
            for utterance_id, record in list(self._utterances.items()):
                if record.final is None:  # no final will be asked for: its speculative state goes
                    if record.speculative is not None and not record.speculative.started:
                        dropped.append(record.speculative)
                    del self._utterances[utterance_id]
        _settle(dropped)

    # ------------------------------------------------------------------ under the lock
    def _utterance(self, utterance_id: int) -> _Utterance:
        record = self._utterances.get(utterance_id)
        if record is None:
            record = self._utterances[utterance_id] = _Utterance()
        return record

    def _open_finals(self) -> List[concurrent.futures.Future]:
        return [r.final.future for r in self._utterances.values() if r.final is not None and not r.final.future.done()]

    def _waiting_speculative(self) -> List[Job]:
        return [r.speculative for r in self._utterances.values()
                if r.speculative is not None and not r.speculative.started]

    def finished(self) -> bool:
        return self._closed and not self._open_finals() and not self._waiting_speculative()

    def _take_partial(self) -> Optional[Job]:
        job, self.partial = self.partial, None
        return job

    def _drop_partials(self, utterance_id: int) -> Optional[Job]:
        if self.partial is not None and self.partial.utterance_id == utterance_id:
            return self._take_partial()
        return None

    def _speculative_gone(self, job: Job):
        """A speculative decode that gave no result: a final waiting for it gets a decode of its own."""
        record = self._utterances.get(job.utterance_id)
        if record is None or record.speculative is not job:
            return
        record.speculative = record.result = None
        if record.final is not None:
            self._s._finals.append(record.final)
            self._cond.notify_all()

    # ------------------------------------------------------------------ results (decode thread)
    def _cancelled(self, job: Job):
        with self._cond:
            if job.kind == SPECULATIVE:
                self.cancelled_speculative += 1
                self._speculative_gone(job)
            elif job.kind == PARTIAL:
                self.cancelled_partials += 1
        _settle([job])

    def _failed(self, job: Job, exc: Exception):
        """A failed final is reported; a failed speculative decode leaves its final to a decode of its own."""
        if job.kind == SPECULATIVE:
            with self._cond:
                self._speculative_gone(job)
        elif job.kind == FINAL:
            if self._on_failed is not None:
                try:
                    self._on_failed(job.utterance_id, exc)
                except Exception:
                    log.exception("reporting the failed final of utterance %s failed", job.utterance_id)
            self._final_over(job, exc=exc)
            return
        _settle([job], exc=exc)

    def _deliver(self, job: Job, done: Done):
        if job.kind == PARTIAL:
            with self._emit_lock:
                with self._cond:
                    record = self._utterances.get(job.utterance_id)  # none: its final was delivered
                    stale = record is None or record.ended or self._closed
                    if stale:
                        self.skipped_partials += 1  # decoded while the utterance ended: a final follows
                if not stale:
                    self._emit(done)
            _settle([job], None if stale else done)
            return
        if job.kind == FINAL:
            done.endpoint_wait_ms = (time.monotonic() - job.submitted) * 1000
            self._emit(done)
            self._final_over(job, done)
            return
        waiting = None
        with self._cond:
            record = self._utterances.get(job.utterance_id)
            kept = record is not None and record.speculative is job  # else speech resumed meanwhile: dropped
            if kept:
                if record.final is None:
                    record.result = done  # the endpoint decides
                else:
                    waiting, record.speculative = record.final, None
        _settle([job], done if kept else None)
        if waiting is not None:
            self._publish_spec(done, waiting)

    def _emit(self, done: Done):
        try:
            self._on_done(done)
        except Exception:  # a publisher fault must not kill the decode worker
            log.exception("publishing the %s of utterance %s failed", done.kind, done.utterance_id)

    def _publish_spec(self, done: Done, final_job: Job):
        published = dataclasses.replace(done, kind=FINAL,
                                        endpoint_wait_ms=(time.monotonic() - final_job.submitted) * 1000)
        with self._cond:
            self._s.speculation["used"] += 1
        self._emit(published)
        self._final_over(final_job, published)

    def _final_over(self, job: Job, done: Optional[Done] = None, exc: Optional[Exception] = None):
        """The final was delivered or reported: its utterance is finished, its future completes."""
        with self._cond:
            record = self._utterances.get(job.utterance_id)
            if record is not None and record.final is job:
                del self._utterances[job.utterance_id]
        _settle([job], done, exc)


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
