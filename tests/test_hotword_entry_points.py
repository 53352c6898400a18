"""Hotwords through every entry point to a real ONNX Runtime session on a tiny model with designed logits:
the recognizer settings (list and file), recognize_batch with a phrase list per stream, `transcribe
--hotwords/--hotwords-file`, and the WebSocket start message of `stt-agent serve`."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import tiny_models as tm
from agent.errors import ConfigError
from agent.recognizer.sensevoice import SenseVoiceRecognizer
from agent.recognizer.settings import RecognizerSettings
from agent.server.protocol import ProtocolError, parse_text
from helpers import run, start_serve, stream_and_read, write_wav
from mosquitto_fixture import free_port

BLANK = "<unk>"
# One text frame per row: the blank and the words at 8 (sure), except frame 3 where "world" (5) is just ahead
# of "ok" (4): greedy reads "hello world你好"; "ok" with its 1.5-nat boost wins that frame.
PATTERN = ([{BLANK: 8}, {"\u2581hello": 8}, {BLANK: 8}, {"\u2581world": 5, "\u2581ok": 4}, {BLANK: 8}, {"你": 8},
            {"好": 8}] + [{BLANK: 8}] * 5)
PLAIN, BIASED = "hello world你好", "hello ok你好"


@pytest.fixture(scope="module")
def biased_model(tmp_path_factory):
    """tiny_models' sherpa-onnx model with the text frames above in place of its own pattern."""
    directory = tm.write_sherpa(tmp_path_factory.mktemp("hotword-model"))
    rows = np.zeros((len(PATTERN), len(tm.VOCAB)), np.float32)
    for t, row in enumerate(PATTERN):
        for piece, value in row.items():
            rows[t, tm.token_id(piece)] = value
    path = directory / "model.int8.onnx"
    model = onnx.load(path)
    for init in model.graph.initializer:
        if init.name == "pattern":
            init.CopyFrom(numpy_helper.from_array(rows, "pattern"))
    onnx.save(model, path)
    return directory


TOKEN = "0123456789abcdef0123456789abcdef"
# 0.3 s of silence, 1 s of noise the energy VAD hears as speech, 1 s of silence: one utterance, one final
BURST = np.clip(np.concatenate([np.zeros(4800), np.random.default_rng(0).standard_normal(16000) * 6000,
                                np.zeros(16000)]), -32768, 32767)
PCM = BURST.astype("<i2").tobytes()


def serve_config(model, tmp_path, extra: str = "", recognizer: str = ""):
    """(config path, port) of a `serve` on loopback with a token file; extra: YAML after the server section (indented lines are server keys)."""
    port = free_port()
    (tmp_path / "tokens").write_text(f"{TOKEN}\n", encoding="utf-8")
    config = tmp_path / "serve.yaml"
    config.write_text(f"recognizer:\n  model_dir: {model}\n{recognizer}vad:\n  kind: energy\n"
                      f"server:\n  host: 127.0.0.1\n  port: {port}\n  tokens_file: {tmp_path / 'tokens'}\n"
                      f"{extra}", encoding="utf-8")
    return config, port


def ws_connect(port, device):
    from websockets.asyncio.client import connect

    return connect(f"ws://127.0.0.1:{port}/ws/stt/{device}", additional_headers={"Authorization": f"Bearer {TOKEN}"})


async def ws_utterance(ws) -> dict:
    """The burst sent in 100 ms frames; its final."""
    for i in range(0, len(PCM), 3200):
        await ws.send(PCM[i:i + 3200])
    while True:
        event = json.loads(await ws.recv())
        if event["type"] == "final":
            return event


def run_then_stop(proc, session, timeout: float):
    """What the coroutine `session` returns within `timeout` s; `serve` is stopped whatever happened."""
    try:
        return asyncio.run(asyncio.wait_for(session, timeout))
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def audio(seed=0):
    return (np.random.default_rng(seed).standard_normal(tm.ONE_PATTERN_SAMPLES) * 1000).astype(np.float32)


def recognizer(model, **settings):
    return SenseVoiceRecognizer(RecognizerSettings(model_dir=str(model), warmup=False, **settings))


def test_per_stream_phrases_in_one_batch_do_not_leak(biased_model):
    rec = recognizer(biased_model)
    boosted = rec.options(hotwords=[("ok", 1.0)])
    for order in ([boosted, None, boosted], [None, boosted, None]):
        results = rec.recognize_batch([audio(0), audio(1), audio(2)], order)
        assert [r.text for r in results] == [BIASED if o else PLAIN for o in order]
        assert [r.hotwords_matched for r in results] == [["ok"] if o else [] for o in order]
    # Token times and posteriors of the biased stream: "ok" at its frame with its own posterior.
    ok = rec.recognize(audio(), boosted).tokens[1]
    row = np.zeros(len(tm.VOCAB))
    row[tm.token_id("\u2581world")], row[tm.token_id("\u2581ok")] = 5, 4
    assert (ok.text, round(ok.start, 3), round(ok.end, 3)) == (" ok", 0.18, 0.24)
    assert ok.prob == pytest.approx(np.exp(4) / np.exp(row).sum(), rel=1e-5)


