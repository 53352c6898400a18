"""Tests for agent.listening.segmenter: synthetic signals with known boundaries through the energy VAD
(deterministic), a few through Silero on espeak-ng speech, and block-split invariance with hypothesis."""
from __future__ import annotations

import itertools
import math
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from speech import espeak

from agent.config_schema import build
from agent.listening import (
    EnergyVad,
    Segmenter,
    SegmenterSettings,
    SilenceBegan,
    SileroVad,
    SpeechEnd,
    SpeechResumed,
    SpeechStart,
    VadSettings,
)
from agent.listening.history import AudioHistory
from agent.listening.levels import quietest_point

SR = 16000
F = 512
TAIL = round(0.2 * SR)  # the default tail pad


def tone(seconds, dbfs=-20.0, hz=300.0):
    t = np.arange(round(seconds * SR)) / SR
    return (32768 * 10 ** (dbfs / 20) * np.sqrt(2) * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def silence(seconds):
    return np.zeros(round(seconds * SR), np.float32)


def signal(*parts):
    """Concatenate parts; return the signal and the (start, end) sample of every non-silent part."""
    out, spans, at = [], [], 0
    for p in parts:
        if p.any():
            spans.append((at, at + len(p)))
        out.append(p)
        at += len(p)
    return np.concatenate(out), spans


def run(x, seg=None, blocks=800, **overrides):
    seg = seg or Segmenter(EnergyVad(), SegmenterSettings(**overrides))
    events = []
    for at in range(0, len(x), blocks):
        events += seg.feed(x[at:at + blocks])
    return events + seg.flush()


def ends(events):
    return [e for e in events if isinstance(e, SpeechEnd)]


def starts(events):
    return [e for e in events if isinstance(e, SpeechStart)]


def frame_floor(n):
    return n // F * F


def frame_ceil(n):
    return -(-n // F) * F


def key(e):
    """Everything an event says, audio included, as a comparable tuple."""
    fields = tuple(sorted((k, v) for k, v in vars(e).items() if k != "audio"))
    audio = e.audio.tobytes() if isinstance(e, SpeechEnd) else b""
    return type(e).__name__, fields, audio


# ---------------------------------------------------------------------------------------------
# Boundaries
# ---------------------------------------------------------------------------------------------

def test_two_utterances_with_their_boundaries_and_audio():
    x, spans = signal(silence(1.0), tone(1.0), silence(1.0), tone(0.7, -30), silence(1.0))
    events = run(x)
    assert [type(e) for e in events] == [SpeechStart, SilenceBegan, SpeechEnd] * 2
    pre_roll, tail_pad = round(0.3 * SR), TAIL
    for (begin, end), start, stop in zip(spans, starts(events), ends(events)):
        assert start.start_sample == frame_floor(begin)  # the frame holding the onset
        assert abs(start.start_sample - begin) <= F
        assert start.detected_sample == start.start_sample + 8 * F  # min_speech 250 ms = 8 frames
        assert stop.start_sample == start.start_sample and stop.utterance_id == start.utterance_id
        assert stop.end_sample == frame_ceil(end) + tail_pad
        assert stop.audio_start_sample == start.start_sample - pre_roll  # pre-roll included
        assert stop.reason == "endpoint"
        assert np.array_equal(stop.audio, x[stop.audio_start_sample:stop.end_sample])
        assert stop.end_s == pytest.approx(stop.end_sample / SR)
    assert [e.utterance_id for e in starts(events)] == [1, 2]


def test_pre_roll_holds_the_audio_just_before_the_onset():
    soft = np.linspace(0, 1, 2000, dtype=np.float32) * 20  # too faint for the VAD, but part of the word
    x, _ = signal(silence(1.0), soft, tone(0.5), silence(1.0))
    (end,) = ends(run(x, pre_roll_ms=300))
    assert end.audio_start_sample <= SR  # reaches back past the faint lead-in
    assert np.array_equal(end.audio[SR - end.audio_start_sample:][:2000], soft)
    (end,) = ends(run(x, pre_roll_ms=0))
    assert end.audio_start_sample == end.start_sample


def test_pre_roll_is_clipped_at_the_stream_start():
    x, _ = signal(silence(0.1), tone(0.5), silence(1.0))
    (end,) = ends(run(x, pre_roll_ms=300))
    assert end.audio_start_sample == 0 and end.start_sample == frame_floor(1600)


@pytest.mark.parametrize("endpoint_ms", [200, 400, 640, 1000])
def test_endpoint_comes_exactly_endpoint_silence_after_the_last_speech_frame(endpoint_ms):
    x, _ = signal(silence(40 * F / SR), tone(50 * F / SR), silence(3.0))  # frame-aligned edges
    events = run(x, endpoint_silence_ms=endpoint_ms, tail_pad_ms=min(100, endpoint_ms))
    began, end = events[1], events[2]
    last_speech_end = 90 * F
    assert isinstance(began, SilenceBegan) and began.at_sample == last_speech_end
    assert began.detected_sample == last_speech_end + F
    assert end.detected_sample == last_speech_end + math.ceil(endpoint_ms * 16 / F) * F
    assert end.end_sample == last_speech_end + round(min(100, endpoint_ms) * 16)


@pytest.mark.parametrize("blip_ms, expected", [(100, 0), (200, 0), (300, 1)])
def test_min_speech_ignores_blips(blip_ms, expected):
    x, _ = signal(silence(1.0), tone(blip_ms / 1000), silence(1.0))
    assert len(starts(run(x))) == len(ends(run(x))) == expected


@pytest.mark.parametrize("pause_s, joins", [(0.2, True), (0.35, True), (0.45, False)])
def test_short_word_just_before_speech_joins_it(pause_s, joins):
    x, spans = signal(silence(1.0), tone(0.15), silence(pause_s), tone(0.5), silence(1.0))
    (start,) = starts(run(x))
    assert start.start_sample == frame_floor(spans[0 if joins else 1][0])


def test_clicks_never_open_an_utterance():
    parts = [silence(0.5)]
    for _ in range(20):  # typing: 50 ms clicks every 250 ms, far more than min_speech in total
        parts += [tone(0.05), silence(0.2)]
    assert run(signal(*parts)[0]) == []


def test_short_pause_is_silence_began_then_speech_resumed():
    x, spans = signal(silence(1.0), tone(0.6), silence(0.25), tone(0.6), silence(1.0))
    events = run(x)
    assert [type(e) for e in events] == [SpeechStart, SilenceBegan, SpeechResumed, SilenceBegan, SpeechEnd]
    assert {e.utterance_id for e in events} == {1}
    assert events[1].at_sample == frame_ceil(spans[0][1])
    assert events[2].at_sample == frame_floor(spans[1][0])
    assert events[2].at_s == pytest.approx(events[2].at_sample / SR)
    assert events[4].end_sample == frame_ceil(spans[1][1]) + TAIL


def test_pause_longer_than_the_endpoint_splits_utterances():
    x, _ = signal(silence(1.0), tone(0.6), silence(0.5), tone(0.6), silence(1.0))
    assert len(ends(run(x))) == 2


def test_pre_roll_never_reaches_into_the_previous_utterance():
    x, _ = signal(silence(1.0), tone(0.6), silence(0.45), tone(0.6), silence(1.0))
    first, second = ends(run(x, pre_roll_ms=1000, tail_pad_ms=400))
    assert second.audio_start_sample == first.end_sample


def test_sequence_numbers_and_ids_increase():
    parts = [silence(0.5)]
    for i in range(6):
        parts += [tone(0.4 + 0.1 * i), silence(0.2 if i % 2 else 0.6)]
    events = run(signal(*parts)[0])
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)) and seqs[0] == 1
    ids = [e.utterance_id for e in starts(events)]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 3


