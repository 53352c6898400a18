"""The decode scheduler with a decoder the test holds and releases: ordering, skipping, speculation."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from agent.pipeline.scheduler import FINAL, PARTIAL, Scheduler
from agent.recognizer.cancel import DecodeCancelled

TIMEOUT = 5.0


class GatedDecoder:
    """Each decode blocks until the test releases it; records what it was asked to decode."""

    def __init__(self):
        self.started = []  # audio lengths, in start order
        self._gate = threading.Semaphore(0)
        self._started = threading.Semaphore(0)

    def __call__(self, audio, cancel=None):
        self.started.append(len(audio))
        self._started.release()
        while not self._gate.acquire(timeout=0.01):
            if cancel is not None and cancel.cancelled:
                raise DecodeCancelled()
        return f"text of {len(audio)}"

    def wait_started(self, count=1):
        for _ in range(count):
            assert self._started.acquire(timeout=TIMEOUT), "no decode started"

    def release(self, count=1):
        for _ in range(count):
            self._gate.release()


class Collector:
    def __init__(self):
        self.done = []
        self._cond = threading.Condition()

    def __call__(self, done):
        with self._cond:
            self.done.append(done)
            self._cond.notify_all()

    def wait_for(self, count):
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.done) >= count, TIMEOUT), self.done
        return self.done


@pytest.fixture
def parts():
    decoder, out = GatedDecoder(), Collector()
    scheduler = Scheduler(decoder, out, partial_interval_s=0.0)
    scheduler.start()
    yield scheduler, decoder, out
    decoder.release(100)
    scheduler.stop(1.0)


def audio(n):
    return np.zeros(n, np.float32)


def test_partials_under_load_keep_only_the_latest(parts):
    scheduler, decoder, out = parts
    scheduler.request_partial(1, audio(100), 100)
    decoder.wait_started()
    for n in (200, 300, 400):  # arrive while the first decode runs
        scheduler.request_partial(1, audio(n), n)
    decoder.release(2)
    done = out.wait_for(2)
    assert [d.result for d in done] == ["text of 100", "text of 400"]
    assert scheduler.skipped_partials == 2
    assert decoder.started == [100, 400]


def test_final_goes_before_a_waiting_partial_and_drops_its_partials(parts):
    scheduler, decoder, out = parts
    scheduler.request_partial(1, audio(100), 100)
    decoder.wait_started()
    scheduler.request_partial(2, audio(50), 50)  # waiting partial of the next utterance
    scheduler.request_partial(1, audio(150), 150)  # replaces it (latest audio wins)
    scheduler.request_partial(2, audio(60), 60)
    scheduler.request_final(1, audio(500), 500)
    decoder.release(3)
    done = out.wait_for(2)
    # The running partial of utterance 1 finished after its endpoint: stale, not published.
    assert [(d.kind, d.utterance_id, d.result) for d in done] == [
        (FINAL, 1, "text of 500"), (PARTIAL, 2, "text of 60")]


def test_speculative_result_becomes_the_final_at_once(parts):
    scheduler, decoder, out = parts
    scheduler.request_speculative(1, audio(300), 300)
    decoder.wait_started()
    decoder.release()
    # The decode finished during the endpoint silence: nothing is published yet...
    threading.Event().wait(0.1)
    assert out.done == []
    scheduler.request_final(1, audio(300), 300)
    (done,) = out.wait_for(1)
    assert (done.kind, done.speculative, done.result) == (FINAL, True, "text of 300")
    assert decoder.started == [300]  # no second decode
    assert done.endpoint_wait_ms < 100


def test_speculative_still_running_at_the_endpoint_is_published_when_done(parts):
    scheduler, decoder, out = parts
    scheduler.request_speculative(1, audio(300), 300)
    decoder.wait_started()
    scheduler.request_final(1, audio(300), 300)
    assert out.done == []
    decoder.release()
    (done,) = out.wait_for(1)
    assert done.kind == FINAL and done.speculative and decoder.started == [300]


def test_speech_resumed_drops_the_speculative_decode(parts):
    scheduler, decoder, out = parts
    scheduler.request_speculative(1, audio(300), 300)
    decoder.wait_started()
    scheduler.speech_resumed(1)
    decoder.release()
    scheduler.request_final(1, audio(800), 800)  # more speech came: a full decode
    decoder.wait_started()
    decoder.release()
    (done,) = out.wait_for(1)
    assert (done.kind, done.speculative, done.result) == (FINAL, False, "text of 800")
    assert decoder.started == [300, 800]


def test_speech_resumed_cancels_a_running_speculative_decode(parts):
    """A pause's speculative decode must not hold the model when the real end of speech comes."""
    scheduler, decoder, out = parts
    scheduler.request_speculative(1, audio(300), 300)
    decoder.wait_started()
    scheduler.speech_resumed(1)
    scheduler.request_speculative(1, audio(900), 900)  # the real end: starts without the first being released
    decoder.wait_started()
    assert decoder.started == [300, 900]
    assert scheduler.cancelled_speculative == 1 and scheduler.cancelled_partials == 0
    scheduler.request_final(1, audio(900), 900)
    decoder.release()
    (done,) = out.wait_for(1)
    assert (done.kind, done.speculative, done.result) == (FINAL, True, "text of 900")


