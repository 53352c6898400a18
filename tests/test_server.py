"""`stt-agent serve`: real WebSocket clients over loopback against the real server process.

Auth (good, bad, missing, bound to another device), limits (max streams, frame too large, idle),
the hex-JSON `{"audio": ...}` client of `/ws/stt`, Opus frames, resampled and float formats, stop, a client vanishing
mid-utterance (its final still reaches MQTT), many streams at once each getting its own finals,
SIGTERM draining every stream.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import urllib.parse

import numpy as np
import pytest

import tiny_models as tm
from helpers import start_serve
from mosquitto_fixture import Subscriber, free_port, needs_mosquitto, retained

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

RATE = 16000
TOKEN = "0123456789abcdef0123456789abcdef"
KIOSK_TOKEN = "kiosk-only-token-0123456789abcdef"


def speech(seconds=1.0, seed=0):
    return np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 6000


def silence(seconds):
    return np.zeros(int(seconds * RATE))


def turn(seed=0, talk=1.0, pause=1.0):
    """One utterance the energy VAD finds: a burst, then silence past the endpoint."""
    return np.concatenate([silence(0.3), speech(talk, seed), silence(pause)])


def s16(samples) -> bytes:
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


class Serve:
    def __init__(self, tmp_path, model, broker=None, **server):
        self.port = free_port()
        tokens = tmp_path / "tokens"
        tokens.write_text(f"# devices\n{TOKEN}\nkiosk-1 {KIOSK_TOKEN}\n", encoding="utf-8")
        options = {"port": self.port, "host": "127.0.0.1", "tokens_file": str(tokens), "max_ahead_s": 60.0,
                   "idle_timeout_s": 5.0, **server}
        lines = [f"recognizer:\n  model_dir: {model}", "vad:\n  kind: energy", "pipeline:\n  drain_timeout_s: 5.0",
                 "server:\n" + "".join(f"  {k}: {v}\n" for k, v in options.items())]
        if broker is not None:
            lines.append(f"mqtt:\n  enabled: true\n  host: {broker.host}\n  port: {broker.port}\n  device_id: box")
        self.config = tmp_path / "serve.yaml"
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.proc = start_serve(self.config, self.port)

    def url(self, device="dev-1", token=TOKEN, query=False):
        base = f"ws://127.0.0.1:{self.port}/ws/stt/{device}"
        return f"{base}?token={token}" if query and token else base

    def headers(self, token=TOKEN):
        return {"Authorization": f"Bearer {token}"} if token else {}

    def stop(self) -> tuple:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture(scope="module")
def serve(tmp_path_factory, model):
    server = Serve(tmp_path_factory.mktemp("serve"), model, max_streams=8)
    yield server
    server.stop()


async def stream(url, chunks, *, headers=None, start=None, stop=True, chunk_delay=0.0, hex_json=False):
    """Send audio chunks; return (events received, close code)."""
    events = []
    async with connect(url, additional_headers=headers or {}) as ws:
        try:
            if start is not None:
                await ws.send(json.dumps({"type": "start", **start}))
            for chunk in chunks:
                await ws.send(json.dumps({"audio": chunk.hex()}) if hex_json else chunk)
                if chunk_delay:
                    await asyncio.sleep(chunk_delay)
            if stop:
                await ws.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:
            pass  # closed by the server (replaced, a protocol error): what it sent before is still read
        try:
            async for message in ws:
                events.append(json.loads(message))
        except ConnectionClosed:
            pass
        return events, ws.close_code


def frames(data: bytes, size=3200):
    return [data[i:i + size] for i in range(0, len(data), size)]


def finals(events):
    return [e for e in events if e["type"] == "final"]


# ---------------------------------------------------------------------------------- auth and limits
@pytest.mark.parametrize("device, token, query, status", [
    ("dev-1", None, False, 401),                     # missing
    ("dev-1", "not-the-token-0000000000", False, 401),  # wrong
    ("dev-2", KIOSK_TOKEN, False, 403),              # a token bound to another device
    ("dev-1", "not-the-token-0000000000", True, 401),  # wrong, in the query
])
def test_refused_before_the_upgrade_with_the_right_status(serve, device, token, query, status):
    async def attempt():
        with pytest.raises(InvalidStatus) as info:
            async with connect(serve.url(device, token, query), additional_headers={} if query else serve.headers(token)):
                pass
        return info.value.response.status_code

    assert asyncio.run(attempt()) == status


def test_wrong_paths_and_device_ids_are_refused(serve):
    async def status_of(path):
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{serve.port}{path}", additional_headers=serve.headers()):
                pass
        return info.value.response.status_code

    assert asyncio.run(status_of("/other")) == 404
    assert asyncio.run(status_of("/ws/stt/a%2Bb")) == 400  # "a+b": a wildcard in an MQTT topic level


def test_a_stream_with_a_header_token_or_a_query_token_gets_its_finals(serve):
    audio = s16(np.concatenate([turn(0), turn(1)]))
    events, code = asyncio.run(stream(serve.url("dev-1"), frames(audio), headers=serve.headers()))
    assert code == 1000
    assert [f["text"].startswith(tm.PATTERN_TEXT) for f in finals(events)] == [True, True]
    assert {e["device_id"] for e in events} == {"dev-1"}
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    events, _ = asyncio.run(stream(serve.url("kiosk-1", KIOSK_TOKEN, query=True), frames(audio)))
    assert len(finals(events)) == 2


def test_the_seeds_own_client_works_unchanged(serve):
    """Text frames {"audio": hex of s16le 16 kHz}; finals carry the fields that client reads."""
    events, code = asyncio.run(stream(serve.url("seed"), frames(s16(turn(2)), 1600), headers=serve.headers(),
                                      hex_json=True))
    (final,) = finals(events)
    for key in ("text", "emotion", "emotion_scores", "language", "language_scores", "latency_ms"):
        assert key in final, key
    assert final["text"].startswith(tm.PATTERN_TEXT) and final["latency_ms"] == final["timing"]["endpoint_delay_ms"]


def test_opus_packets_as_esp32_devices_send_them(serve):
    opuslib = pytest.importorskip("opuslib_next")
    encoder = opuslib.Encoder(16000, 1, opuslib.APPLICATION_VOIP)
    pcm = s16(np.concatenate([turn(3), turn(4)]))
    frame = 960 * 2  # 60 ms of 16 kHz s16le
    packets = [encoder.encode(pcm[i:i + frame], 960) for i in range(0, len(pcm) - frame + 1, frame)]
    events, _ = asyncio.run(stream(serve.url("esp32"), packets, headers=serve.headers(),
                                   start={"format": "opus", "sample_rate": 16000}))
    assert len(finals(events)) == 2


@pytest.mark.parametrize("start", [{"sample_rate": 48000}, {"format": "f32le", "sample_rate": 22050}])
def test_any_rate_and_float_samples_are_converted(serve, start):
    import soxr

    audio = soxr.resample(np.concatenate([turn(5), turn(6)]).astype(np.float32), RATE, start["sample_rate"])
    data = s16(audio) if start.get("format", "s16le") == "s16le" else (audio / 32768).astype("<f4").tobytes()
    events, _ = asyncio.run(stream(serve.url("rates"), frames(data, 4800), headers=serve.headers(), start=start))
    ends = [e["at"] for e in events if e["type"] == "speech_end"]
    assert len(finals(events)) == 2 and ends[0] == pytest.approx(1.3 + 0.2, abs=0.1)  # times not stretched


def test_a_bad_start_is_an_error_event_and_a_policy_close(serve):
    events, code = asyncio.run(stream(serve.url("bad"), [], headers=serve.headers(), start={"format": "mp3"},
                                      stop=False))
    assert code == 1008
    assert events[-1]["type"] == "error" and events[-1]["code"] == "bad_start" and "mp3" in events[-1]["message"]


def test_a_frame_too_large_closes_with_1009(tmp_path, model):
    server = Serve(tmp_path, model, max_frame_bytes=4096)
    try:
        events, code = asyncio.run(stream(server.url(), [b"\0" * 5000], headers=server.headers(), stop=False))
        assert code == 1009
    finally:
        server.stop()


def test_more_streams_than_allowed_are_refused_with_503_and_idle_ones_closed(tmp_path, model):
    server = Serve(tmp_path, model, max_streams=2, idle_timeout_s=1.0)

    async def scenario():
        async with connect(server.url("a"), additional_headers=server.headers()) as a, \
                connect(server.url("b"), additional_headers=server.headers()) as b:
            await a.send(s16(silence(0.1)))
            await b.send(s16(silence(0.1)))
            with pytest.raises(InvalidStatus) as info:
                async with connect(server.url("c"), additional_headers=server.headers()):
                    pass
            assert info.value.response.status_code == 503
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                while True:
                    await a.recv()  # nothing more is sent: the server closes it at the idle limit
            return time.monotonic() - started, a.close_code

    try:
        waited, code = asyncio.run(scenario())
        assert code == 1000 and waited < 5.0
    finally:
        _, err = server.stop()
    assert "no data for server.idle_timeout_s (1 s)" in err


# ---------------------------------------------------------------------------------- many devices
def test_many_streams_at_once_each_get_their_own_finals(serve):
    """Six devices at once, each saying a different number of utterances, paced like real speech."""
    async def device(i):
        audio = np.concatenate([turn(10 * i + k) for k in range(1 + i % 3)])
        return await stream(serve.url(f"room-{i}"), frames(s16(audio), 1600), headers=serve.headers(),
                            chunk_delay=0.01)

    async def everyone():
        return await asyncio.gather(*(device(i) for i in range(6)))

    results = asyncio.run(everyone())
    for i, (events, code) in enumerate(results):
        assert code == 1000
        assert {e["device_id"] for e in events} == {f"room-{i}"}
        assert len(finals(events)) == 1 + i % 3
        ids = [f["utterance_id"] for f in finals(events)]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)


@needs_mosquitto
def test_a_client_that_vanishes_mid_utterance_still_gets_its_final_to_mqtt(tmp_path, model, broker):
    server = Serve(tmp_path, model, broker=broker)
    sub = Subscriber(broker, "stt-agent/#")

    async def vanish():
        ws = await connect(server.url("gone"), additional_headers=server.headers())
        for chunk in frames(s16(np.concatenate([silence(0.3), speech(1.5, 9)])), 1600):
            await ws.send(chunk)
        ws.transport.abort()  # no close frame: the device lost power

    try:
        sub.wait_for(lambda ms: any(m.topic == "stt-agent/box/status" and m.payload == b"online" for m in ms), 30)
        asyncio.run(vanish())
        (final,) = sub.wait_topic("stt-agent/gone/stt/final", timeout=20)
        assert json.loads(final.payload)["text"].startswith(tm.PATTERN_TEXT)
        sub.wait_for(lambda ms: [m for m in ms if m.topic == "stt-agent/gone/status" and m.payload == b"offline"], 10)
        assert retained(broker, "stt-agent/gone/status") == b"offline"
    finally:
        server.stop()
        sub.close()


def test_sigterm_drains_every_stream_mid_utterance(tmp_path, model):
    server = Serve(tmp_path, model)

    async def talker(i, started):
        async with connect(server.url(f"t{i}"), additional_headers=server.headers()) as ws:
            for chunk in frames(s16(np.concatenate([silence(0.3), speech(3.0, 20 + i)])), 1600):
                await ws.send(chunk)
            started.set()
            events = []
            try:
                async for message in ws:
                    events.append(json.loads(message))
            except ConnectionClosed:
                pass
            return events, ws.close_code

    async def scenario():
        flags = [asyncio.Event() for _ in range(3)]
        tasks = [asyncio.create_task(talker(i, flags[i])) for i in range(3)]
        for flag in flags:
            await flag.wait()
        await asyncio.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())
    code, err = server.stop()
    assert code == 0, err
    for events, close_code in results:
        assert close_code == 1001
        assert [e["type"] for e in events if e["type"] in ("speech_end", "final")] == ["speech_end", "final"]


def test_refusals_are_logged_with_the_peer_and_never_the_token(tmp_path, model):
    server = Serve(tmp_path, model)
    secret = "a-wrong-but-secret-token-000000000"

    async def attempts():
        for headers in ({"Authorization": f"Bearer {secret}"}, {}):
            with pytest.raises(InvalidStatus):
                async with connect(server.url("dev-1"), additional_headers=headers):
                    pass

    asyncio.run(attempts())
    _, err = server.stop()
    assert "refused a stream from 127.0.0.1:" in err and "401 Unauthorized" in err
    assert secret not in err and TOKEN not in err and KIOSK_TOKEN not in err


def test_a_client_faster_than_real_time_is_slowed_by_not_reading_its_socket(tmp_path, model):
    """6 s of audio sent flat out with max_ahead_s 1: the server reads it over about 5 s, queueing nothing."""
    server = Serve(tmp_path, model, max_ahead_s=1.0)
    started = time.monotonic()
    try:
        events, code = asyncio.run(stream(server.url(), frames(s16(np.concatenate([turn(7)] * 3 + [silence(2.0)]))),
                                          headers=server.headers()))
    finally:
        server.stop()
    assert code == 1000 and len(finals(events)) == 3
    assert time.monotonic() - started >= 6.4 - 1.0 - 0.5  # paced to real time, give or take a frame


def test_a_stream_is_refused_while_the_model_is_at_capacity(tmp_path):
    """Admission control: when finals already take most of the model's time, one more stream would slow
    every stream's finals down, so it is told to come back (503, Retry-After)."""
    from agent.server.loop import NetworkLoop
    from agent.settings import Settings

    class AtCapacity:
        def load(self):
            return {"finals": 0.95, "partials": 0.0}

    settings = Settings()
    settings.server.port, settings.server.host, settings.server.auth = free_port(), "127.0.0.1", "none"
    settings.server.enabled = True
    server = NetworkLoop(settings, recognizer=None, decoder=AtCapacity(), session="00000000")
    server.start()

    async def attempt():
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{settings.server.port}/ws/stt/dev"):
                pass
        return info.value.response

    try:
        response = asyncio.run(attempt())
    finally:
        server.stop(1.0)
    assert response.status_code == 503 and response.headers["Retry-After"] == "30"
    assert b"at capacity (95% of the last minute on finals)" in response.body
    assert server.refused == {"busy": 1}


