"""Tests for agent.recognizer.frontend against an independent plain-numpy computation.

The reference below is written from Kaldi's definition of fbank (feature-window.cc, feature-fbank.cc,
mel-computations.cc) and FunASR's apply_lfr / apply_cmvn loops, in float64, without
kaldi-native-fbank. The Frontend under test computes in float32, hence the tolerances.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.recognizer.frontend import MIN_SAMPLES, SAMPLE_RATE, Frontend, FrontendConfig

FRAME_LEN, FRAME_SHIFT, NFFT, MEL_BINS = 400, 160, 512, 80
LFR_M, LFR_N = 7, 6
FEAT_DIM = LFR_M * MEL_BINS
FLT_EPSILON = float(np.finfo(np.float32).eps)  # Kaldi floors mel energies at FLT_EPSILON before log

# log energies of float32 vs float64 computations: 1e-3 absolute is ~0.1 % in energy
LOG_ATOL = 1e-3


# ---------------------------------------------------------------------------------------------
# Independent reference: Kaldi fbank
# ---------------------------------------------------------------------------------------------

def mel_scale(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def kaldi_mel_banks(num_bins=MEL_BINS, nfft=NFFT, sample_rate=SAMPLE_RATE, low_freq=20.0, high_freq=None):
    """(num_bins, nfft // 2) weights exactly as Kaldi's MelBanks builds them.

    Kaldi uses nfft/2 FFT bins (0 .. Nyquist exclusive): the Nyquist bin never gets a weight.
    A bin gets a weight when its mel lies strictly inside (left, right); the triangle is linear in mel.
    """
    nyquist = 0.5 * sample_rate
    high_freq = nyquist if high_freq is None else high_freq
    num_fft_bins = nfft // 2
    fft_bin_width = sample_rate / nfft
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    banks = np.zeros((num_bins, num_fft_bins))
    for b in range(num_bins):
        left = mel_low + b * delta
        center = mel_low + (b + 1) * delta
        right = mel_low + (b + 2) * delta
        for i in range(num_fft_bins):
            mel = float(mel_scale(fft_bin_width * i))
            if left < mel < right:
                if mel <= center:
                    banks[b, i] = (mel - left) / (center - left)
                else:
                    banks[b, i] = (right - mel) / (right - center)
    return banks


MEL_BANKS = kaldi_mel_banks()
N = np.arange(FRAME_LEN)
HAMMING = 0.54 - 0.46 * np.cos(2 * np.pi * N / (FRAME_LEN - 1))


def reference_fbank(samples):
    """Kaldi fbank, dither 0, snip_edges true, float64; samples already on the scale to analyse."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size < FRAME_LEN:
        return np.zeros((0, MEL_BINS))
    num_frames = 1 + (x.size - FRAME_LEN) // FRAME_SHIFT
    rows = []
    for t in range(num_frames):
        frame = x[t * FRAME_SHIFT: t * FRAME_SHIFT + FRAME_LEN].copy()
        frame -= frame.mean()  # remove_dc_offset
        emph = frame.copy()  # pre-emphasis, coefficient 0.97; sample 0 uses itself
        emph[1:] = frame[1:] - 0.97 * frame[:-1]
        emph[0] = frame[0] - 0.97 * frame[0]
        windowed = emph * HAMMING
        padded = np.zeros(NFFT)
        padded[:FRAME_LEN] = windowed
        power = np.abs(np.fft.rfft(padded)) ** 2  # NFFT/2 + 1 values; Nyquist unused below
        energies = MEL_BANKS @ power[: NFFT // 2]
        rows.append(np.log(np.maximum(energies, FLT_EPSILON)))
    return np.array(rows)


# ---------------------------------------------------------------------------------------------
# Independent reference: FunASR LFR (apply_lfr) and CMVN (apply_cmvn), written as loops
# ---------------------------------------------------------------------------------------------

def reference_lfr(inputs, lfr_m=LFR_M, lfr_n=LFR_N):
    lfr = []
    T = inputs.shape[0]
    T_lfr = int(math.ceil(T / lfr_n))
    left_padding = np.tile(inputs[0], ((lfr_m - 1) // 2, 1))
    inputs = np.vstack((left_padding, inputs))
    T = T + (lfr_m - 1) // 2
    for i in range(T_lfr):
        if lfr_m <= T - i * lfr_n:
            lfr.append(inputs[i * lfr_n: i * lfr_n + lfr_m].reshape(-1))
        else:  # the last LFR frame: repeat the last frame to fill it
            num_padding = lfr_m - (T - i * lfr_n)
            frame = inputs[i * lfr_n:].reshape(-1)
            for _ in range(num_padding):
                frame = np.hstack((frame, inputs[-1]))
            lfr.append(frame)
    return np.vstack(lfr)


def reference_cmvn(x, neg_mean, inv_stddev):
    return (x + neg_mean) * inv_stddev


def reference_features(samples, neg_mean, inv_stddev, scale=1.0):
    x = np.asarray(samples, dtype=np.float64) * scale
    if x.size < MIN_SAMPLES:
        x = np.concatenate([x, np.zeros(MIN_SAMPLES - x.size)])
    return reference_cmvn(reference_lfr(reference_fbank(x)), neg_mean, inv_stddev)


# ---------------------------------------------------------------------------------------------
# Fixtures and signals
# ---------------------------------------------------------------------------------------------

RNG = np.random.default_rng(1234)
NEG_MEAN = RNG.uniform(-16.0, -8.0, FEAT_DIM).astype(np.float32)
INV_STDDEV = RNG.uniform(0.1, 0.5, FEAT_DIM).astype(np.float32)


def make_config(**kw):
    return FrontendConfig(neg_mean=NEG_MEAN.copy(), inv_stddev=INV_STDDEV.copy(), **kw)


@pytest.fixture(scope="module")
def frontend():
    return Frontend(make_config())


def num_fbank_frames(n):
    return 1 + (max(n, MIN_SAMPLES) - FRAME_LEN) // FRAME_SHIFT


def samples_for_frames(t, extra=0):
    """A sample count giving exactly t fbank frames (extra < 160 more samples do not add one)."""
    return FRAME_LEN + (t - 1) * FRAME_SHIFT + extra


def noise(n, seed=0, amp=3000.0):
    return (np.random.default_rng(seed).standard_normal(n) * amp).astype(np.float32)


def sine(n, freq, amp=8000.0, phase=0.3):
    t = np.arange(n) / SAMPLE_RATE
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def speechlike(n, seed=0):
    """A few harmonics plus noise, on the int16 scale."""
    rng = np.random.default_rng(seed)
    x = sum(sine(n, f, amp=a) for f, a in ((180, 6000), (360, 3000), (1250, 1500), (3100, 800)))
    return (x + rng.standard_normal(n) * 200).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Sanity of the reference itself (so a shared mistake cannot hide)
# ---------------------------------------------------------------------------------------------

def test_reference_mel_banks_shape_and_coverage():
    assert MEL_BANKS.shape == (80, 256)
    assert np.all(MEL_BANKS >= 0) and np.all(MEL_BANKS <= 1)
    assert np.all(MEL_BANKS.sum(axis=1) > 0)  # every bin has at least one FFT bin (no empty banks)
    assert np.all(MEL_BANKS[:, 0] == 0)  # DC sits below 20 Hz
    # bins spanning 20 Hz .. 8 kHz: the last bank reaches the top FFT bins
    assert MEL_BANKS[-1, 255] > 0


def test_reference_lfr_example():
    x = np.arange(8, dtype=np.float64)[:, None]  # T=8 frames of width 1
    out = reference_lfr(x)
    assert out.shape == (2, 7)
    np.testing.assert_array_equal(out[0], [0, 0, 0, 0, 1, 2, 3])
    np.testing.assert_array_equal(out[1], [3, 4, 5, 6, 7, 7, 7])


# ---------------------------------------------------------------------------------------------
# fbank
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["noise", "sine440", "sine3999", "speechlike"])
@pytest.mark.parametrize("t", [1, 2, 6, 7, 12, 23])
def test_fbank_matches_kaldi_definition(frontend, kind, t):
    n = samples_for_frames(t, extra=t * 17 % FRAME_SHIFT)
    x = {"noise": lambda: noise(n, seed=t),
         "sine440": lambda: sine(n, 440.0),
         "sine3999": lambda: sine(n, 3999.0, amp=12000.0),
         "speechlike": lambda: speechlike(n, seed=t)}[kind]()
    got = frontend.fbank(x)
    want = reference_fbank(x)
    assert got.dtype == np.float32
    assert got.shape == (t, MEL_BINS) == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=LOG_ATOL)


def test_fbank_frame_count_is_snip_edges(frontend):
    for n in (400, 401, 559, 560, 561, 16000, 16001):
        assert frontend.fbank(noise(n)).shape == (1 + (n - 400) // 160, MEL_BINS)


def test_fbank_all_zero_signal_is_log_epsilon(frontend):
    got = frontend.fbank(np.zeros(1600, np.float32))
    np.testing.assert_allclose(got, np.full((num_fbank_frames(1600), MEL_BINS), np.log(FLT_EPSILON)), atol=1e-5)


def test_fbank_removes_dc_offset(frontend):
    x = noise(4000, seed=7)
    np.testing.assert_allclose(frontend.fbank(x + 5000.0), frontend.fbank(x), atol=2e-3)


def test_fbank_is_deterministic_dither_zero(frontend):
    x = noise(8000, seed=3)
    np.testing.assert_array_equal(frontend.fbank(x), frontend.fbank(x))


def test_fbank_accepts_int16_and_does_not_modify_input(frontend):
    x16 = (noise(3000, seed=5, amp=2000)).astype(np.int16)
    keep = x16.copy()
    np.testing.assert_allclose(frontend.fbank(x16), reference_fbank(x16), atol=LOG_ATOL)
    np.testing.assert_array_equal(x16, keep)
    xf = noise(3000, seed=5)
    keepf = xf.copy()
    frontend.features(xf)
    np.testing.assert_array_equal(xf, keepf)


# ---------------------------------------------------------------------------------------------
# Very short audio: the Frontend zero-pads to one 25 ms frame (400 samples) at the end
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 100, 399])
def test_short_audio_is_zero_padded_to_one_frame(frontend, n):
    """Asserted: audio under 400 samples gives exactly one fbank frame, equal to the Kaldi fbank of the
    samples followed by zeros up to 400, and one LFR frame (7 copies of that fbank frame, after CMVN)."""
    x = noise(n, seed=n)
    padded = np.concatenate([x.astype(np.float64), np.zeros(MIN_SAMPLES - n)])
    fb = frontend.fbank(x)
    assert fb.shape == (1, MEL_BINS)
    want = reference_fbank(padded)
    np.testing.assert_allclose(fb, want, atol=LOG_ATOL)
    feats = frontend.features(x)
    assert feats.shape == (1, FEAT_DIM) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, reference_cmvn(np.tile(fb[0], 7), NEG_MEAN, INV_STDDEV)[None], rtol=1e-6,
                               atol=1e-5)