def test_recognizer_settings_list_and_file(biased_model, tmp_path):
    assert recognizer(biased_model).recognize(audio()).text == PLAIN
    rec = recognizer(biased_model, hotwords=["ok"])
    assert rec.defaults.hotwords == (("ok", 1.0),)
    assert rec.recognize(audio()).text == BIASED
    # A stream's phrases add to the configured ones.
    assert rec.options(hotwords=[("hello", 2.0)]).hotwords == (("ok", 1.0), ("hello", 2.0))
    phrases = tmp_path / "hotwords.txt"
    phrases.write_text("# the box's words\nok:1.2\n", encoding="utf-8")
    rec = recognizer(biased_model, hotwords_file=str(phrases))
    result = rec.recognize(audio())
    assert (result.text, result.hotwords_matched) == (BIASED, ["ok"])
    # The search's settings reach it: at a score of 0.5 nats per token, "ok" stays 0.5 short.
    assert recognizer(biased_model, hotwords=["ok"], hotwords_score=0.5).recognize(audio()).text == PLAIN


def test_a_configured_phrase_the_vocabulary_cannot_spell_fails_the_load(biased_model, tmp_path):
    with pytest.raises(ConfigError, match="recognizer.hotwords: hotword '佢' has characters this model's "
                                          "vocabulary .* cannot spell"):
        recognizer(biased_model, hotwords=["ok", "佢"])
    phrases = tmp_path / "hotwords.txt"
    phrases.write_text("ok:20\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{phrases}:1: weight 20"):
        recognizer(biased_model, hotwords_file=str(phrases))


def test_transcribe_flags(biased_model, tmp_path):
    wav = write_wav(tmp_path / "a.wav", np.random.default_rng(1).integers(-3000, 3000, tm.ONE_PATTERN_SAMPLES))
    plain = run("transcribe", str(wav), "--model", str(biased_model), "--json")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["text"] == PLAIN and "hotwords_matched" not in plain.stdout
    proc = run("transcribe", str(wav), "--model", str(biased_model), "--json", "--hotwords", "ok,hello:2")
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert (body["text"], body["hotwords_matched"]) == (BIASED, ["hello", "ok"])  # in the order heard
    phrases = tmp_path / "words.txt"
    phrases.write_text("ok\n", encoding="utf-8")
    proc = run("transcribe", str(wav), "--model", str(biased_model), "--hotwords-file", str(phrases))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("] " + BIASED), proc.stderr
    bad = run("transcribe", str(wav), "--model", str(biased_model), "--hotwords", "ok:0")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --hotwords (recognizer.hotwords[0]): weight 0")
    missing = run("transcribe", str(wav), "--model", str(biased_model), "--hotwords-file", str(tmp_path / "no"))
    assert missing.returncode == 2 and "--hotwords-file (recognizer.hotwords_file)" in missing.stderr
    assert "no such hotwords file" in missing.stderr and "Traceback" not in missing.stderr


def test_websocket_start_hotwords_parse():
    kind, fmt = parse_text(json.dumps({"type": "start", "hotwords": ["Kitchen Light:2", "dimmer"]}))
    assert kind == "start" and fmt.hotwords == (("Kitchen Light", 2.0), ("dimmer", 1.0))
    for hotwords, message in [("ok", "hotwords is a list of strings"), ([3], r"hotwords\[0\]: expected a string"),
                              (["ok:0"], r"hotwords\[0\]: weight 0"), (["x"] * 1001, "1001 phrases; at most 1000")]:
        with pytest.raises(ProtocolError, match=message) as caught:
            parse_text(json.dumps({"type": "start", "hotwords": hotwords}))
        assert caught.value.code == "bad_start"


def test_websocket_start_hotwords_reach_the_decoder(biased_model, tmp_path):
    pytest.importorskip("websockets")

    config, port = serve_config(biased_model, tmp_path)
    proc = start_serve(config, port)

    async def one(start):
        async with ws_connect(port, f"dev-{len(start)}") as ws:
            await ws.send(json.dumps({"type": "start", **start}))
            events = await stream_and_read(ws, PCM)
        return [e for e in events if e["type"] == "final"]

    async def both():
        return await asyncio.gather(one({"hotwords": ["ok"]}), one({}))

    biased, plain = run_then_stop(proc, both(), 60)
    assert biased and all("ok" in f["text"] and f["hotwords_matched"] == ["ok"] for f in biased)
    assert plain and all("world" in f["text"] and "hotwords_matched" not in f for f in plain)


