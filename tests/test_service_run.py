"""`stt-agent run` under a real NOTIFY_SOCKET: READY after load, WATCHDOG cadence, STATUS, STOPPING."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

import tiny_models as tm
from helpers import ROOT, write_wav


def test_run_speaks_sd_notify(tmp_path):
    model = tm.write_sherpa(tmp_path / "model")
    rng = np.random.default_rng(0)
    wav = write_wav(tmp_path / "a.wav", np.concatenate([np.zeros(8000), rng.standard_normal(16000) * 6000,
                                                         np.zeros(16000 * 6)]))
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--input", str(wav), "--model", str(model),
                             "--vad", "energy"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)
    env["WATCHDOG_PID"] = str(proc.pid)
    messages = []  # (monotonic time, datagram)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            try:
                messages.append((time.monotonic(), sock.recv(4096).decode()))
            except socket.timeout:
                pass
            ready = [t for t, m in messages if "READY=1" in m]
            if ready and time.monotonic() - ready[0] > 3.0:
                break
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None and time.monotonic() < deadline + 10:
            try:
                messages.append((time.monotonic(), sock.recv(4096).decode()))
            except socket.timeout:
                pass
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert proc.returncode == 0, err
    texts = [m for _, m in messages]
    ready_at = next(t for t, m in messages if "READY=1" in m)
    assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in texts)
    pings = [t for t, m in messages if "WATCHDOG=1" in m and t > ready_at]
    assert len(pings) >= 4, texts  # every ~500 ms (half of WATCHDOG_USEC) for 3 s while audio flows
    assert max(b - a for a, b in zip(pings, pings[1:])) < 1.0  # never a gap of a whole WATCHDOG_USEC
    assert any("STOPPING=1" in m for m in texts)
    assert [json.loads(line)["type"] for line in out.splitlines()][0] == "speech_start"


def _health(path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "agent", "health", "--file", str(path)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=30)
    return proc.returncode, proc.stdout.strip()


def test_health_command_follows_the_running_agent(tmp_path):
    """What a container HEALTHCHECK or a Kubernetes probe sees: healthy, hung (SIGSTOP), gone."""
    model = tm.write_sherpa(tmp_path / "model")
    fifo = tmp_path / "audio"
    os.mkfifo(fifo)  # nobody writes: the agent waits for a writer, which is not a stall
    health = tmp_path / "health.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STT_AGENT_WATCHDOG__HEALTH_FILE": str(health),
           "STT_AGENT_WATCHDOG__STATUS_INTERVAL_S": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--input", str(fifo), "--model", str(model),
                             "--vad", "energy"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 30
        while _health(health)[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.3)
        code, line = _health(health)
        assert code == 0 and line.startswith("healthy: running"), line
        proc.send_signal(signal.SIGSTOP)  # hung: the file stops changing
        time.sleep(3 * 1 + 2 + 1.5)
        code, line = _health(health)
        assert code == 1 and "was last updated" in line and "the agent hung or stopped" in line, line
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    code, line = _health(health)
    assert code == 1 and line.startswith(f"unhealthy: no health file at {health}"), line


def test_health_verdicts_from_the_file(tmp_path):
    from agent.service import health_file

    path = tmp_path / "h.json"
    now = time.time()
    for state, reason, expect in (("running", None, (True, "running (utterances=3)")),
                                  ("stalled", "no audio consumed for 20 s (limit 15 s)",
                                   (False, "stalled: no audio consumed for 20 s (limit 15 s)")),
                                  ("starting", None, (False, "starting (loading the model)")),
                                  ("stopping", None, (False, "stopping (utterances=3)"))):
        health_file.write(path, {"state": state, "reason": reason, "status": "utterances=3", "updated": now,
                                 "period_s": 5.0})
        assert health_file.judge(path, now=now + 1) == expect
    assert not health_file.judge(path, now=now + 20)[0]
    path.write_text("{not json")
    assert health_file.judge(path)[1].startswith(f"cannot read the health file {path}")


def test_serve_with_only_wyoming_keeps_the_watchdog_fed_while_no_device_speaks(tmp_path):
    """Home Assistant's setup (Wyoming only): nobody connects for longer than watchdog.audio_timeout_s, and
    pings go on (the network loop's heartbeat), so systemd never restarts it; health says running."""
    from mosquitto_fixture import free_port

    model = tm.write_sherpa(tmp_path / "model")
    port = free_port()
    health = tmp_path / "health.json"
    config = tmp_path / "serve.yaml"
    config.write_text(f"recognizer:\n  model_dir: {model}\nvad:\n  kind: energy\nwatchdog:\n  audio_timeout_s: 2\n"
                      f"  health_file: {health}\n  status_interval_s: 1\nserver:\n  wyoming:\n    enabled: true\n"
                      f"    zeroconf: false\n    uri: tcp://127.0.0.1:{port}\n", encoding="utf-8")
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    messages = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            try:
                messages.append((time.monotonic(), sock.recv(4096).decode()))
            except socket.timeout:
                pass
            ready = [t for t, m in messages if "READY=1" in m]
            if ready and time.monotonic() - ready[0] > 6.0:  # three times the audio timeout
                break
        verdict = _health(health)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert proc.returncode == 0, err
    ready_at = next(t for t, m in messages if "READY=1" in m)
    pings = [t for t, m in messages if "WATCHDOG=1" in m and t > ready_at]
    assert pings and max(b - a for a, b in zip([ready_at, *pings], pings)) < 1.0, [m for _, m in messages]
    assert pings[-1] > ready_at + 5.5
    assert not any("stalled" in m for _, m in messages)
    assert verdict[0] == 0 and verdict[1].startswith("healthy: running"), verdict