# ---------------------------------------------------------------------------------------------
# Maximum length
# ---------------------------------------------------------------------------------------------

def test_max_length_cut_lands_in_the_quietest_gap():
    dip = (int(3.9 * SR), int(3.95 * SR))  # 50 ms near-silence inside the last 1.5 s before the limit
    x = np.concatenate([silence(0.5), tone(7.5, -20)])
    x[int(3.0 * SR):int(3.3 * SR)] *= 0.1  # a softer stretch: quieter than speech, louder than the dip
    x[dip[0]:dip[1]] = np.random.default_rng(0).standard_normal(dip[1] - dip[0]) * 3
    x = np.concatenate([x, silence(1.0)])
    events = run(x, max_utterance_s=5.0, cut_search_s=1.5)
    first, second = ends(events)
    assert first.reason == "max_length" and dip[0] <= first.end_sample <= dip[1]
    assert len(first.audio) <= 5 * SR
    restart = events[events.index(first) + 1]
    assert isinstance(restart, SpeechStart) and restart.utterance_id == first.utterance_id + 1
    assert restart.start_sample == first.end_sample == second.audio_start_sample
    assert second.reason == "endpoint"
    joined = np.concatenate([first.audio, second.audio])  # nothing lost, nothing twice
    assert np.array_equal(joined, x[first.audio_start_sample:second.end_sample])