def test_a_client_that_stops_gets_its_final_while_the_model_is_behind(tmp_path, model):
    """The model is behind (each decode takes 1.5 s): a stop still gets the last final, although that takes
    longer than pipeline.drain_timeout_s, which bounds only a shutdown."""
    import threading

    from agent.pipeline.scheduler import DecodeScheduler
    from agent.recognizer import load_recognizer
    from agent.server.loop import NetworkLoop
    from agent.recognizer.settings import RecognizerSettings
    from agent.settings import Settings

    recognizer = load_recognizer(RecognizerSettings(model_dir=str(model), warmup=False))
    slow = threading.Event()

    def decode(audios, options, offsets, cancel):
        slow.wait(1.5)  # never set: a model far behind
        return recognizer.recognize_batch(audios, options, offsets, cancel=cancel)

    decoder = DecodeScheduler(decode)
    decoder.start()
    settings = Settings()
    settings.vad.kind, settings.pipeline.drain_timeout_s, settings.pipeline.speculative_final = "energy", 0.2, False
    settings.server.port, settings.server.host, settings.server.auth = free_port(), "127.0.0.1", "none"
    settings.server.idle_timeout_s = 10.0
    settings.server.enabled = True
    server = NetworkLoop(settings, recognizer, decoder, session="00000000")
    server.start()
    try:
        events, code = asyncio.run(stream(f"ws://127.0.0.1:{settings.server.port}/ws/stt/dev",
                                          frames(s16(np.concatenate([silence(0.3), speech(1.0)])))))
    finally:
        server.stop(1.0)
        decoder.stop(1.0)
    assert code == 1000 and len(finals(events)) == 1