def test_exactly_400_samples_is_not_padded(frontend):
    x = noise(400, seed=9)
    np.testing.assert_allclose(frontend.fbank(x), reference_fbank(x), atol=LOG_ATOL)


# ---------------------------------------------------------------------------------------------
# LFR + CMVN
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", list(range(1, 31)))
def test_lfr_cmvn_matches_funasr_loop(frontend, t):
    fb = np.random.default_rng(t).normal(-5, 3, (t, MEL_BINS)).astype(np.float32)
    keep = fb.copy()
    got = frontend.lfr_cmvn(fb)
    want = reference_cmvn(reference_lfr(fb.astype(np.float64)), NEG_MEAN.astype(np.float64),
                          INV_STDDEV.astype(np.float64))
    assert got.shape == (math.ceil(t / 6), FEAT_DIM) == want.shape
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fb, keep)  # the fbank passed in is not modified


@pytest.mark.parametrize("rem", range(6))
@pytest.mark.parametrize("kind", ["noise", "speechlike"])
def test_features_whole_chain(frontend, rem, kind):
    t = 18 + rem  # T % 6 == rem (T % 6 == 0 for rem 0)
    n = samples_for_frames(t, extra=50)
    x = noise(n, seed=rem) if kind == "noise" else speechlike(n, seed=rem)
    got = frontend.features(x)
    want = reference_features(x, NEG_MEAN.astype(np.float64), INV_STDDEV.astype(np.float64))
    assert got.dtype == np.float32
    assert got.shape == (math.ceil(t / 6), FEAT_DIM) == want.shape
    # CMVN multiplies log-energy errors by inv_stddev (< 0.5 here)
    np.testing.assert_allclose(got, want, rtol=0, atol=LOG_ATOL)


