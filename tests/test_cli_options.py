"""The command line as a new user meets it: -v/-q anywhere, help that names every command and input,
--model given a model file, check-config reading the files a config names, and audio with no samples."""

from __future__ import annotations

import json
import os
import subprocess

import jsonschema
import numpy as np
import pytest

import tiny_models as tm
from helpers import ROOT, run, write_wav


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    """Half a second of silence, a second of loud noise (speech to the energy VAD), two seconds of silence."""
    rng = np.random.default_rng(0)
    samples = np.concatenate([np.zeros(8000), rng.standard_normal(16000) * 6000, np.zeros(32000)])
    return write_wav(tmp_path_factory.mktemp("wav") / "speech.wav", samples)


def _run_file(model, wav, *flags, before=()):
    return run(*before, "run", "--input", str(wav), "--fast", "--model", str(model), "--vad", "energy", *flags)


@pytest.mark.parametrize("before, after", [((), ("-v",)), (("-v",), ()), ((), ("--verbose",))])
def test_verbose_before_or_after_the_command(model, speech_wav, before, after):
    proc = _run_file(model, speech_wav, *after, before=before)
    assert proc.returncode == 0, proc.stderr
    assert "DEBUG agent.listening.segmenter: utterance 1 starts" in proc.stderr


@pytest.mark.parametrize("before, after", [((), ("-q",)), (("-q",), ()), ((), ("--quiet",))])
def test_quiet_is_warnings_only(model, speech_wav, before, after):
    proc = _run_file(model, speech_wav, *after, before=before)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["type"] for line in proc.stdout.splitlines()][0] == "speech_start"  # events stay
    assert not [line for line in proc.stderr.splitlines() if line.startswith(("INFO ", "DEBUG "))], proc.stderr


def test_default_logging_is_info(model, speech_wav):
    proc = _run_file(model, speech_wav)
    assert "INFO agent.app: configuration" in proc.stderr and "DEBUG " not in proc.stderr


def test_verbose_and_quiet_together_is_usage():
    proc = run("-v", "run", "-q")
    assert proc.returncode == 2 and "-v and -q: give one of them" in proc.stderr


def test_top_level_help_names_every_command():
    from agent.cli import build_parser

    proc = run("--help")
    assert proc.returncode == 0
    parser = build_parser(["--help"])
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == {"run", "serve", "transcribe", "check-config", "health", "model"}
    description = parser.description
    for name in commands:
        assert f"{name} (" in description or f"{name}," in description, name
        assert name in proc.stdout
    assert "exit codes: 0 ok" in proc.stdout and "69" in proc.stdout


def test_run_help_describes_the_command_and_every_input():
    proc = run("run", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "Listen to one audio source" in text
    for source in ("mic", "a WAV file", "a named pipe (FIFO)", "- for stdin", "raw s16le 16 kHz mono PCM",
                   "a WAV stream"):
        assert source in text, source
    assert "-q, --quiet" in text and "-v, --verbose" in text


def test_healthcheck_help_is_the_header_and_nothing_else():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "healthcheck.sh"), "--help"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0] == "Is stt-agent healthy? Prints one line saying why or why not, and exits:"
    assert lines[-1] == "Reading another unit's journal needs root or the systemd-journal/adm group."
    assert not [line for line in lines if line.startswith(("set ", "#"))], proc.stdout


def test_model_given_as_its_onnx_file(model, speech_wav, tmp_path):
    """sherpa-onnx's tools take the model file; every command with --model takes it too."""
    wav = str(speech_wav)
    direct = run("transcribe", wav, "--model", str(model / "model.int8.onnx"), "--json")
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout) | {"decode_ms": 0} == \
        json.loads(run("transcribe", wav, "--model", str(model), "--json").stdout) | {"decode_ms": 0}
    live = _run_file(model / "model.int8.onnx", speech_wav, "-q")
    assert live.returncode == 0 and "final" in live.stdout, live.stderr
    cache = tmp_path / "cache"
    optimized = run("model", "optimize", "--model", str(model / "model.int8.onnx"),
                    env={"STT_AGENT_RECOGNIZER__CPU__OPTIMIZED_CACHE_DIR": str(cache)})
    assert optimized.returncode == 0, optimized.stderr
    assert "optimized copy of" in optimized.stderr and str(model / "model.int8.onnx") in optimized.stderr