# ---------------------------------------------------------------------------------- the network edge
def test_a_boot_storm_of_silent_devices_gets_no_more_than_max_streams(tmp_path, model):
    """Admission counts a connection from the moment it is accepted, before its first message."""
    server = Serve(tmp_path, model, max_streams=2, idle_timeout_s=20.0)

    async def storm():
        async def one(i):
            try:
                ws = await connect(server.url(f"boot-{i}"), additional_headers=server.headers())
                return ws
            except InvalidStatus as exc:
                return exc.response

        results = await asyncio.gather(*(one(i) for i in range(8)))
        opened = [r for r in results if not hasattr(r, "status_code")]
        refused = [r for r in results if hasattr(r, "status_code")]
        for ws in opened:
            await ws.close()
        return opened, refused

    try:
        opened, refused = asyncio.run(storm())
    finally:
        server.stop()
    assert len(opened) == 2 and len(refused) == 6
    assert all(r.status_code == 503 and r.headers["Retry-After"] for r in refused)


@needs_mosquitto
def test_reconnects_and_racing_connections_of_one_device_never_repeat_a_number(tmp_path, model, broker):
    """100 reconnects, then 3 connections racing: one stream at a time (the others get 4000), and seq and
    utterance ids go on and never repeat, on the socket and on MQTT."""
    server = Serve(tmp_path, model, broker=broker)
    sub = Subscriber(broker, "stt-agent/dev-1/#")

    async def reconnects():
        events = []
        for i in range(100):
            chunks = frames(s16(turn(i, talk=0.6, pause=0.8))) if i % 10 == 0 else []
            got, code = await stream(server.url(), chunks, headers=server.headers())
            assert code == 1000
            events += got
        return events

    async def race():
        async def one(seed, delay):
            await asyncio.sleep(delay)
            return await stream(server.url(), frames(s16(turn(seed, talk=0.6, pause=0.8))), headers=server.headers(),
                                chunk_delay=0.05)
        return await asyncio.gather(one(1, 0.0), one(2, 0.05), one(3, 0.1))

    try:
        events = asyncio.run(reconnects())
        raced = asyncio.run(race())
        events += [e for got, _ in raced for e in got]
        codes = sorted(code for _, code in raced)
        sub.wait_for(lambda ms: sum(m.topic.endswith("/stt/final") for m in ms) >= len(finals(events)), timeout=20)
    finally:
        server.stop()
        sub.close()
    assert codes == [1000, 4000, 4000]
    seqs = [e["seq"] for e in events]
    assert len(set(seqs)) == len(seqs) and len({e["session"] for e in events}) == 1
    ids = [e["utterance_id"] for e in finals(events)]
    assert len(finals(events)) >= 11 and len(set(ids)) == len(ids)
    on_mqtt = [json.loads(m.payload) for m in sub.messages if m.payload.startswith(b"{")]
    keys = [(p["session"], p["seq"]) for p in on_mqtt if "seq" in p]
    assert len(set(keys)) == len(keys)
    mqtt_ids = [p["utterance_id"] for p in on_mqtt if p.get("type") == "final"]
    assert sorted(mqtt_ids) == sorted(ids)


