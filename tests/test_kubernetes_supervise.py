"""deploy/kubernetes/base/supervise.py: the probes of the Kubernetes DaemonSet, against the real agent.

The agent runs under supervise.py exactly as in the pod (only the socket directory and the times
are smaller), reading raw PCM on stdin; the test feeds it, stops feeding, feeds again, then stops
the pod the way the kubelet does (SIGTERM to the container's main process).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

import tiny_models as tm
from test_cli import ROOT, write_wav

SUPERVISE = ROOT / "deploy" / "kubernetes" / "base" / "supervise.py"


def check(directory, what, watchdog_sec=2.0):
    proc = subprocess.run([sys.executable, "-I", str(SUPERVISE), "check", what, "--dir", str(directory),
                           f"--watchdog-sec={watchdog_sec}"], capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout.strip()


def wait_for(directory, what, code, timeout, watchdog_sec=2.0):
    deadline = time.monotonic() + timeout
    while True:
        rc, line = check(directory, what, watchdog_sec)
        if rc == code or time.monotonic() > deadline:
            return rc, line
        time.sleep(0.2)


class Feeder(threading.Thread):
    """Quiet noise on the agent's stdin at real-time pace, 100 ms at a time, while `feeding` is set."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.feeding, self.done = pipe, threading.Event(), threading.Event()
        self.block = (np.random.default_rng(0).standard_normal(1600) * 30).astype("<i2").tobytes()

    def run(self):
        while not self.done.is_set():
            if self.feeding.is_set():
                try:
                    self.pipe.write(self.block)
                    self.pipe.flush()
                except (BrokenPipeError, ValueError):
                    return
            time.sleep(0.1)


def agent_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STT_AGENT_", "NOTIFY_", "WATCHDOG_"))}
    return dict(env, PYTHONPATH=str(ROOT))


def test_probes_follow_the_agent_from_start_through_a_stall_and_back(tmp_path):
    model = tm.write_sherpa(tmp_path / "model")
    run_dir = tmp_path / "run"
    # audio_timeout_s 1: a second without audio is a stall (the pod keeps the default 15 s).
    env = dict(agent_env(), STT_AGENT_WATCHDOG__AUDIO_TIMEOUT_S="1", STT_AGENT_WATCHDOG__STATUS_INTERVAL_S="0.5")
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SUPERVISE), "run", "--dir", str(run_dir), "--watchdog-sec=2", "--",
             sys.executable, "-m", "agent", "run", "--input", "-", "--model", str(model), "--vad", "energy"],
            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    feeder = Feeder(proc.stdin)
    feeder.feeding.set()
    feeder.start()
    try:
        rc, line = wait_for(run_dir, "ready", 1, timeout=10)  # once supervise.py has written its state
        assert rc == 1 and line.startswith("not ready: starting"), line
        rc, line = wait_for(run_dir, "ready", 0, timeout=60)
        assert rc == 0 and line.startswith("ready"), line
        rc, line = check(run_dir, "live")
        assert rc == 0 and line.startswith("alive: last watchdog ping"), line

        feeder.feeding.clear()  # the pipeline starves: the agent withholds its pings and says why
        rc, line = wait_for(run_dir, "ready", 1, timeout=10)
        assert rc == 1 and "stalled: no audio consumed" in line, line
        rc, line = wait_for(run_dir, "live", 1, timeout=10)
        assert rc == 1 and line.startswith("unhealthy: no watchdog ping for"), line

        feeder.feeding.set()  # audio again: pings resume, the pod would be ready again
        rc, line = wait_for(run_dir, "live", 0, timeout=10)
        assert rc == 0, line
        rc, line = wait_for(run_dir, "ready", 0, timeout=10)
        assert rc == 0, line
    finally:
        feeder.done.set()
        feeder.join(timeout=5)
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()  # end of input: the agent finishes and exits 0, and so does supervise.py
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, log.read_text(errors="replace")[-2000:]
    assert check(run_dir, "ready") == (1, "unhealthy: the agent exited with 0")


def test_sigterm_is_forwarded_and_the_agent_drains(tmp_path):
    """The kubelet stops a container with SIGTERM to its main process: supervise.py."""
    model = tm.write_sherpa(tmp_path / "model")
    rng = np.random.default_rng(1)
    wav = write_wav(tmp_path / "a.wav", rng.standard_normal(16000 * 60) * 30)  # a minute, read in real time
    run_dir = tmp_path / "run"
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SUPERVISE), "run", "--dir", str(run_dir), "--",
             sys.executable, "-m", "agent", "run", "--input", str(wav), "--model", str(model), "--vad", "energy"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=agent_env())
    try:
        rc, line = wait_for(run_dir, "ready", 0, timeout=60, watchdog_sec=30)
        assert rc == 0, line
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log.read_text(errors="replace")[-2000:]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["stopping"] is True and state["exited"] == 0 and state["pings"] > 0


FAKE_AGENT = """
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def say(text):
    s.sendto(text.encode(), os.environ["NOTIFY_SOCKET"])
say("WATCHDOG=1")
say("READY=1\\nSTATUS=listening")
time.sleep(float(sys.argv[1]))
say(sys.argv[2])
time.sleep(30)
"""


def test_watchdog_trigger_fails_liveness_at_once(tmp_path):
    proc = subprocess.Popen([sys.executable, str(SUPERVISE), "run", "--dir", str(tmp_path), "--",
                             sys.executable, "-c", FAKE_AGENT, "0.5", "WATCHDOG=trigger"])
    try:
        assert wait_for(tmp_path, "ready", 0, timeout=20)[0] == 0
        rc, line = wait_for(tmp_path, "live", 1, timeout=10, watchdog_sec=30)
        assert rc == 1 and "WATCHDOG=trigger" in line, line
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_restarted_container_is_not_ready_on_the_old_state(tmp_path):
    """The state directory is an emptyDir: it outlives the container, so a new run starts from nothing."""
    (tmp_path / "state.json").write_text(json.dumps({"started": 0, "ready": True, "last_ping": 0}))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(tmp_path / "notify.sock"))  # left behind by the previous container
    stale.close()
    proc = subprocess.Popen([sys.executable, str(SUPERVISE), "run", "--dir", str(tmp_path), "--",
                             sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        rc, line = wait_for(tmp_path, "ready", 1, timeout=20)
        assert rc == 1 and line.startswith("not ready: starting"), line
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM  # the child's death by SIGTERM, as a shell says it


def test_exit_code_and_missing_state(tmp_path):
    proc = subprocess.run([sys.executable, str(SUPERVISE), "run", "--dir", str(tmp_path / "a"), "--",
                           sys.executable, "-c", "raise SystemExit(78)"], timeout=30)
    assert proc.returncode == 78  # invalid configuration: the kubelet restarts with back-off, the log says why
    assert check(tmp_path / "a", "live")[0] == 1
    rc, line = check(tmp_path / "nothing", "live")
    assert rc == 3 and line.startswith("unknown: cannot read"), line