def test_max_length_without_a_gap_still_cuts_within_the_search_window():
    x = np.concatenate([silence(0.5), tone(12.0), silence(1.0)])
    events = run(x, max_utterance_s=5.0, cut_search_s=1.0)
    parts = ends(events)
    assert [p.reason for p in parts] == ["max_length", "max_length", "endpoint"]
    for p in parts[:2]:
        assert 4.0 * SR <= p.end_sample - p.audio_start_sample <= 5.0 * SR


@pytest.mark.parametrize("speech_s", [4.5, 4.6])
def test_max_length_while_paused_ends_at_the_last_speech(speech_s):
    # speech up to just before the limit, then a pause shorter than the endpoint straddling it
    x, spans = signal(silence(1.0), tone(speech_s), silence(0.35), tone(0.5), silence(1.0))
    events = run(x, max_utterance_s=5.0, cut_search_s=1.0)
    first, second = ends(events)
    limit = first.audio_start_sample + 5 * SR
    assert first.reason == "max_length"
    assert first.end_sample == min(frame_ceil(spans[0][1]) + TAIL, limit)  # the tail pad stops at the limit
    assert second.start_sample == frame_floor(spans[1][0])
    assert second.audio_start_sample == first.end_sample


# ---------------------------------------------------------------------------------------------
# Blocks, positions, current audio
# ---------------------------------------------------------------------------------------------

BLOCK_TEST_SIGNAL = signal(silence(0.3), tone(0.6), silence(0.2), tone(1.6, -25), silence(0.5),
                           tone(0.1), silence(0.3), tone(0.4, -35), silence(0.6))[0]
BLOCK_TEST_SETTINGS = {"max_utterance_s": 2.0, "cut_search_s": 0.5, "pre_roll_ms": 200}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=len(BLOCK_TEST_SIGNAL) - 1), max_size=40))
def test_any_block_split_gives_the_same_events(cuts):
    x = BLOCK_TEST_SIGNAL
    reference = run(x, blocks=len(x), **BLOCK_TEST_SETTINGS)
    edges = [0] + sorted(set(cuts)) + [len(x)]
    seg = Segmenter(EnergyVad(), SegmenterSettings(**BLOCK_TEST_SETTINGS))
    events = []
    for a, b in itertools.pairwise(edges):
        events += seg.feed(x[a:b], start_sample=a)
    events += seg.flush()
    assert [key(e) for e in events] == [key(e) for e in reference]


def test_block_split_reference_has_every_kind_of_event():
    events = run(BLOCK_TEST_SIGNAL, **BLOCK_TEST_SETTINGS)
    kinds = {type(e) for e in events}
    assert kinds == {SpeechStart, SilenceBegan, SpeechResumed, SpeechEnd}
    assert "max_length" in {e.reason for e in ends(events)}


def test_current_audio_follows_the_open_utterance():
    x, spans = signal(silence(1.0), tone(1.0), silence(1.0))
    seg = Segmenter(EnergyVad())
    seen = []
    for at in range(0, len(x), 800):
        events = seg.feed(x[at:at + 800])
        now = seg.current_audio()
        if now is None:
            assert seg.utterance_id is None
            continue
        assert now.utterance_id == seg.utterance_id == 1
        assert now.end_sample == seg.position
        assert np.array_equal(now.audio, x[now.start_sample:now.end_sample])
        seen.append((now.start_sample, now.end_sample))
        if any(isinstance(e, SilenceBegan) for e in events):
            assert now.end_sample >= frame_ceil(spans[0][1])  # everything the final decode needs
    assert len({s for s, _ in seen}) == 1 and len(seen) > 10
    assert seg.current_audio() is None


def test_gap_in_the_input_ends_the_open_utterance():
    seg = Segmenter(EnergyVad())
    x = np.concatenate([silence(0.5), tone(1.0)])
    assert [type(e) for e in seg.feed(x, start_sample=0)] == [SpeechStart]
    events = seg.feed(tone(0.1), start_sample=len(x) + 4000)
    assert [type(e) for e in events] == [SpeechEnd] and events[0].reason == "gap"
    assert events[0].end_sample == frame_floor(len(x))  # the tail pad stops at the last scored frame
    assert seg.position == len(x) + 4000 + frame_floor(1600)
    with pytest.raises(ValueError, match="overlaps"):
        seg.feed(tone(0.1), start_sample=len(x))


def test_flush_closes_an_open_utterance_and_resets_nothing_else():
    seg = Segmenter(EnergyVad())
    seg.feed(np.concatenate([silence(0.5), tone(1.0)]))
    (end,) = seg.flush()
    assert end.reason == "flush" and seg.current_audio() is None and seg.flush() == []