def test_features_one_second_sine(frontend):
    x = sine(16000, 1000.0)
    got = frontend.features(x)
    assert got.shape == (math.ceil(98 / 6), FEAT_DIM)
    np.testing.assert_allclose(got, reference_features(x, NEG_MEAN, INV_STDDEV), atol=LOG_ATOL)


def test_features_uses_the_configured_cmvn():
    nm = np.random.default_rng(11).normal(size=FEAT_DIM).astype(np.float32)
    inv = np.random.default_rng(12).uniform(0.5, 2.0, FEAT_DIM).astype(np.float32)
    fe = Frontend(FrontendConfig(neg_mean=nm, inv_stddev=inv))
    x = noise(samples_for_frames(13), seed=13)
    np.testing.assert_allclose(fe.features(x), reference_features(x, nm, inv), atol=2 * 2.0 * LOG_ATOL)
    identity = Frontend(FrontendConfig(neg_mean=np.zeros(FEAT_DIM), inv_stddev=np.ones(FEAT_DIM)))
    out = identity.features(x)
    assert out.dtype == np.float32  # float64 CMVN vectors must not promote the output
    np.testing.assert_allclose(out, reference_lfr(reference_fbank(x)), atol=LOG_ATOL)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=0, max_value=6000), seed=st.integers(0, 2**32 - 1),
       amp=st.sampled_from([300.0, 3000.0, 20000.0]))