def test_model_file_that_is_missing_or_not_a_model(model, speech_wav):
    missing = run("transcribe", str(speech_wav), "--model", str(model / "model.fp16.onnx"))
    assert missing.returncode == 66
    assert f"error: model file {model / 'model.fp16.onnx'} does not exist" in missing.stderr
    tokens = run("transcribe", str(speech_wav), "--model", str(model / "tokens.txt"))
    assert tokens.returncode == 66
    assert f"{model / 'tokens.txt'} is a file, not a model directory or its .onnx model file" in tokens.stderr


def test_check_config_reads_the_tokens_file_serve_would_refuse(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("kiosk-1 short-token\n", encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text(f"server:\n  tokens_file: {tokens}\n", encoding="utf-8")
    proc = run("check-config", "--config", str(config))
    assert proc.returncode == 78
    assert proc.stderr.strip() == (f"error: server.tokens_file: {tokens} (line 1): a token of 11 characters is too "
                                   "easy to guess (at least 16; e.g. openssl rand -hex 16)")
    tokens.write_text("kiosk-1 0123456789abcdef0123\n", encoding="utf-8")
    assert run("check-config", "--config", str(config)).returncode == 0
    tokens.unlink()
    assert "cannot read" in run("check-config", "--config", str(config)).stderr


def test_check_config_reads_the_password_file_and_warns_if_everyone_can(tmp_path):
    password = tmp_path / "mqtt.pass"
    password.write_text("", encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text(f"mqtt:\n  enabled: true\n  username: agent\n  password_file: {password}\n", encoding="utf-8")
    empty = run("check-config", "--config", str(config))
    assert empty.returncode == 78 and "is empty" in empty.stderr
    password.write_text("secret\n", encoding="utf-8")
    os.chmod(password, 0o644)
    proc = run("check-config", "--config", str(config))
    assert proc.returncode == 0
    assert f"chmod 600 {password}" in proc.stderr and "secret" not in proc.stderr
    os.chmod(password, 0o600)
    assert run("check-config", "--config", str(config)).stderr == ""


def test_a_wav_of_no_samples_says_nothing_was_heard(model, tmp_path):
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0))
    proc = run("transcribe", str(empty), "--model", str(model), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["text"] == "" and result["tokens"] == [] and result["duration"] == 0
    assert (result["language"], result["emotion"], result["event"]) == ("nospeech", "emo_unknown", "event_unk")
    assert (result["language_scores"], result["emotion_scores"], result["event_scores"]) == (
        {"nospeech": 1.0}, {"emo_unknown": 1.0}, {"event_unk": 1.0})


def test_no_samples_in_a_batch_leave_the_others_alone(model):
    from agent.recognizer import load_recognizer
    from agent.recognizer.settings import RecognizerSettings

    recognizer = load_recognizer(RecognizerSettings(model_dir=str(model), warmup=False))
    audio = np.random.default_rng(1).integers(-3000, 3000, tm.ONE_PATTERN_SAMPLES).astype(np.float32)
    alone = recognizer.recognize(audio, offset=2.0)
    batch = recognizer.recognize_batch([np.zeros(0, np.float32), audio], offsets=[1.0, 2.0])
    assert batch[0].text == "" and batch[0].language == "nospeech" and batch[0].confidence == 1.0
    assert batch[1] == alone and batch[1].text == tm.PATTERN_TEXT
    mapped = recognizer.recognize(np.zeros(0, np.float32), recognizer.options(emotion_map={"emo_unknown": "calm"}))
    assert mapped.emotion == "calm" and mapped.emotion_scores == {"calm": 1.0}


def test_the_final_of_no_samples_keeps_the_schema(model):
    """The same result as a live final: it validates against the final's published schema."""
    from agent.events import Final, Stamped
    from agent.recognizer import load_recognizer
    from agent.recognizer.settings import RecognizerSettings
    from agent.wire import body

    recognizer = load_recognizer(RecognizerSettings(model_dir=str(model), warmup=False))
    result = recognizer.recognize(np.zeros(0, np.float32))
    final = Final(1, result, audio_start=0.0, audio_end=0.0, audio_start_wall=None, audio_end_wall=None,
                  queue_ms=0.0, decode_ms=0.1, endpoint_delay_ms=None, speculative=False)
    schema = json.loads((ROOT / "docs" / "schemas" / "final.json").read_text(encoding="utf-8"))
    jsonschema.validate(body(Stamped("kiosk", "0123abcd", 1, 1795471272.27, final)), schema)
