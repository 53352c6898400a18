"""`stt-agent run --input FILE.wav` publishing to a real Mosquitto: the whole path, schemas checked."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np

import tiny_models as tm
from mosquitto_fixture import Subscriber, retained
from helpers import ROOT, run, write_wav

SCHEMAS = ROOT / "docs" / "schemas"


def mqtt_config(tmp_path, model, broker, device_id):
    """A config that sends run's events to the test broker, with the deterministic energy VAD."""
    config = tmp_path / "c.yaml"
    config.write_text(
        f"recognizer:\n  model_dir: {model}\nvad:\n  kind: energy\n"
        f"mqtt:\n  enabled: true\n  host: {broker.host}\n  port: {broker.port}\n  device_id: {device_id}\n",
        encoding="utf-8")
    return config


def schema(name):
    return json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))


def test_run_publishes_finals_vad_emotion_language_and_status(broker, tmp_path):
    model = tm.write_sherpa(tmp_path / "model")
    rng = np.random.default_rng(0)
    audio = np.concatenate([np.zeros(8000), rng.standard_normal(24000) * 6000, np.zeros(16000),
                            rng.standard_normal(20000) * 6000, np.zeros(16000)])
    wav = write_wav(tmp_path / "conv.wav", audio)
    config = mqtt_config(tmp_path, model, broker, "box1")
    sub = Subscriber(broker, "stt-agent/box1/#")
    proc = run("run", "--config", str(config), "--input", str(wav), "--fast")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # with MQTT enabled, events go to the broker only
    finals = sub.wait_topic("stt-agent/box1/stt/final", count=2)
    vad = sub.wait_topic("stt-agent/box1/vad", count=4)
    emotion = sub.wait_topic("stt-agent/box1/emotion", count=2)
    language = sub.wait_topic("stt-agent/box1/language", count=2)
    for messages, name in ((finals, "final"), (vad, "vad"), (emotion, "emotion"), (language, "language")):
        for message in messages:
            jsonschema.validate(json.loads(message.payload), schema(name))
    texts = [json.loads(m.payload)["text"] for m in finals]
    assert all(t.startswith(tm.PATTERN_TEXT) for t in texts)
    assert [json.loads(m.payload)["utterance_id"] for m in finals] == [1, 2]
    assert retained(broker, "stt-agent/box1/status") == b"offline"  # a clean stop says so itself
    sub.close()


def test_commands_change_the_running_daemon(broker, tmp_path):
    """set_language reaches the decodes; mute stops listening; a bad command is answered on error; a
    command for a device this agent never served is another agent's (they share the default prefix): not
    answered."""
    import os
    import subprocess
    import sys

    import paho.mqtt.publish as publish

    model = tm.write_sherpa(tmp_path / "model")
    rng = np.random.default_rng(1)
    speech = lambda: rng.standard_normal(16000) * 6000  # noqa: E731
    # t=3 s: utterance 1 (after set_language); t=6 s: speech while muted (must not be heard).
    audio = np.concatenate([np.zeros(48000), speech(), np.zeros(32000), speech(), np.zeros(32000)])
    wav = write_wav(tmp_path / "a.wav", audio)
    config = mqtt_config(tmp_path, model, broker, "box2")
    sub = Subscriber(broker, ["stt-agent/box2/#", "stt-agent/box9/error"])
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--input", str(wav)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        sub.wait_for(lambda ms: any(m.topic == "stt-agent/box2/status" and m.payload == b"online" for m in ms), 30)
        cmd = "stt-agent/box2/cmd"
        publish.single(cmd, json.dumps({"command": "set_language", "language": "ja"}), qos=1,
                       hostname=broker.host, port=broker.port)
        publish.single(cmd, "not json", qos=1, hostname=broker.host, port=broker.port)
        (final,) = sub.wait_topic("stt-agent/box2/stt/final", count=1, timeout=30)
        publish.single(cmd, json.dumps({"command": "mute"}), qos=1, hostname=broker.host, port=broker.port)
        errors = sub.wait_topic("stt-agent/box2/error", count=1, timeout=10)
        publish.single("stt-agent/box9/cmd", json.dumps({"command": "unmute", "id": 3}), qos=1,
                       hostname=broker.host, port=broker.port)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    assert json.loads(final.payload)["language"] == "ja"  # the fixed-language prompt reached the model
    jsonschema.validate(json.loads(errors[0].payload), schema("error"))
    assert len(sub.on("stt-agent/box2/stt/final")) == 1  # the muted speech was never decoded
    assert sub.on("stt-agent/box9/error") == []  # another agent's device
    assert len(sub.on("stt-agent/box2/error")) == 1  # box2's own error topic heard nothing of it
    health = json.loads(sub.on("stt-agent/box2/health")[-1].payload)
    assert health["mqtt"]["commands"]["for_others"] == 1
    sub.close()