def test_sigterm_with_a_connection_that_never_spoke_exits_cleanly(tmp_path, model):
    server = Serve(tmp_path, model)

    async def silent():
        async with connect(server.url(), additional_headers=server.headers()) as ws:
            await asyncio.sleep(0.3)
            server.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(ws.recv(), 15)
            except ConnectionClosed:
                pass
            return ws.close_code

    code = asyncio.run(silent())
    returncode, err = server.stop()
    assert code == 1001 and returncode == 0, err
    assert "Traceback" not in err and "failed" not in err


def test_half_open_connections_on_a_descriptor_limited_server_cost_a_good_device_nothing(tmp_path, model):
    """The server may open 200 files; 300 connections that never finish their request must neither take
    them all nor flood the log, and a device that speaks connects at once."""
    import resource
    import socket
    import sys

    from helpers import ROOT

    port = free_port()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n", encoding="utf-8")
    config = tmp_path / "serve.yaml"
    config.write_text(f"recognizer:\n  model_dir: {model}\nvad:\n  kind: energy\nserver:\n  port: {port}\n"
                      f"  host: 127.0.0.1\n  tokens_file: {tokens}\n  max_streams: 4\n  max_pending: 32\n"
                      "  handshake_timeout_s: 5\n", encoding="utf-8")

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--config", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    half = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "serve did not listen"
                time.sleep(0.1)
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /ws/stt/x HTTP/1.1\r\nHost: a\r\n")  # never finished
            half.append(s)
        started = time.monotonic()
        events, code = asyncio.run(stream(f"ws://127.0.0.1:{port}/ws/stt/good", frames(s16(turn(4))),
                                          headers={"Authorization": f"Bearer {TOKEN}"}))
        took = time.monotonic() - started
    finally:
        for s in half:
            s.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert code == 1000 and len(finals(events)) == 1 and took < 3.0
    assert proc.returncode == 0, err
    assert "Traceback" not in err and len(err.splitlines()) < 40, err[-3000:]