def test_mqtt_set_and_clear_hotwords_reach_a_streaming_device(biased_model, tmp_path, broker):
    """set_hotwords on `<prefix>/<device>/cmd` biases that device's next utterances; clear_hotwords goes back."""
    pytest.importorskip("websockets")
    from mosquitto_fixture import Subscriber

    config, port = serve_config(biased_model, tmp_path, extra=f"mqtt:\n  enabled: true\n  host: {broker.host}\n"
                                f"  port: {broker.port}\n  device_id: box\n")
    sub = Subscriber(broker, ["stt-agent/kiosk/error", "stt-agent/kiosk/final"])
    proc = start_serve(config, port)

    def command(payload, answers):
        # a bad command after it: its answer says the one before has reached the stream's inbox
        sub.client.publish("stt-agent/kiosk/cmd", json.dumps(payload), qos=1)
        sub.client.publish("stt-agent/kiosk/cmd", json.dumps({"command": "nope", "id": answers}), qos=1)
        sub.wait_topic("stt-agent/kiosk/error", answers)

    async def session():
        async with ws_connect(port, "kiosk") as ws:
            await ws.send(json.dumps({"type": "start"}))
            plain = await ws_utterance(ws)
            await asyncio.to_thread(command, {"command": "set_hotwords", "hotwords": ["ok:1"]}, 1)
            biased = await ws_utterance(ws)
            await asyncio.to_thread(command, {"command": "clear_hotwords"}, 2)
            cleared = await ws_utterance(ws)
            return plain, biased, cleared

    plain, biased, cleared = run_then_stop(proc, session(), 90)
    assert "world" in plain["text"] and "hotwords_matched" not in plain
    assert "ok" in biased["text"] and biased["hotwords_matched"] == ["ok"]
    assert "world" in cleared["text"] and "hotwords_matched" not in cleared


def test_set_hotwords_is_validated_by_the_command_schema():
    from agent.mqtt.commands import CommandError, parse_command

    assert parse_command(b'{"command": "set_hotwords", "hotwords": ["Kitchen Light:2"]}')["hotwords"] == [
        "Kitchen Light:2"]
    assert parse_command(b'{"command": "clear_hotwords"}') == {"command": "clear_hotwords"}
    for payload in (b'{"command": "set_hotwords"}', b'{"command": "set_hotwords", "hotwords": [3]}',
                    b'{"command": "set_hotwords", "hotwords": ["a"], "language": "en"}'):
        with pytest.raises(CommandError):
            parse_command(payload)


def test_sighup_reads_the_configured_hotwords_again(biased_model, tmp_path):
    """recognizer.hotwords edited, SIGHUP: a stream's next utterance is biased, without a restart."""
    import queue
    import signal
    import threading

    pytest.importorskip("websockets")
    config, port = serve_config(biased_model, tmp_path, recognizer="  hotwords: []\n")
    base = config.read_text(encoding="utf-8")
    proc = start_serve(config, port)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()

    def reload():
        config.write_text(base.replace("hotwords: []", "hotwords: [ok]"), encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        while True:
            line = lines.get(timeout=20)
            if "reload:" in line:
                return line

    async def session():
        async with ws_connect(port, "kiosk") as ws:
            plain = await ws_utterance(ws)
            line = await asyncio.to_thread(reload)
            return plain, line, await ws_utterance(ws)

    plain, line, biased = run_then_stop(proc, session(), 90)
    assert "world" in plain["text"] and "hotwords_matched" not in plain
    assert "reload: log level, hotwords (1 phrases) applied" in line and "need a restart" not in line
    assert "ok" in biased["text"] and biased["hotwords_matched"] == ["ok"]


def test_openai_prompt_keywords_and_realtime_prompt_reach_the_decoder(biased_model, tmp_path):
    """POST /v1/audio/transcriptions with `prompt` or `keywords`, and the realtime session's
    transcription.prompt, through the official openai package."""
    import base64
    import signal

    openai = pytest.importorskip("openai")
    config, port = serve_config(biased_model, tmp_path, extra="  max_ahead_s: 60\n")  # realtime sends at once
    wav = write_wav(tmp_path / "burst.wav", BURST)
    at_24k = np.concatenate([np.zeros(7200), np.random.default_rng(1).standard_normal(24000) * 6000, np.zeros(24000)])
    pcm24 = np.clip(at_24k, -32768, 32767).astype("<i2").tobytes()
    proc = start_serve(config, port)

    def upload(**kw):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN, max_retries=0)
        with open(wav, "rb") as f:
            return client.audio.transcriptions.create(model="whisper-1", file=f, **kw)

    async def realtime(prompt):
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN, max_retries=0)
        session = {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-4o-transcribe", "prompt": prompt}}}}
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(session=session)
            for i in range(0, len(pcm24), 4800):
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm24[i:i + 4800]).decode())
            while True:
                event = await asyncio.wait_for(conn.recv(), 20)
                if event.type.endswith("transcription.completed"):
                    return event

    try:
        plain, prompted = upload(), upload(prompt="Kitchen Light, ok")
        keywords = upload(extra_body={"keywords": "ok"})
        live_plain, live_prompted = asyncio.run(realtime("")), asyncio.run(realtime("ok"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert "world" in plain.text and "hotwords_matched" not in (plain.model_extra or {})
    for biased in (prompted, keywords):
        assert "ok" in biased.text and biased.model_extra["hotwords_matched"] == ["ok"]
    assert "world" in live_plain.transcript
    assert "ok" in live_prompted.transcript and live_prompted.model_extra["hotwords_matched"] == ["ok"]