def test_first_block_sets_the_origin_without_a_gap(caplog):
    x, _ = signal(silence(0.5), tone(0.5), silence(1.0))
    seg = Segmenter(EnergyVad())
    events = seg.feed(x[:3000], start_sample=777) + seg.feed(x[3000:], start_sample=3777) + seg.flush()
    assert [e.start_sample - 777 for e in starts(events)] == [e.start_sample for e in starts(run(x))]
    assert "skipped" not in caplog.text


def test_from_settings_takes_the_vad_thresholds():
    seg = Segmenter.from_settings(EnergyVad(), SegmenterSettings(endpoint_silence_ms=200),
                                  VadSettings(threshold=0.7, negative_threshold=0.2))
    assert (seg._threshold, seg._negative_threshold, seg._endpoint) == (0.7, 0.2, 3200)


def test_stream_may_start_anywhere():
    x, _ = signal(silence(0.5), tone(0.5), silence(1.0))
    base = 10 ** 9
    shifted = run(x, seg=Segmenter(EnergyVad(), start_sample=base))
    plain = run(x)
    assert [e.start_sample - base for e in starts(shifted)] == [e.start_sample for e in starts(plain)]


# ---------------------------------------------------------------------------------------------
# Units: history ring, quietest point, settings
# ---------------------------------------------------------------------------------------------

@given(st.lists(st.integers(min_value=0, max_value=700), min_size=1, max_size=30), st.integers(0, 10 ** 6))
def test_history_keeps_the_last_capacity_samples(sizes, origin):
    h = AudioHistory(1000, origin)
    everything = np.arange(sum(sizes), dtype=np.float32)
    at = 0
    for n in sizes:
        h.append(everything[at:at + n])
        at += n
    assert h.end_sample == origin + at and h.start_sample == origin + max(0, at - 1000)
    assert np.array_equal(h.slice(h.start_sample, h.end_sample), everything[max(0, at - 1000):])
    with pytest.raises(ValueError):
        h.slice(h.start_sample - 1, h.end_sample)


def test_quietest_point_is_the_centre_of_the_quietest_window():
    x = np.ones(4000, np.float32) * 100
    x[2500:2800] = 1
    assert 2500 <= quietest_point(x, 200) <= 2800
    assert quietest_point(x[:100], 200) == 50


def test_segmenter_settings_defaults_and_checks():
    problems = []
    s = build(SegmenterSettings, {}, problems=problems)
    assert not problems
    assert (s.pre_roll_ms, s.min_speech_ms, s.endpoint_silence_ms, s.max_utterance_s) == (300, 250, 400, 20.0)
    for bad, name in [({"tail_pad_ms": 500, "endpoint_silence_ms": 300}, "tail_pad_ms"),
                      ({"max_utterance_s": 2.0, "cut_search_s": 1.5}, "cut_search_s"),
                      ({"endpoint_silence_ms": 10}, "endpoint_silence_ms"),
                      ({"pre_roll": 300}, "unknown key")]:
        problems = []
        build(SegmenterSettings, bad, problems=problems)
        assert problems and any(name in p for p in problems), (bad, problems)


# ---------------------------------------------------------------------------------------------
# Silero on speech
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phrases(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): it synthesises the test speech")
    tmp = tmp_path_factory.mktemp("phrases")
    return espeak(tmp, "Turn on the kitchen lights.", "a.wav"), espeak(tmp, "What time is it?", "b.wav")


def test_silero_segments_two_spoken_phrases(phrases):
    rng = np.random.default_rng(0)
    bed = lambda s: (rng.standard_normal(int(s * SR)) * 15).astype(np.float32)  # ~ -67 dBFS room noise
    x, spans = signal(bed(1.0), phrases[0], bed(1.2), phrases[1], bed(1.0))
    spans = [(spans[1][0], spans[1][1]), (spans[3][0], spans[3][1])]
    events = run(x, seg=Segmenter(SileroVad()))
    assert len(starts(events)) == 2, events
    for (begin, end), start, stop in zip(spans, starts(events), ends(events)):
        assert abs(start.start_sample - begin) <= 3 * F, (start, begin)
        # Silero may drop an unvoiced ending ("lights"): the end may come early by that much
        assert -0.25 * SR <= stop.end_sample - TAIL - end <= 4 * F, (stop, end)
        assert stop.end_sample >= end - 2 * F  # ... which the tail pad then covers
        assert stop.audio_start_sample == start.start_sample - 4800  # the pre-roll
        assert stop.reason == "endpoint"


def test_silero_ignores_a_click_and_noise(phrases):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(3 * SR) * 100).astype(np.float32)  # ~ -50 dBFS
    x[SR:SR + 80] += 20000  # a 5 ms click
    assert run(x, seg=Segmenter(SileroVad())) == []