def test_speech_resumed_leaves_other_utterances_decodes_alone(parts):
    scheduler, decoder, out = parts
    scheduler.request_speculative(1, audio(300), 300)
    decoder.wait_started()
    scheduler.request_final(1, audio(300), 300)  # waits for the running speculative decode
    scheduler.speech_resumed(2)  # the next utterance pauses: utterance 1's final is not touched
    decoder.release()
    (done,) = out.wait_for(1)
    assert (done.kind, done.utterance_id, done.speculative) == (FINAL, 1, True)
    assert scheduler.cancelled_speculative == 0


def test_speculative_that_misses_later_speech_is_not_used(parts):
    scheduler, decoder, out = parts
    scheduler.request_speculative(1, audio(300), 300)
    decoder.wait_started()
    decoder.release()
    scheduler.request_final(1, audio(400), 400)  # speech ended later than the speculative audio
    decoder.wait_started()
    decoder.release()
    (done,) = out.wait_for(1)
    assert done.result == "text of 400" and not done.speculative


def test_partial_interval_stretches_with_decode_time():
    import time

    def slow(audio_, cancel=None):
        time.sleep(0.05)
        return "x"

    out = Collector()
    scheduler = Scheduler(slow, out, partial_interval_s=0.01, duty_budget=0.25)
    scheduler.start()
    before = time.monotonic()
    scheduler.request_partial(1, audio(10), 10)
    out.wait_for(1)
    # A 50 ms decode at a 25% duty budget: the next partial is due >= 200 ms after it started.
    assert not scheduler.partial_due(before + 0.15)
    assert scheduler.partial_due(before + 0.05 / 0.25 + 0.2)
    scheduler.stop()


def test_a_failing_decode_or_publisher_does_not_kill_the_worker():
    calls = []

    def flaky(a, cancel=None):
        calls.append(len(a))
        if len(a) == 1:
            raise RuntimeError("boom")
        return "ok"

    out = Collector()

    def emit(done):
        if done.utterance_id == 2:
            raise RuntimeError("publisher down")
        out(done)

    scheduler = Scheduler(flaky, emit)
    scheduler.start()
    scheduler.request_final(1, audio(1), 1)
    scheduler.request_final(2, audio(2), 2)
    scheduler.request_final(3, audio(3), 3)
    (done,) = out.wait_for(1)
    assert done.utterance_id == 3 and calls == [1, 2, 3]
    assert scheduler.stop()


def test_stop_drains_finals_within_the_bound(parts):
    scheduler, decoder, out = parts
    scheduler.request_final(1, audio(10), 10)
    scheduler.request_final(2, audio(20), 20)
    decoder.release(2)
    assert scheduler.stop(TIMEOUT)
    assert [d.utterance_id for d in out.done] == [1, 2]


def test_a_final_is_never_lost_when_the_next_utterance_speculates(parts):
    """Faster than real time: utterance 1 ends while its speculative decode still waits its turn."""
    scheduler, decoder, out = parts
    scheduler.request_partial(1, audio(100), 100)
    decoder.wait_started()  # the model is busy
    scheduler.request_speculative(1, audio(300), 300)
    scheduler.request_final(1, audio(300), 300)
    scheduler.request_speculative(2, audio(700), 700)  # takes the speculative slot
    scheduler.request_final(2, audio(700), 700)
    decoder.release(3)
    done = out.wait_for(2)
    assert [(d.kind, d.utterance_id) for d in done] == [(FINAL, 1), (FINAL, 2)]


