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
from test_cli import ROOT, write_wav


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
