"""Helpers the test modules share (fixtures live in conftest.py): the CLI in a subprocess, WAV
files, typed events as the pipeline makes them, and MQTT settings pointed at a test broker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np

from agent.events import Emitter, Final, Partial, Stamped
from agent.mqtt.settings import MqttSettings
from agent.recognizer.result import Recognition, Token

ROOT = Path(__file__).resolve().parent.parent


def run(*args, cwd=None, env=None, timeout=120):
    """`python -m agent ARGS` from the repository root, without the caller's STT_AGENT_CONFIG."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full_env.pop("STT_AGENT_CONFIG", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full_env, timeout=timeout)


def start_serve(config: Path, port: int, timeout: float = 30.0) -> subprocess.Popen:
    """`python -m agent serve --config CONFIG` (text pipes), returned once it listens on 127.0.0.1:PORT."""
    proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"serve did not listen on port {port} within {timeout:g} s")


def write_wav(path: Path, samples: np.ndarray, rate=16000, channels=1):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples).astype("<i2").tobytes())
    return path


def recognition(text="hello", tokens=True) -> Recognition:
    toks = [Token(" hello", 7, 0.06, 0.18, 0.9)] if tokens and text else []
    return Recognition(text=text, language="en", language_scores={"en": 0.9, "zh": 0.1}, emotion="neutral",
                       emotion_scores={"neutral": 1.0}, event="speech", event_scores={"speech": 1.0},
                       confidence=0.9, tokens=toks, duration=1.0)


def final(i: int, text: str | None = None) -> Final:
    """A final as the pipeline makes it (utterance i)."""
    return Final(i, recognition(text if text is not None else f"utterance {i}"), audio_start=float(i),
                 audio_end=i + 1.0, audio_start_wall=None, audio_end_wall=None, queue_ms=0.0, decode_ms=5.0,
                 endpoint_delay_ms=100.0, speculative=False)


def utterance(i: int, text: str | None = None) -> list:
    """What the pipeline emits when an utterance ends: its final, then its emotion and language."""
    from agent.events import Emotion, Language

    f = final(i, text)
    return [f, Emotion(i, "neutral", {"neutral": 1.0}, 0.9), Language(i, "en", {"en": 0.9, "zh": 0.1}, 0.9)]


def partial(i: int, text: str | None = None) -> Partial:
    return Partial(i, recognition(text if text is not None else f"utterance {i}", tokens=False),
                   audio_start=float(i), audio_end=i + 0.5, audio_start_wall=None, audio_end_wall=None,
                   queue_ms=0.0, decode_ms=5.0)


def stamped(event, seq: int = 1, device_id: str = "dev1", session: str = "0badcafe") -> Stamped:
    return Stamped(device_id, session, seq, 1795471272.27, event)


def settings_for(broker, **kw) -> MqttSettings:
    """MQTT settings for a test broker; kw as dotted-by-__ keys, e.g. tls__enabled=True."""
    s = MqttSettings(enabled=True, host=broker.host, port=broker.port, device_id="dev1", reconnect_min_s=0.1,
                     reconnect_max_s=0.5, drain_timeout_s=5.0)
    for key, value in kw.items():
        obj, _, name = key.rpartition("__")
        setattr(getattr(s, obj) if obj else s, name, value)
    return s


def emit_all(publisher, events) -> Emitter:
    """Send typed events through the publisher's own emitter (numbered as a pipeline's would be)."""
    for event in events:
        publisher.emitter.emit(event)
    return publisher.emitter


async def stream_and_read(ws, audio: bytes, frame: int = 3200) -> list:
    """Send `audio` over an open /ws/stt connection in `frame`-byte messages, then `stop`; every event
    (decoded JSON) the server sends until it closes."""
    import json

    from websockets.exceptions import ConnectionClosed

    for i in range(0, len(audio), frame):
        await ws.send(audio[i:i + frame])
    await ws.send(json.dumps({"type": "stop"}))
    events = []
    try:
        async for message in ws:
            events.append(json.loads(message))
    except ConnectionClosed:
        pass
    return events