def test_a_partial_finishing_after_the_endpoint_is_not_published(parts):
    scheduler, decoder, out = parts
    scheduler.request_partial(1, audio(100), 100)
    decoder.wait_started()
    scheduler.request_final(1, audio(300), 300)  # speech ended while the partial decodes
    decoder.release(2)
    done = out.wait_for(1)
    assert scheduler.stop(TIMEOUT)
    assert [(d.kind, d.utterance_id) for d in out.done] == [(FINAL, 1)]
    assert scheduler.skipped_partials == 1


def test_a_running_partial_is_cancelled_when_the_speculative_final_arrives(parts):
    """The final never waits behind a partial: the speculative decode starts without the partial finishing."""
    scheduler, decoder, out = parts
    scheduler.request_partial(1, audio(100), 100)
    decoder.wait_started()
    scheduler.request_speculative(1, audio(300), 300)
    decoder.wait_started()  # started although the partial's decode was never released
    assert decoder.started == [100, 300]
    assert scheduler.cancelled_partials == 1
    scheduler.request_final(1, audio(300), 300)
    decoder.release()
    (done,) = out.wait_for(1)
    assert (done.kind, done.speculative) == (FINAL, True)


# --- many streams, one worker ------------------------------------------------------------------
class BatchDecoder:
    """Gated like GatedDecoder, for batches: records each run's (audio length, options) items and offsets."""

    def __init__(self):
        self.runs = []
        self.offsets = []
        self._gate = threading.Semaphore(0)
        self._started = threading.Semaphore(0)

    def __call__(self, audios, options, offsets, cancel):
        self.runs.append([(len(a), o) for a, o in zip(audios, options)])
        self.offsets.append(list(offsets))
        self._started.release()
        while not self._gate.acquire(timeout=0.01):
            if cancel.cancelled:
                raise DecodeCancelled()
        return [f"{o or 'auto'} text of {len(a)}" for a, o in zip(audios, options)]

    def wait_started(self):
        assert self._started.acquire(timeout=TIMEOUT), "no decode started"

    def release(self, count=1):
        for _ in range(count):
            self._gate.release()


@pytest.fixture
def shared():
    from agent.pipeline.scheduler import DecodeScheduler

    decoder = BatchDecoder()
    scheduler = DecodeScheduler(decoder, batch_size=4, max_batch_seconds=1.0, partial_interval_s=0.0)
    scheduler.start()
    yield scheduler, decoder
    decoder.release(100)
    scheduler.stop(1.0)


def test_ready_finals_of_several_streams_share_one_run_with_their_own_options(shared):
    scheduler, decoder = shared
    outs = [Collector() for _ in range(3)]
    lanes = [scheduler.lane(out, options=lambda lang=lang: lang) for out, lang in zip(outs, ("ja", None, "zh"))]
    lanes[0].request_partial(1, audio(100), 100)
    decoder.wait_started()  # the model is busy with stream 0's partial...
    for i, lane in enumerate(lanes):
        lane.request_final(1, audio(1000 + i), 1000 + i)  # ...which the first final cancels
    decoder.wait_started()
    decoder.release()
    for out, expected in zip(outs, ("ja text of 1000", "auto text of 1001", "zh text of 1002")):
        (done,) = out.wait_for(1)
        assert (done.kind, done.result, done.batch) == (FINAL, expected, 3)
    assert decoder.runs[1] == [(1000, "ja"), (1001, None), (1002, "zh")]
    assert lanes[0].cancelled_partials == 1 and scheduler.batches[3] == 1


def test_a_batch_stays_within_its_padded_length(shared):
    """max_batch_seconds 1.0: two 0.6 s finals would pad to 1.2 s of compute, so they run apart."""
    scheduler, decoder = shared
    out = Collector()
    lane = scheduler.lane(out)
    lane.request_final(1, audio(9600), 9600)
    lane.request_final(2, audio(9600), 9600)
    decoder.release(2)
    out.wait_for(2)
    assert [len(run) for run in decoder.runs] == [1, 1]


def test_a_stream_that_disconnects_still_gets_its_finals_delivered(shared):
    scheduler, decoder = shared
    out = Collector()
    lane = scheduler.lane(out)
    lane.request_partial(1, audio(100), 100)
    lane.request_final(2, audio(200), 200)
    lane.close()  # the client went away mid-utterance: its final still reaches the other sinks
    decoder.release(3)
    (done,) = out.wait_for(1)
    assert (done.kind, done.utterance_id) == (FINAL, 2)
    assert lane.drain(TIMEOUT) and lane.finished()


