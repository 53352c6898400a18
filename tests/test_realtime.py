"""OpenAI's realtime transcription WebSocket, driven by the official `openai` package's realtime client (as
LiveKit and Pipecat use it) and, for the beta dialect LiveKit still sends, by a plain WebSocket client."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess

import numpy as np
import pytest

import tiny_models as tm
from helpers import start_serve
from mosquitto_fixture import free_port

openai = pytest.importorskip("openai")
websockets = pytest.importorskip("websockets")
import websockets.asyncio.client  # noqa: E402  (not imported by the package itself)

TOKEN = "0123456789abcdef0123456789abcdef"


def speech(seconds, seed, rate):
    return np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 6000


def turn(seed=0, rate=24000, talk=1.0, pause=1.2):
    return np.concatenate([np.zeros(int(0.3 * rate)), speech(talk, seed, rate), np.zeros(int(pause * rate))])


def pcm16(samples) -> bytes:
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def ulaw(samples) -> bytes:
    """G.711 mu-law by nearest code (the expansion table is checked against ITU-T's values below)."""
    from agent.audio.format import ULAW

    order = np.argsort(ULAW)
    x = np.clip(np.asarray(samples, np.float32), -32124, 32124)
    at = np.clip(np.searchsorted(ULAW[order], x), 1, 255)
    nearer = np.where(np.abs(ULAW[order][at - 1] - x) <= np.abs(ULAW[order][at] - x), at - 1, at)
    return order[nearer].astype(np.uint8).tobytes()


def test_the_g711_tables_are_itu_ts():
    from agent.audio.format import ALAW, ULAW, g711_to_float

    codes = bytes([0x00, 0x7F, 0x80, 0xFF, 0x55, 0xD5, 0x2A, 0xAA, 0x10, 0x90])
    assert g711_to_float(codes, ULAW).tolist() == [-32124, 0, 32124, 0, -716, 716, -5372, 5372, -15996, 15996]
    assert g711_to_float(codes, ALAW).tolist() == [-5504, -848, 5504, 848, -8, 8, -32256, 32256, -2752, 2752]
    assert len(set(ULAW.tolist())) == 255 and len(set(ALAW.tolist())) == 256  # mu-law has +0 and -0


def serving(tmp, model, server_extra=""):
    """`serve` with the energy VAD on a free port; yields the port, stops it after."""
    port = free_port()
    tokens = tmp / "tokens"
    tokens.write_text(f"{TOKEN}\n", encoding="utf-8")
    config = tmp / "serve.yaml"
    config.write_text(f"recognizer:\n  model_dir: {model}\nvad:\n  kind: energy\nserver:\n  host: 127.0.0.1\n"
                      f"  port: {port}\n  tokens_file: {tokens}\n  max_ahead_s: 60\n{server_extra}", encoding="utf-8")
    proc = start_serve(config, port)
    yield port
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def serve(tmp_path_factory, model):
    yield from serving(tmp_path_factory.mktemp("realtime"), model)


def client(port, key=TOKEN):
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)


async def transcribe(port, audio: bytes, session: dict, chunk=4800, commit=False, until="completed", count=1):
    events = []
    async with client(port).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session=session)
        for i in range(0, len(audio), chunk):
            await conn.input_audio_buffer.append(audio=base64.b64encode(audio[i:i + chunk]).decode())
        if commit:
            await conn.input_audio_buffer.commit()
        done = 0
        while done < count:
            event = await asyncio.wait_for(conn.recv(), 20)
            events.append(event)
            done += event.type.endswith(until)
    return events


def test_the_official_client_at_24_khz_gets_vad_events_deltas_and_the_completed_transcript(serve):
    session = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                                             "transcription": {"model": "gpt-4o-transcribe"},
                                                             "turn_detection": {"type": "server_vad"}}}}
    events = asyncio.run(transcribe(serve, pcm16(turn(1)), session))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["session.created", "session.updated"]
    for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                 "input_audio_buffer.committed", "conversation.item.created"):
        assert kind in kinds, kinds
    completed = events[-1]
    assert completed.type == "conversation.item.input_audio_transcription.completed"
    assert completed.transcript.startswith(tm.PATTERN_TEXT)
    extra = completed.model_extra or {}
    assert extra["emotion"] == "happy" and "language_scores" in extra and "timing" in extra
    item = completed.item_id
    assert all(getattr(e, "item_id", item) == item for e in events if e.type.startswith(("input_audio", "conv")))
    deltas = "".join(e.delta for e in events if e.type.endswith(".delta"))
    assert completed.transcript.startswith(deltas)  # deltas carry only new text, in order


def test_turn_detection_null_means_the_client_commits(serve):
    session = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
                                                             "turn_detection": None}}}
    audio = pcm16(np.concatenate([speech(1.0, 3, 16000), np.zeros(1600)]))
    events = asyncio.run(transcribe(serve, audio, session, commit=True))
    kinds = [e.type for e in events]
    assert "input_audio_buffer.speech_started" not in kinds and "input_audio_buffer.committed" in kinds
    assert events[-1].transcript.startswith(tm.PATTERN_TEXT)


def test_g711_mulaw_at_8_khz(serve):
    session = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
    events = asyncio.run(transcribe(serve, ulaw(turn(4, rate=8000)), session, chunk=1600))
    assert events[-1].transcript.startswith(tm.PATTERN_TEXT)


