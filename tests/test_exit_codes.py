"""Every row of README's exit-code table, produced by the real CLI in a subprocess.

The table is read from README.md itself: a row without a case here fails, and so does a case whose
command exits with another code than its row says. Missing system parts (the PortAudio library) are
made missing for the subprocess only, by a module of the same name ahead of it on its path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tiny_models as tm
from helpers import ROOT, run, write_wav
from http_fixture import FakeHub


def readme_exit_codes() -> list[int]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    return [int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)]


def our_lines(stderr: str) -> list[str]:
    """stderr without ONNX Runtime's cpuinfo complaints on hosts without /sys (tests/test_cli.py says why)."""
    return [line for line in stderr.strip().splitlines()
            if not line.startswith("Error in cpuinfo:")
            and not (line.startswith("onnxruntime") and ("cpuinfo" in line or "cpuid_info" in line))]


def without_module(tmp_path: Path, module: str, body: str) -> dict:
    """An environment whose Python finds `module` as a file raising what `body` raises on import."""
    shadow = tmp_path / "shadow"
    shadow.mkdir(exist_ok=True)
    (shadow / f"{module}.py").write_text(body, encoding="utf-8")
    return {"PYTHONPATH": f"{shadow}{os.pathsep}{ROOT}"}


# sounddevice's own words when the library is missing (sounddevice.py: raise OSError('PortAudio library not found')).
NO_PORTAUDIO = "raise OSError('PortAudio library not found')\n"


def health_record(path: Path, state: str = "running", age: float = 0.0) -> Path:
    path.write_text(json.dumps({"state": state, "updated": time.time() - age, "period_s": 5.0, "status": ""}),
                    encoding="utf-8")
    return path


# --- one function per case: (what it ran, the CompletedProcess) ---------------------------------
def ok_check_config(tmp_path):
    return run("check-config", "--config", str(ROOT / "config.yaml"))


def failed_health_of_a_stale_agent(tmp_path):
    return run("health", "--file", str(health_record(tmp_path / "health.json", age=600)))


def failed_transcribe_batch_with_a_bad_file(tmp_path):
    good = write_wav(tmp_path / "a.wav", np.random.default_rng(1).integers(-3000, 3000, tm.ONE_PATTERN_SAMPLES))
    (tmp_path / "bad.wav").write_bytes(b"not a wav at all")
    return run("transcribe", str(good), str(tmp_path / "bad.wav"), "--model", str(tm.write_sherpa(tmp_path / "m")))


def usage_language_value(tmp_path):
    return run("run", "--input", "-", "--language", "fr")


def usage_threads_value(tmp_path):
    return run("run", "--input", "-", "--threads", "0")


def usage_port_value(tmp_path):
    return run("serve", "--port", "0")


def usage_unknown_model_name(tmp_path):
    return run("model", "fetch", "no-such-model", "--models-dir", str(tmp_path / "models"))


def noinput_missing_model(tmp_path):
    return run("run", "-q", "--input", "-", "--model", str(tmp_path / "none"))


def noinput_download_that_does_not_verify(tmp_path):
    hub = FakeHub()
    repo, rev = "org/m", "0" * 40
    hub.add_repo(repo, rev, {"tokens.txt": b"a 0\n"})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"schema": 1, "default": "m", "models": {"m": {
        "description": "test", "flavour": "sherpa-onnx", "precision": "int8", "files": [{
            "name": "tokens.txt", "url": f"{{hf_endpoint}}/{repo}/resolve/{rev}/tokens.txt", "size": 4,
            "sha256": hashlib.sha256(b"b 0\n").hexdigest(), "source": "test"}]}}}), encoding="utf-8")
    hub.start()
    try:
        return run("model", "fetch", "m", "--models-dir", str(tmp_path / "models"), "--manifest", str(manifest),
                   env={"STT_AGENT_HF_ENDPOINT": hub.url})
    finally:
        hub.stop()


def unavailable_portaudio_library(tmp_path):
    return run("run", "--input", "mic", env=without_module(tmp_path, "sounddevice", NO_PORTAUDIO))


def unavailable_sounddevice_package(tmp_path):
    (tmp_path / "shadow").mkdir()
    (tmp_path / "shadow" / "sitecustomize.py").write_text("import sys\nsys.modules['sounddevice'] = None\n")
    return run("run", env={"PYTHONPATH": f"{tmp_path / 'shadow'}{os.pathsep}{ROOT}"})


def software_error_nobody_expects(tmp_path):
    """A dependency failing in a way the agent does not handle is a bug of ours: 70, with the traceback."""
    return run("run", "--input", "mic", env=without_module(tmp_path, "sounddevice", "1 / 0\n"))