def test_partials_of_several_streams_are_paced_per_stream(shared):
    scheduler, decoder = shared
    outs = [Collector(), Collector()]
    lanes = [scheduler.lane(out) for out in outs]
    lanes[0].request_partial(1, audio(100), 100)
    lanes[1].request_partial(1, audio(200), 200)
    decoder.release(2)
    for out in outs:
        out.wait_for(1)
    assert sorted(len(run) for run in decoder.runs) in ([1, 1], [2])
    # Interval 0: each stream is due again after twice its own decode (duty budget 0.5), not the other's.
    assert all(lane.partial_due(time.monotonic() + 1.0) for lane in lanes)


def test_no_partial_is_published_once_its_utterance_has_ended(parts):
    """speech_end is published right after end(): a partial finishing meanwhile must not follow it."""
    scheduler, decoder, out = parts
    scheduler.request_partial(1, audio(100), 100)
    decoder.wait_started()
    scheduler.end(1)  # the pipeline publishes speech_end now
    decoder.release()
    scheduler.request_final(1, audio(300), 300)
    decoder.wait_started()
    decoder.release()
    (done,) = out.wait_for(1)
    assert done.kind == FINAL and scheduler.skipped_partials == 1


def test_a_batch_takes_the_oldest_final_with_those_closest_to_its_length(shared):
    """Padding costs as much as audio: a 0.3 s final is not batched with 0.15 s ones around it."""
    scheduler, decoder = shared
    out = Collector()
    lane = scheduler.lane(out)
    lane.request_partial(1, audio(100), 100)
    decoder.wait_started()  # the model is busy while the finals queue up
    for utterance, length in ((2, 4800), (3, 2400), (4, 4700), (5, 2500), (6, 4900)):
        lane.request_final(utterance, audio(length), length)
    decoder.release(10)
    out.wait_for(5)
    assert [sorted(n for n, _ in run) for run in decoder.runs[1:]] == [[4700, 4800, 4900], [2400, 2500]]
    assert scheduler.batches == {3: 1, 2: 1} and set(scheduler.model_seconds) == {"partial", "final"}


def test_speculation_waits_for_the_endpoint_while_finals_wait(parts):
    """Speculation is work thrown away at every pause that is no endpoint: not while the model is behind."""
    scheduler, decoder, out = parts
    scheduler.request_final(1, audio(100), 100)
    decoder.wait_started()
    scheduler.request_final(2, audio(100), 100)  # queued behind it
    assert not scheduler.request_speculative(3, audio(300), 300)
    decoder.release(2)
    out.wait_for(2)
    assert scheduler.request_speculative(3, audio(300), 300)  # the model caught up
    decoder.wait_started(2)  # final 2's decode, then the speculative one
    scheduler.request_final(3, audio(300), 300)
    decoder.release()
    assert [(d.utterance_id, d.speculative) for d in out.wait_for(3)][-1] == (3, True)
    assert scheduler._s.speculation == {"declined": 1, "requested": 1, "used": 1}



# --- futures: what a request gives back, and what drained means ------------------------------------
class HeldPublisher:
    """An on_done that stays inside the sinks until the test lets it return."""

    def __init__(self):
        self.entered, self.leave, self.returned = threading.Event(), threading.Event(), []

    def __call__(self, done):
        self.entered.set()
        assert self.leave.wait(TIMEOUT)
        self.returned.append(done)


def test_drain_waits_until_on_done_has_returned(shared):
    """The worker takes the final off its books before on_done runs: drain must still wait for it."""
    scheduler, decoder = shared
    publisher = HeldPublisher()
    lane = scheduler.lane(publisher)
    lane.request_final(1, audio(100), 100)
    decoder.release()
    assert publisher.entered.wait(TIMEOUT)  # the final is on its way to the sinks, not there yet
    assert not lane.drain(0.3)
    assert publisher.returned == []
    publisher.leave.set()
    assert lane.drain(TIMEOUT) and len(publisher.returned) == 1


def test_stop_is_true_only_once_every_final_was_delivered():
    decoder, publisher = BatchDecoder(), HeldPublisher()
    from agent.pipeline.scheduler import DecodeScheduler

    scheduler = DecodeScheduler(decoder)
    lane = scheduler.lane(publisher)
    scheduler.start()
    final = lane.request_final(1, audio(100), 100)
    decoder.release()
    assert publisher.entered.wait(TIMEOUT)
    assert not scheduler.stop(0.3) and not final.done()
    publisher.leave.set()
    assert scheduler.stop(TIMEOUT) and final.result(0) is publisher.returned[0]


