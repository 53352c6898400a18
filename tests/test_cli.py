"""The real CLI in a subprocess: transcribe WAV files, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tiny_models as tm

from helpers import ROOT, run, write_wav


@pytest.fixture
def wavs(tmp_path):
    rng = np.random.default_rng(1)
    good = write_wav(tmp_path / "a.wav", rng.integers(-3000, 3000, tm.ONE_PATTERN_SAMPLES))
    # 48 kHz stereo, twice the pattern length once resampled to 16 kHz mono.
    stereo = rng.integers(-3000, 3000, (22480 * 3, 2))
    other = write_wav(tmp_path / "b.wav", stereo, rate=48000, channels=2)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav at all")
    return good, other, bad


def test_transcribe_json_one_line_per_file(model, wavs):
    good, other, _ = wavs
    proc = run("transcribe", str(good), str(other), "--model", str(model), "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["file"] for r in lines] == [str(good), str(other)]
    first = lines[0]
    assert first["text"] == tm.PATTERN_TEXT
    assert lines[1]["text"] == f"{tm.PATTERN_TEXT} {tm.PATTERN_TEXT}"
    for key in ("language", "language_scores", "emotion", "emotion_scores", "event", "event_scores",
                "confidence", "tokens", "duration", "decode_ms"):
        assert key in first, key
    assert first["language"] == "en" and first["emotion"] == "happy" and first["event"] == "speech"
    assert first["tokens"][0] == {"text": " hello", "start": 0.06, "end": 0.18, "prob": round(tm.text_prob(4.0), 4)}
    assert first["decode_ms"] > 0


def test_a_bad_file_does_not_stop_the_batch(model, wavs, tmp_path):
    good, other, bad = wavs
    missing = tmp_path / "missing.wav"
    proc = run("transcribe", str(bad), str(good), str(missing), str(other), "--model", str(model), "--json")
    assert proc.returncode == 1
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [("error" in r) for r in records] == [True, False, True, False]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors[0] == f"error: {bad}: not a RIFF/WAVE file (starts with b'not ')"
    assert errors[1] == f"error: {missing}: no such file"
    assert errors[-1] == "error: 2 of 4 files failed"
    assert "Traceback" not in proc.stderr


def test_text_output_with_tokens(model, wavs):
    proc = run("transcribe", str(wavs[0]), "--model", str(model), "--tokens", "--language", "ja")
    assert proc.returncode == 0, proc.stderr
    head, *tokens = proc.stdout.splitlines()
    assert head.startswith(f"{wavs[0]}: [ja happy speech") and head.endswith(tm.PATTERN_TEXT)
    assert tokens[0].split() == ["0.06", "0.18", f"{tm.text_prob(4.0):.2f}", "hello"]


def test_a_reader_that_goes_away_is_no_internal_error(model, wavs):
    """`stt-agent transcribe *.wav | head -1`: stdout closes under the CLI."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first result is printed
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("STT_AGENT_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "agent", "transcribe", str(wavs[0]), "--model", str(model)],
                          stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, timeout=120)
    os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr and "Exception" not in proc.stderr


def test_missing_model_exits_66_with_one_line(wavs, tmp_path):
    proc = run("transcribe", str(wavs[0]), "--model", str(tmp_path / "none"))
    assert proc.returncode == 66
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def test_missing_model_is_the_only_error_even_with_bad_files(wavs, tmp_path):
    proc = run("transcribe", str(wavs[2]), str(wavs[0]), "--model", str(tmp_path / "none"), "--json")
    assert proc.returncode == 66
    assert proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def test_bad_flag_value_exits_78_naming_the_key(wavs, model):
    proc = run("transcribe", str(wavs[0]), "--model", str(model), "--threads", "0")
    assert proc.returncode == 78
    assert "recognizer.cpu.threads" in proc.stderr and "out of range" in proc.stderr


def test_config_file_is_used_and_flags_override_it(wavs, model, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"recognizer:\n  model_dir: {model}\n  language: ko\n", encoding="utf-8")
    assert json.loads(run("transcribe", str(wavs[0]), "--config", str(config), "--json").stdout)["language"] == "ko"
    proc = run("transcribe", str(wavs[0]), "--config", str(config), "--json", "--language", "zh")
    assert json.loads(proc.stdout)["language"] == "zh"


def test_check_config(tmp_path):
    assert run("check-config", "--config", str(ROOT / "config.yaml")).returncode == 0
    broken = tmp_path / "broken.yaml"
    broken.write_text("recognizer:\n  providers: [gpu]\n  cpu:\n    thread: 2\n", encoding="utf-8")
    proc = run("check-config", "--config", str(broken))
    assert proc.returncode == 78
    assert "recognizer.providers (line 2): 'gpu' is not one of: tensorrt, cuda, cpu" in proc.stderr
    assert "recognizer.cpu.thread (line 4): unknown key" in proc.stderr


def test_usage_error_exits_2():
    assert run("transcribe").returncode == 2


def test_every_command_finds_the_config_by_one_rule(wavs, model, tmp_path):
    """--config, then $STT_AGENT_CONFIG, then ./config.yaml: check-config and transcribe agree."""
    (tmp_path / "config.yaml").write_text(f"recognizer:\n  model_dir: {model}\n  language: ko\n", encoding="utf-8")
    other = tmp_path / "other.yaml"
    other.write_text(f"recognizer:\n  model_dir: {model}\n  language: zh\n", encoding="utf-8")
    assert run("check-config", cwd=tmp_path).stdout.strip() == "config.yaml: OK"
    assert json.loads(run("transcribe", str(wavs[0]), "--json", cwd=tmp_path).stdout)["language"] == "ko"
    env = {"STT_AGENT_CONFIG": str(other)}
    assert run("check-config", cwd=tmp_path, env=env).stdout.strip() == f"{other}: OK"
    assert json.loads(run("transcribe", str(wavs[0]), "--json", cwd=tmp_path, env=env).stdout)["language"] == "zh"


@pytest.mark.skipif(Path("/etc/stt-agent/config.yaml").exists(), reason="this machine has a system-wide config")
def test_check_config_without_any_config_file_says_where_it_looked(tmp_path):
    proc = run("check-config", cwd=tmp_path)
    assert proc.returncode == 78
    assert proc.stderr.strip() == ("error: no config file: give --config PATH or set STT_AGENT_CONFIG "
                                   "(looked for config.yaml and /etc/stt-agent/config.yaml)")


def test_a_float_wav_with_nan_samples_is_refused_and_the_batch_goes_on(model, wavs, tmp_path):
    import struct

    data = np.array([0.1, np.nan, 0.2, np.inf] * 4000, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
    nan_wav = tmp_path / "nan.wav"
    nan_wav.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
                        + b"data" + struct.pack("<I", len(data)) + data)
    proc = run("transcribe", str(nan_wav), str(wavs[0]), "--model", str(model), "--json")
    assert proc.returncode == 1
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records[0]["error"] == f"{nan_wav}: 8000 of 16000 float samples are NaN or infinite (a corrupt file)"
    assert records[1]["text"] == tm.PATTERN_TEXT
    assert "Traceback" not in proc.stderr
