"""`stt-agent run` under a real NOTIFY_SOCKET: READY after load, WATCHDOG cadence, STATUS, STOPPING."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def _wait_healthy(config, env, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run([sys.executable, "-m", "agent", "health", "--config", str(config)], capture_output=True,
                              text=True, cwd=ROOT, env=env, timeout=30)
        if proc.returncode == 0 or time.monotonic() > deadline:
            return proc.returncode, proc.stdout.strip()
        time.sleep(0.3)


def test_two_agents_in_one_directory_keep_their_own_health_files(tmp_path):
    """health_file: auto for both, one shared directory (two instances of a unit, or /run/stt-agent): each agent
    writes its own file, and `stt-agent health --config X` reports X's agent, not whichever wrote last."""
    model = tm.write_sherpa(tmp_path / "model")
    shared = tmp_path / "run"
    shared.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNTIME_DIRECTORY": str(shared),
           "STT_AGENT_WATCHDOG__STATUS_INTERVAL_S": "1"}
    configs, procs = [], []
    for name in ("a", "b"):
        fifo = tmp_path / f"{name}.fifo"
        os.mkfifo(fifo)  # nobody writes: each agent waits for a writer, which is not a stall
        config = tmp_path / f"{name}.yaml"
        config.write_text(f"recognizer:\n  model_dir: {model}\naudio:\n  input: {fifo}\nvad:\n  kind: energy\n",
                          encoding="utf-8")
        configs.append(config)
        procs.append(subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env))
    try:
        for config in configs:
            code, line = _wait_healthy(config, env)
            assert code == 0 and line.startswith("healthy: running"), line
        assert len(list(shared.glob("health-*.json"))) == 2
        procs[0].send_signal(signal.SIGTERM)
        procs[0].communicate(timeout=20)
        assert procs[0].returncode == 0
        code, line = _wait_healthy(configs[0], env, timeout=0)
        assert code == 1 and line.startswith(f"unhealthy: no health file at {shared}/health-"), line
        code, line = _wait_healthy(configs[1], env, timeout=0)
        assert code == 0, line  # the other agent is still running, and says so
        procs[1].send_signal(signal.SIGTERM)
        procs[1].communicate(timeout=20)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert list(shared.glob("health-*.json")) == []  # a stopped agent has no health to report


def test_the_auto_health_file_is_one_per_config(tmp_path, monkeypatch):
    from agent.service import health_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("", encoding="utf-8")
    run_dir = tmp_path / "run"
    monkeypatch.setattr(health_file, "RUN_DIR", str(run_dir))  # the service's directory, not this box's
    user = {"XDG_RUNTIME_DIR": str(tmp_path / "xdg")}
    (tmp_path / "xdg").mkdir()
    mine = health_file.resolve("auto", user, "config.yaml")
    assert mine == tmp_path / "xdg" / "stt-agent" / health_file.instance_name(tmp_path / "config.yaml")
    assert (mine.parent.stat().st_mode & 0o777) == 0o700
    assert health_file.resolve("auto", user, str(tmp_path / "config.yaml")) == mine  # one file, however spelt
    assert health_file.resolve("auto", user, "other.yaml") != mine
    assert health_file.resolve("auto", user, None) != mine  # the built-in defaults: an instance of their own
    assert health_file.resolve("auto", {"RUNTIME_DIRECTORY": "/r/x:/r/y"}, "config.yaml") == Path("/r/x") / mine.name
    assert health_file.resolve("", user, "config.yaml") is None
    assert health_file.resolve("/srv/h.json", user, "config.yaml") == Path("/srv/h.json")
    # The service wrote into its RuntimeDirectory; an operator's `stt-agent health` has no such variable.
    run_dir.mkdir()
    service = health_file.resolve("auto", {"RUNTIME_DIRECTORY": str(run_dir)}, "config.yaml")
    health_file.write(service, {"state": "running", "updated": time.time(), "period_s": 5})
    assert health_file.resolve("auto", user, "config.yaml", reading=True) == service
    assert not health_file.resolve("auto", user, "other.yaml", reading=True).exists()  # not the service's file


def test_a_directory_planted_under_tmp_is_not_written_into(tmp_path):
    """/tmp/stt-agent-<uid> is anyone's to create first: a symlink, or another user's directory, is passed over."""
    from agent.service import health_file

    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert not health_file._usable(link, True, create=True)
    own = tmp_path / "own"
    assert health_file._usable(own, True, create=True) and own.is_dir()
    if os.getuid() == 0:  # only root can hand a directory to another user
        os.chown(own, 12345, 12345)
        assert not health_file._usable(own, True, create=True)