def test_a_finals_future_completes_after_delivery_or_after_the_failure_was_reported(shared):
    scheduler, decoder = shared
    order = []
    lane = scheduler.lane(lambda done: order.append(("done", done.utterance_id)),
                          lambda utterance, exc: order.append(("failed", utterance)))
    ok = lane.request_final(1, audio(100), 100)
    ok.add_done_callback(lambda f: order.append(("future", 1)))
    decoder.release()
    assert ok.result(TIMEOUT).kind == FINAL and order == [("done", 1), ("future", 1)]

    def broken(audios, options, offsets, cancel):
        raise RuntimeError("boom")

    scheduler._decode = broken
    failed = lane.request_final(2, audio(100), 100)
    with pytest.raises(RuntimeError, match="boom"):
        failed.result(TIMEOUT)
    assert order[-1] == ("failed", 2)
    assert failed.cancel() is False  # a caller cannot take a final from the worker


def test_a_partials_future_gives_its_done_or_none(parts):
    scheduler, decoder, out = parts
    first = scheduler.request_partial(1, audio(100), 100)
    decoder.wait_started()
    replaced = scheduler.request_partial(1, audio(200), 200)
    latest = scheduler.request_partial(1, audio(300), 300)
    assert replaced.result(0) is None  # a newer view replaced it before it started
    decoder.release(2)
    assert first.result(TIMEOUT).result == "text of 100" and latest.result(TIMEOUT).result == "text of 300"
    running = scheduler.request_partial(1, audio(400), 400)
    decoder.wait_started(2)
    scheduler.request_final(1, audio(500), 500)  # cancels the partial's decode
    assert running.result(TIMEOUT) is None and scheduler.cancelled_partials == 1
    decoder.release()


def test_a_speculative_requests_future_is_its_own_decode_and_the_finals_is_what_was_published(parts):
    scheduler, decoder, out = parts
    speculative = scheduler.request_speculative(1, audio(300), 300)
    assert speculative
    decoder.wait_started()
    decoder.release()
    own = speculative.result(TIMEOUT)
    assert (own.kind, own.speculative) == ("speculative", True) and out.done == []
    final = scheduler.request_final(1, audio(300), 300)
    assert final.done() and final.result(0) is out.done[0]
    assert (final.result(0).kind, own.kind) == (FINAL, "speculative")  # the published copy is the final


def test_a_speculative_decode_dropped_before_it_started_gives_none(parts):
    scheduler, decoder, out = parts
    scheduler.request_partial(1, audio(100), 100)
    decoder.wait_started()  # busy: the speculative decode waits its turn
    speculative = scheduler.request_speculative(1, audio(300), 300)
    final = scheduler.request_final(1, audio(300), 300)  # ...and becomes this final
    assert speculative.result(0) is None
    decoder.release(3)
    assert not final.result(TIMEOUT).speculative


def test_a_finished_utterance_leaves_no_state_behind(parts):
    scheduler, decoder, out = parts
    scheduler.request_partial(1, audio(100), 100)
    decoder.wait_started()
    scheduler.request_speculative(1, audio(300), 300)
    decoder.wait_started()
    decoder.release()
    scheduler.end(1)
    final = scheduler.request_final(1, audio(300), 300)
    assert final.result(TIMEOUT).speculative
    assert scheduler._utterances == {}


def test_each_items_stream_position_goes_into_the_model_run(shared):
    """Token times come out in stream seconds: the model run adds start_sample / 16000 to each item's."""
    scheduler, decoder = shared
    out = Collector()
    lane = scheduler.lane(out)
    lane.request_partial(1, audio(100), 100)
    decoder.wait_started()
    lane.request_final(7, audio(1600), 49600, start_sample=48000)
    lane.request_final(8, audio(1600), 81600, start_sample=80000)
    decoder.release(3)
    out.wait_for(2)
    assert decoder.offsets[-1] == [3.0, 5.0]


