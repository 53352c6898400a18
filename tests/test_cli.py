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
    assert errors[0].startswith(f"error: {bad}: not an audio format stt-agent reads (the file starts with b'not '); "
                                "formats read: WAV")
    assert errors[0].endswith(f"; convert others with: ffmpeg -i {bad} -ar 16000 -ac 1 bad.16k.wav")
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


def our_lines(stderr: str) -> list[str]:
    """stderr without ONNX Runtime's cpuinfo complaints: where its cpuinfo cannot read the CPU topology
    from sysfs (an arm64 root under qemu-user has no /sys: scripts/test_arm64_qemu.sh), importing
    onnxruntime prints 9 such lines ("Error in cpuinfo: ...", "onnxruntime cpuid_info warning: ...",
    "onnxruntime warning: cpuinfo_initialize failed ..."). They are the runtime's, not the agent's."""
    return [line for line in stderr.strip().splitlines()
            if not line.startswith("Error in cpuinfo:")
            and not (line.startswith("onnxruntime") and ("cpuinfo" in line or "cpuid_info" in line))]


def test_missing_model_exits_66_with_one_line(wavs, tmp_path):
    proc = run("transcribe", str(wavs[0]), "--model", str(tmp_path / "none"))
    assert proc.returncode == 66
    assert len(our_lines(proc.stderr)) == 1 and "does not exist" in proc.stderr


def test_missing_model_is_the_only_error_even_with_bad_files(wavs, tmp_path):
    proc = run("transcribe", str(wavs[2]), str(wavs[0]), "--model", str(tmp_path / "none"), "--json")
    assert proc.returncode == 66
    assert proc.stdout == ""
    assert len(our_lines(proc.stderr)) == 1 and "does not exist" in proc.stderr


def test_our_lines_drops_only_the_cpuinfo_complaints():
    seen_under_qemu = (  # verbatim from the arm64 run, with the agent's line last
        "Error in cpuinfo: failed to parse the list of possible processors in /sys/devices/system/cpu/possible\n"
        "Error in cpuinfo: failed to parse both lists of possible and present processors\n"
        "onnxruntime cpuid_info warning: Failed to initialize PyTorch cpuinfo library. May cause CPU EP "
        "performance degradation due to undetected CPU features.\n"
        "onnxruntime cpuid_info warning: Unknown CPU vendor. cpuinfo_vendor value: 0\n"
        "onnxruntime warning: cpuinfo_initialize failed. May cause CPU EP performance degradation due to "
        "undetected CPU features.\n"
        "error: model directory /x/none does not exist\n")
    assert our_lines(seen_under_qemu) == ["error: model directory /x/none does not exist"]
    assert our_lines("error: one\nerror: two\n") == ["error: one", "error: two"]


def test_bad_flag_value_exits_2_naming_the_flag_and_the_key(wavs, model):
    proc = run("transcribe", str(wavs[0]), "--model", str(model), "--threads", "0")
    assert proc.returncode == 2
    assert our_lines(proc.stderr) == ["error: --threads (recognizer.cpu.threads): 0 is out of range (allowed: from 1 "
                                      "to 64)"]


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


def _encoded(tmp_path, wav, container, subtype=None):
    """`wav` written again by libsndfile in another container or encoding."""
    import soundfile

    samples, rate = soundfile.read(wav, dtype="int16")
    path = tmp_path / f"{wav.stem}-{subtype or container}.{container.lower()}"
    soundfile.write(path, samples, rate, format=container, subtype=subtype)
    return path


ENCODINGS = [("FLAC", None), ("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", None), ("WAV", "ULAW"), ("WAV", "ALAW")]