def test_serve_with_wyoming_and_a_tokens_file_serves_both(tmp_path, model):
    wyoming_port = free_port()
    server = Serve(tmp_path, model, **{"wyoming": f"\n    enabled: true\n    zeroconf: false\n"
                                                  f"    uri: tcp://127.0.0.1:{wyoming_port}"})
    try:
        events, code = asyncio.run(stream(server.url(), frames(s16(turn(5))), headers=server.headers()))
        import socket

        socket.create_connection(("127.0.0.1", wyoming_port), timeout=5).close()
    finally:
        server.stop()
    assert code == 1000 and len(finals(events)) == 1


def test_device_ids_with_invisible_or_bidi_characters_are_refused(serve):
    for device in ("dev\u200b1", "dev\u202e1", "dev\u2066x"):
        async def attempt(device=device):
            with pytest.raises(InvalidStatus) as info:
                async with connect(serve.url(urllib.parse.quote(device)), additional_headers=serve.headers()):
                    pass
            return info.value.response

        response = asyncio.run(attempt())
        assert response.status_code == 400 and b"U+" in response.body


@needs_mosquitto
def test_mqtt_commands_reach_a_network_device_through_its_stream(tmp_path, model, broker):
    """mute and unmute on <prefix>/dev-1/cmd apply to that device's stream; once it has left, a command for it
    is answered not_connected on its error topic."""
    import paho.mqtt.publish as publish

    server = Serve(tmp_path, model, broker=broker)
    sub = Subscriber(broker, "stt-agent/dev-1/#")

    def command(payload):
        publish.single("stt-agent/dev-1/cmd", json.dumps(payload), qos=1, hostname=broker.host, port=broker.port)

    async def scenario():
        async with connect(server.url(), additional_headers=server.headers()) as ws:
            events = []

            async def read():
                async for message in ws:
                    events.append(json.loads(message))

            async def say(seed):
                for chunk in frames(s16(turn(seed))):
                    await ws.send(chunk)
                    await asyncio.sleep(0.05)

            async def until_finals(n):
                deadline = time.monotonic() + 20
                while len(finals(events)) < n and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)

            reader = asyncio.create_task(read())
            await say(1)
            await until_finals(1)
            command({"command": "mute"})
            await asyncio.sleep(1.0)
            await say(2)  # muted: never decoded
            command({"command": "unmute"})
            await asyncio.sleep(1.0)
            await say(3)
            await until_finals(2)
            await ws.send(json.dumps({"type": "stop"}))
            await reader
            return events

    try:
        events = asyncio.run(scenario())
        command({"command": "mute", "id": "after"})
        (answer,) = sub.wait_topic("stt-agent/dev-1/error", timeout=10)
    finally:
        server.stop()
        sub.close()
    assert len(finals(events)) == 2 and len([e for e in events if e["type"] == "speech_start"]) == 2
    answer = json.loads(answer.payload)
    assert (answer["code"], answer["request_id"]) == ("not_connected", "after")
    assert answer["seq"] > max(e["seq"] for e in events)  # numbered among the device's own events