# --- the batch planner: live and offline -------------------------------------------------------
def _old_plan_batches(lengths, batch_size, max_padded):
    """agent/offline/batches.py's planner before next_batch: the behaviour offline keeps."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = []
    for i in order:
        batch = batches[-1] if batches else None
        if batch is not None and len(batch) < batch_size and lengths[i] * (len(batch) + 1) <= max_padded:
            batch.append(i)
        else:
            batches.append([i])
    return batches


def test_offline_plans_the_batches_it_always_did():
    from agent.offline.batches import plan_batches

    rng = np.random.default_rng(0)
    for _ in range(500):
        lengths = [int(n) for n in rng.integers(1, 40, size=int(rng.integers(1, 30)))]
        batch_size, max_padded = int(rng.integers(1, 9)), int(rng.integers(20, 200))
        assert plan_batches(lengths, batch_size, max_padded) == _old_plan_batches(lengths, batch_size, max_padded)


def test_a_live_batch_is_the_oldest_with_its_closest_lengths_padded_by_a_quarter_at_most():
    from agent.offline.batches import next_batch

    assert next_batch([4800, 2400, 4700], 4, 10**6, 0.25) == [0, 2, 1]  # the closest length joins first
    assert next_batch([4800, 2400], 4, 10**6, 0.25) == [0]  # 7200 samples of audio padded to 9600: a third
    assert next_batch([4800, 2400], 4, 10**6) == [0, 1]  # offline caps no padding
    assert next_batch([6000, 9000, 2000], 4, 16000) == [0, 2]  # 9000 would pad past the bound: the next is tried
    assert next_batch([100, 100, 100], 2, 1000, 0.25) == [0, 1]


def test_the_oldest_queued_final_tells_how_long_the_model_is_behind(parts):
    scheduler, decoder, out = parts
    assert scheduler._s.oldest_final_age() is None
    scheduler.request_final(1, audio(10), 10)
    decoder.wait_started()  # running: no longer queued
    scheduler.request_final(2, audio(10), 10)
    queued = scheduler._s._finals[0].submitted
    assert scheduler._s.oldest_final_age(queued + 2.0) == pytest.approx(2.0)
    decoder.release(2)
    out.wait_for(2)
    assert scheduler._s.oldest_final_age() is None


def test_a_final_waiting_on_a_speculative_decode_that_fails_gets_a_decode_of_its_own():
    gate, calls = threading.Event(), []

    def decode(a, cancel=None):
        calls.append(len(a))
        if len(calls) == 1:
            assert gate.wait(TIMEOUT)
            raise RuntimeError("the runtime failed")
        return f"text of {len(a)}"

    out = Collector()
    scheduler = Scheduler(decode, out)
    scheduler.start()
    speculative = scheduler.request_speculative(1, audio(300), 300)
    while not calls:
        time.sleep(0.001)
    final = scheduler.request_final(1, audio(300), 300)  # waits on the running speculative decode
    gate.set()
    with pytest.raises(RuntimeError):
        speculative.result(TIMEOUT)
    assert (final.result(TIMEOUT).result, final.result(0).speculative) == ("text of 300", False)
    assert calls == [300, 300] and scheduler.stop(TIMEOUT)


# ---------------------------------------------------------------------------------- uploads
def test_an_upload_yields_to_a_live_final_and_is_decoded_after_it(parts):
    """An uploaded file's utterance runs when nothing live waits; a live final stops it and goes first; the
    upload is queued again and completes."""
    scheduler, decoder, out = parts
    shared = scheduler._s
    upload = shared.upload(audio(800), start_sample=16000)
    decoder.wait_started()  # the upload decodes: nothing live waits
    scheduler.request_final(1, audio(300), 300)  # stops it
    decoder.wait_started()
    decoder.release(2)
    (done,) = out.wait_for(1)
    assert done.result == "text of 300"
    assert upload.result(TIMEOUT) == "text of 800"
    assert decoder.started == [800, 300, 800]  # stopped, the final, the upload again
    assert shared.cancelled["upload"] == 1


def test_uploads_go_before_partials_and_fail_at_stop_when_never_taken(parts):
    scheduler, decoder, out = parts
    shared = scheduler._s
    first = shared.upload(audio(100))
    decoder.wait_started()
    scheduler.request_partial(1, audio(50), 50)
    second = shared.upload(audio(200))
    decoder.release()
    decoder.wait_started()
    assert decoder.started == [100, 200]  # the waiting upload before the waiting partial
    assert first.result(TIMEOUT) == "text of 100"
    third = shared.upload(audio(300))
    shared.stop(0.1)
    decoder.release(5)
    assert second.result(TIMEOUT) == "text of 200"
    with pytest.raises(RuntimeError, match="stopped"):
        third.result(TIMEOUT)