@pytest.mark.parametrize("container,subtype", ENCODINGS, ids=[s or c for c, s in ENCODINGS])
def test_transcribe_reads_other_formats(model, wavs, tmp_path, container, subtype):
    import soundfile

    if container not in soundfile.available_formats():  # MP3 needs libsndfile >= 1.1
        pytest.skip(f"this libsndfile {soundfile.__libsndfile_version__} writes no {container}")
    path = _encoded(tmp_path, wavs[1], container, subtype)  # 48 kHz stereo
    proc = run("transcribe", str(path), "--model", str(model), "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    # the tiny model's text follows the length: Opus and MP3 frames round it up a little
    assert record["file"] == str(path) and record["text"].startswith(f"{tm.PATTERN_TEXT} {tm.PATTERN_TEXT}")


def _stdin_run(data: bytes, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("STT_AGENT_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "agent", "transcribe", *args], input=data, capture_output=True,
                          cwd=ROOT, env=env, timeout=120)


@pytest.mark.parametrize("container", ["WAV", "FLAC"])
def test_transcribe_reads_a_file_piped_to_stdin(model, wavs, tmp_path, container):
    path = wavs[0] if container == "WAV" else _encoded(tmp_path, wavs[0], container)
    proc = _stdin_run(path.read_bytes(), "-", "--model", str(model), "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["file"] == "-" and record["text"] == tm.PATTERN_TEXT


def test_stdin_errors_are_one_line_and_exit_66(model, tmp_path):
    proc = _stdin_run(b"", "-", "--model", str(model))
    assert proc.returncode == 66 and our_lines(proc.stderr.decode()) == [
        "error: stdin: nothing was piped in (e.g. `stt-agent transcribe - < talk.flac`)"]
    proc = _stdin_run(b"hello, not audio", "-", "--model", str(model))
    assert proc.returncode == 66
    (line,) = our_lines(proc.stderr.decode())
    assert line.startswith("error: stdin: not an audio format stt-agent reads") and line.endswith(
        "convert others with: ffmpeg -i IN -ar 16000 -ac 1 -f wav - | stt-agent transcribe -")
    assert _stdin_run(b"", "-", "-", "--model", str(model)).returncode == 2


def test_exit_code_is_the_failures_own_when_every_file_fails(model, wavs, tmp_path):
    good, _, bad = wavs
    missing = tmp_path / "missing.wav"
    proc = run("transcribe", str(missing), "--model", str(model))
    assert proc.returncode == 66 and our_lines(proc.stderr) == [f"error: {missing}: no such file"]
    proc = run("transcribe", str(missing), str(bad), "--model", str(model))
    assert proc.returncode == 66 and our_lines(proc.stderr)[-1] == "error: 2 of 2 files failed"
    assert run("transcribe", str(missing), str(good), "--model", str(model)).returncode == 1


def test_an_output_that_cannot_be_written_fails_that_file_only(model, wavs, tmp_path):
    good, other, _ = wavs
    out = tmp_path / "out"
    (out / "a.srt").mkdir(parents=True)  # where a.wav's subtitles would go
    proc = run("transcribe", str(good), str(other), "--model", str(model), "--format", "srt",
               "--output-dir", str(out))
    assert proc.returncode == 1
    assert our_lines(proc.stderr)[0].startswith(f"error: {out / 'a.srt'}: cannot write: ")
    assert (out / "b.srt").is_file() and "Traceback" not in proc.stderr
    assert run("transcribe", str(good), "--model", str(model), "--format", "srt",
               "--output-dir", str(out)).returncode == 1  # its only file failed, by its own code


def test_two_inputs_for_one_output_file_is_a_usage_error(model, wavs, tmp_path):
    flac = _encoded(tmp_path, wavs[0], "FLAC")
    same = flac.with_name("a.flac")
    flac.rename(same)
    proc = run("transcribe", str(wavs[0]), str(same), "--model", str(model), "--format", "txt",
               "--output-dir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {wavs[0]} and {same} would both be written to {tmp_path / 'a.txt'}"


def test_stdin_from_a_terminal_is_refused_at_once(model):
    import pty

    primary, secondary = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("STT_AGENT_CONFIG", None)
    try:
        proc = subprocess.run([sys.executable, "-m", "agent", "transcribe", "-", "--model", str(model)],
                              stdin=secondary, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    finally:
        os.close(primary)
        os.close(secondary)
    assert proc.returncode == 66
    assert our_lines(proc.stderr) == ["error: stdin: standard input is a terminal, not audio: pipe a file in "
                                      "(e.g. `stt-agent transcribe - < talk.flac`)"]