def config_invalid(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("recognizer:\n  providers: [gpu]\n", encoding="utf-8")
    return run("check-config", "--config", str(broken))


def interrupted_by_ctrl_c(tmp_path):
    """health reading a FIFO nobody writes: blocked in read() until SIGINT."""
    fifo = tmp_path / "health.fifo"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "health", "--file", str(fifo)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Opening the write end without blocking succeeds only once the reader has the FIFO open, which is
    # after Python installed its SIGINT handler; held open, it leaves the reader waiting in read().
    deadline = time.monotonic() + 60
    while True:
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "health never opened the FIFO"
            time.sleep(0.02)
    try:
        time.sleep(0.2)  # from open() into read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(writer)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def broken_pipe_of_health(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the verdict is printed
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "agent", "health", "--file",
                           str(health_record(tmp_path / "health.json"))],
                          stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, timeout=60)
    os.close(write_end)
    return proc


CASES = {
    0: [ok_check_config],
    1: [failed_health_of_a_stale_agent, failed_transcribe_batch_with_a_bad_file],
    2: [usage_language_value, usage_threads_value, usage_port_value, usage_unknown_model_name],
    66: [noinput_missing_model, noinput_download_that_does_not_verify],
    69: [unavailable_portaudio_library, unavailable_sounddevice_package],
    70: [software_error_nobody_expects],
    78: [config_invalid],
    130: [interrupted_by_ctrl_c],
    141: [broken_pipe_of_health],
}


def test_the_table_lists_every_code_of_agent_errors():
    from agent import errors

    codes = sorted({v for k, v in vars(errors).items() if k.startswith("EXIT_")})
    assert readme_exit_codes() == codes


@pytest.mark.parametrize("code", readme_exit_codes())
def test_every_row_has_a_case(code):
    assert CASES.get(code), f"README's exit code {code} has no case in {__name__}.CASES"


@pytest.mark.parametrize("code, case", [(c, f) for c, fs in CASES.items() for f in fs],
                         ids=lambda v: v.__name__ if callable(v) else str(v))
def test_the_case_exits_with_its_row(code, case, tmp_path):
    assert code in readme_exit_codes()
    proc = case(tmp_path)
    assert proc.returncode == code, proc.stderr
    if code == 70:
        assert "Traceback" in proc.stderr and proc.stderr.rstrip().endswith(
            "error: internal error (a bug in stt-agent; please report it with the traceback above)")
    elif code not in (0, 130):
        assert "Traceback" not in proc.stderr, proc.stderr
    if code in (2, 66, 69, 78):  # bad input: it ends with the line naming the problem
        lines = our_lines(proc.stderr)
        assert lines and lines[-1].startswith(("error: ", "stt-agent ")), proc.stderr


def test_no_portaudio_is_one_line_naming_the_package(tmp_path):
    proc = unavailable_portaudio_library(tmp_path)
    assert proc.returncode == 69
    assert our_lines(proc.stderr) == [
        "error: microphone input (audio.input: mic) needs the PortAudio library, which this system lacks (PortAudio "
        "library not found): sudo apt-get install libportaudio2; files, stdin, named pipes and serve work without it"]
    assert proc.stdout == ""


def test_no_portaudio_fails_before_the_model_loads(tmp_path):
    """The same exit 69 with a model that exists: nothing was loaded first (no model log line)."""
    model = tm.write_sherpa(tmp_path / "m")
    proc = run("run", "--model", str(model), env=without_module(tmp_path, "sounddevice", NO_PORTAUDIO))
    assert proc.returncode == 69 and "loaded" not in proc.stderr and len(our_lines(proc.stderr)) == 1


def test_file_and_stdin_input_need_no_portaudio(tmp_path):
    model = tm.write_sherpa(tmp_path / "m")
    wav = write_wav(tmp_path / "a.wav", np.zeros(8000))
    proc = run("run", "--input", str(wav), "--fast", "--model", str(model), "--vad", "energy", "-q",
               env=without_module(tmp_path, "sounddevice", NO_PORTAUDIO))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("flags, line", [
    (["--language", "fr"], "error: --language (recognizer.language): 'fr' is not one of: auto, zh, en, yue, ja, ko"),
    (["--threads", "0"], "error: --threads (recognizer.cpu.threads): 0 is out of range (allowed: from 1 to 64)"),
    (["--provider", "gpu"], "error: --provider (recognizer.providers): 'gpu' is not one of: tensorrt, cuda, cpu"),
    (["--allowed-languages", "zh,fr"],
     "error: --allowed-languages (recognizer.allowed_languages): 'fr' is not one of: zh, en, yue, ja, ko"),
])
def test_a_bad_flag_value_is_usage_naming_the_flag(flags, line):
    proc = run("run", "--input", "-", *flags)
    assert proc.returncode == 2
    assert our_lines(proc.stderr) == [line]
