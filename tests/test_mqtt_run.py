"""`stt-agent run --input FILE.wav` publishing to a real Mosquitto: the whole path, schemas checked."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np

import tiny_models as tm
from mosquitto_fixture import Subscriber, broker_fixture, retained  # noqa: F401 - broker_fixture is a fixture
from test_cli import ROOT, run, write_wav

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
    """set_language reaches the decodes; mute stops listening; a bad command is answered on error."""
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
    sub = Subscriber(broker, "stt-agent/box2/#")
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
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    assert json.loads(final.payload)["language"] == "ja"  # the fixed-language prompt reached the model
    jsonschema.validate(json.loads(errors[0].payload), schema("error"))
    assert len(sub.on("stt-agent/box2/stt/final")) == 1  # the muted speech was never decoded
    sub.close()