def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_command_flood_costs_no_final(broker, tmp_path):
    """Invalid commands at full speed for 15 s while someone speaks: every final arrives, memory and
    log volume stay bounded (before: 6 of 16 finals lost, 12,000 log lines for 5,000 commands)."""
    import os
    import shutil
    import subprocess
    import sys
    import time

    import pytest

    if shutil.which("mosquitto_pub") is None:
        pytest.skip("mosquitto_pub (mosquitto-clients) floods the command topic")
    model = tm.write_sherpa(tmp_path / "model")
    rng = np.random.default_rng(2)
    turns = 8
    parts = [np.zeros(8000)]
    for _ in range(turns):
        parts += [rng.standard_normal(16000) * 6000, np.zeros(24000)]  # 1 s of speech, 1.5 s of silence
    wav = write_wav(tmp_path / "talk.wav", np.concatenate(parts))  # 20.5 s at real-time pace
    config = mqtt_config(tmp_path, model, broker, "flood")
    # not the command topic: a test client queueing 100,000 commands would lose the finals itself
    sub = Subscriber(broker, [f"stt-agent/flood/{t}" for t in ("stt/final", "error", "status")])
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--input", str(wav)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    batch = tmp_path / "batch.txt"
    batch.write_text("".join(f'{{"command": "dance", "id": {i}}}\n' if i % 3 else "not json\n"
                             for i in range(5000)))
    sent, rss = 0, []
    try:
        sub.wait_for(lambda ms: any(m.topic == "stt-agent/flood/status" and m.payload == b"online" for m in ms), 30)
        rss.append(_rss_kib(proc.pid))
        flood_end = time.monotonic() + 15
        while time.monotonic() < flood_end:
            with open(batch, "rb") as lines:
                subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                                "-t", "stt-agent/flood/cmd", "-l"], stdin=lines, check=True, timeout=60)
            sent += 5000
            rss.append(_rss_kib(proc.pid))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    finals = sub.wait_topic("stt-agent/flood/stt/final", count=turns, timeout=10)
    assert [json.loads(m.payload)["utterance_id"] for m in finals] == list(range(1, turns + 1))
    health = json.loads(retained(broker, "stt-agent/flood/health"))
    commands = health["mqtt"]["commands"]
    # the broker drops what it cannot queue for a slow client: the agent reads fewer than were sent
    assert sent >= 20000 and commands["over_limit"] > 10 * commands["rejected"] > 0, (sent, commands)
    assert len(sub.on("stt-agent/flood/error")) <= 10 * 17 + 10  # commands_per_s answers a second, at most
    assert max(rss) - rss[0] < 50 * 1024, rss  # KiB: no queue grows with the flood
    assert len(err.splitlines()) < 60, err[-3000:]
    assert err.count("over mqtt.commands_per_s") >= 1
    assert err.count("EVENT=final") == turns
    sub.close()


def test_health_example_in_the_docs_is_what_is_sent(broker, tmp_path):
    """EVENTS.md's health example has exactly the fields a running agent publishes."""
    import re

    model = tm.write_sherpa(tmp_path / "model")
    wav = write_wav(tmp_path / "a.wav", np.zeros(32000))
    config = mqtt_config(tmp_path, model, broker, "docs")
    sub = Subscriber(broker, "stt-agent/docs/health")
    proc = run("run", "--config", str(config), "--input", str(wav))  # 2 s at real-time pace: it connects
    assert proc.returncode == 0, proc.stderr
    sent = json.loads(sub.wait_topic("stt-agent/docs/health")[0].payload)
    docs = (ROOT / "docs" / "EVENTS.md").read_text(encoding="utf-8")
    example = json.loads(re.search(r'### `health`.*?```json\n(.*?)```', docs, re.S).group(1))

    def shape(obj, path=""):
        if not isinstance(obj, dict):
            return {path}
        return {path} | set().union(*(shape(v, f"{path}.{k}") for k, v in obj.items()))

    assert shape(example) == shape(sent)
    jsonschema.validate(example, schema("health"))
    sub.close()


def test_an_unreadable_password_file_fails_before_the_model_loads(tmp_path):
    password = tmp_path / "pw"
    password.write_bytes(b"\xffsecret\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"recognizer:\n  model_dir: {tmp_path / 'no-model'}\nmqtt:\n  enabled: true\n"
                      f"  username: u\n  password_file: {password}\n", encoding="utf-8")
    wav = write_wav(tmp_path / "a.wav", np.zeros(1600))
    proc = run("run", "--config", str(config), "--input", str(wav))
    assert proc.returncode == 78, proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"error: mqtt.password_file: {password} is not UTF-8 text (byte 0xff at "
                                            "offset 0); MQTT passwords are UTF-8")