def test_features_random_lengths(frontend, n, seed, amp):
    x = noise(n, seed=seed, amp=amp)
    got = frontend.features(x)
    t = num_fbank_frames(n)
    assert got.shape == (math.ceil(t / 6), FEAT_DIM)
    assert got.dtype == np.float32
    assert np.all(np.isfinite(got))
    want = reference_features(x, NEG_MEAN.astype(np.float64), INV_STDDEV.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=0, atol=LOG_ATOL)


# ---------------------------------------------------------------------------------------------
# normalize_samples and config
# ---------------------------------------------------------------------------------------------

def test_normalize_samples_scales_by_1_over_32768():
    fe = Frontend(make_config(normalize_samples=True))
    x = speechlike(samples_for_frames(15), seed=2) * 2  # a loud signal: scaled power stays far above epsilon
    got = fe.fbank(x)
    want = reference_fbank(x.astype(np.float64) / 32768.0)
    np.testing.assert_allclose(got, want, atol=LOG_ATOL)
    # scaling amplitude by 1/32768 lowers every log power by 2 ln 32768
    unscaled = Frontend(make_config()).fbank(x)
    np.testing.assert_allclose(unscaled - got, 2 * np.log(32768.0), atol=2e-3)
    feats = fe.features(x)
    assert feats.dtype == np.float32
    np.testing.assert_allclose(feats, reference_features(x, NEG_MEAN, INV_STDDEV, scale=1 / 32768.0),
                               atol=LOG_ATOL)


def test_config_properties():
    cfg = make_config()
    assert cfg.feature_dim == 560
    assert cfg.seconds_per_frame == pytest.approx(0.06)
    assert cfg.normalize_samples is False
    assert (cfg.lfr_m, cfg.lfr_n, cfg.mel_bins, cfg.window) == (7, 6, 80, "hamming")