def test_the_beta_dialect_livekit_sends(serve):
    async def beta():
        url = f"ws://127.0.0.1:{serve}/v1/realtime?intent=transcription"
        headers = {"Authorization": f"Bearer {TOKEN}", "OpenAI-Beta": "realtime=v1"}
        async with websockets.asyncio.client.connect(url, additional_headers=headers) as ws:
            created = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "transcription_session.update", "session": {
                "input_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}))
            audio = pcm16(turn(5))
            for i in range(0, len(audio), 4800):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(audio[i:i + 4800]).decode()}))
            events = [created]
            while events[-1]["type"] != "conversation.item.input_audio_transcription.completed":
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
            return events

    events = asyncio.run(beta())
    assert events[0]["type"] == "transcription_session.created"
    assert events[1]["type"] == "transcription_session.updated"
    assert events[1]["session"]["turn_detection"]["silence_duration_ms"] == 500
    assert events[-1]["transcript"].startswith(tm.PATTERN_TEXT) and events[-1]["language"] == "en"


@pytest.mark.parametrize("event, code", [
    ("not json", "invalid_request_error"),
    ({"type": "input_audio_buffer.append", "audio": "%%%"}, "invalid_request_error"),
    ({"type": "session.update", "session": {"type": "realtime"}}, "invalid_request_error"),
    ({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/flac"}}}}},
     "invalid_request_error"),
    ({"type": "response.create"}, "invalid_request_error"),
])
def test_bad_client_events_get_openai_error_events_and_the_session_goes_on(serve, event, code):
    async def send():
        url = f"ws://127.0.0.1:{serve}/v1/realtime?intent=transcription"
        async with websockets.asyncio.client.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            await ws.recv()  # session.created
            await ws.send(event if isinstance(event, str) else json.dumps(event))
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            after = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return error, after

    error, after = asyncio.run(send())
    assert error["type"] == "error" and error["error"]["code"] == code and error["error"]["message"]
    assert after["type"] == "input_audio_buffer.cleared"


def test_a_wrong_api_key_is_refused_before_the_upgrade(serve):
    async def attempt():
        async with client(serve, key="not-a-key-0000000000").realtime.connect(
                extra_query={"intent": "transcription"}) as conn:
            await conn.recv()

    with pytest.raises(Exception) as info:
        asyncio.run(attempt())
    assert "401" in str(info.value)


def test_a_session_past_max_session_s_ends_between_turns_with_session_expired_and_4001(tmp_path, model):
    """The limit passes while a turn is open: the turn is transcribed whole, then the server sends OpenAI's
    session_expired error and closes with 4001 (reconnect, perhaps to another replica)."""
    async def scenario(port):
        url = f"ws://127.0.0.1:{port}/v1/realtime?intent=transcription"
        async with websockets.asyncio.client.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            events = [json.loads(await ws.recv())]

            async def append(samples):
                audio = pcm16(samples)
                for i in range(0, len(audio), 4800):
                    await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                              "audio": base64.b64encode(audio[i:i + 4800]).decode()}))

            await append(np.concatenate([np.zeros(7200), speech(0.6, 1, 24000)]))
            while events[-1]["type"] != "input_audio_buffer.speech_started":
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
            await asyncio.sleep(1.1)  # past max_session_s (1 s, less up to 10%) inside the turn
            try:
                await append(np.concatenate([speech(0.6, 2, 24000), np.zeros(36000)]))
            except websockets.exceptions.ConnectionClosed:
                pass
            try:
                async for message in ws:
                    events.append(json.loads(message))
            except websockets.exceptions.ConnectionClosed:
                pass
            return events, ws.close_code, ws.close_reason

    gen = serving(tmp_path, model, "  max_session_s: 1\n")
    port = next(gen)
    try:
        events, code, reason = asyncio.run(scenario(port))
    finally:
        next(gen, None)
    kinds = [e["type"] for e in events]
    completed = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert len(completed) == 1 and completed[0]["transcript"].startswith(tm.PATTERN_TEXT), kinds
    assert completed[0]["audio_end"] - completed[0]["audio_start"] > 1.0  # both halves, before and after the limit
    assert kinds[-1] == "error" and events[-1]["error"]["code"] == "session_expired", kinds
    assert code == 4001 and "server.max_session_s (1 s) reached: reconnect" in reason


def test_with_client_commits_a_session_past_max_session_s_waits_for_the_commit(tmp_path, model):
    """turn_detection null: audio appended but not committed keeps the session open past the limit; once the
    client commits, the turn is transcribed, then session_expired and 4001."""
    async def scenario(port):
        url = f"ws://127.0.0.1:{port}/v1/realtime?intent=transcription"
        async with websockets.asyncio.client.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            events = [json.loads(await ws.recv())]

            async def send(event):
                await ws.send(json.dumps(event))

            async def append(samples):
                await send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm16(samples)).decode()})

            await send({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}}}})
            await append(speech(0.5, 1, 16000))
            await asyncio.sleep(1.1)  # past max_session_s (1 s, less up to 10%) with audio waiting for a commit
            await append(speech(0.5, 2, 16000))  # still open: the turn is not committed
            await send({"type": "input_audio_buffer.commit"})
            try:
                async for message in ws:
                    events.append(json.loads(message))
                    if events[-1]["type"].endswith("transcription.completed"):
                        await append(np.zeros(1600))  # the next client event finds the session between turns
            except websockets.exceptions.ConnectionClosed:
                pass
            return events, ws.close_code

    gen = serving(tmp_path, model, "  max_session_s: 1\n")
    port = next(gen)
    try:
        events, code = asyncio.run(asyncio.wait_for(scenario(port), 60))
    finally:
        next(gen, None)
    kinds = [e["type"] for e in events]
    completed = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert len(completed) == 1 and completed[0]["audio_end"] - completed[0]["audio_start"] > 0.9, kinds
    assert kinds[-1] == "error" and events[-1]["error"]["code"] == "session_expired", kinds
    assert code == 4001
