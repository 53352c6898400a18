"""The Wyoming speech-to-text server, driven by the `wyoming` package's own async TCP client exactly as
Home Assistant's wyoming STT provider drives it: describe; then per utterance a new connection,
transcribe, audio-start, chunks (while reading), audio-stop, the transcript."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import numpy as np
import pytest

import tiny_models as tm
from helpers import run, start_serve, write_wav
from mosquitto_fixture import Subscriber, free_port, needs_mosquitto

pytest.importorskip("wyoming")
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop  # noqa: E402
from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.error import Error  # noqa: E402
from wyoming.event import Event, async_read_event  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402

RATE = 16000


def turn(seed=0, talk=1.2, before=0.3, after=1.0):
    rng = np.random.default_rng(seed)
    return np.concatenate([np.zeros(int(before * RATE)), rng.standard_normal(int(talk * RATE)) * 6000,
                           np.zeros(int(after * RATE))])


def pcm(samples) -> bytes:
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


class Wyoming:
    def __init__(self, tmp_path, model, broker=None, server=None, **wyoming):
        self.port = free_port()
        self.model = model
        options = {"enabled": "true", "uri": f"tcp://127.0.0.1:{self.port}", "zeroconf": "false",
                   "endpoint_silence_ms": 400, **wyoming}
        server = {"idle_timeout_s": 3, **(server or {})}
        lines = [f"recognizer:\n  model_dir: {model}", "vad:\n  kind: energy",
                 "server:\n" + "".join(f"  {k}: {v}\n" for k, v in server.items()) + "  wyoming:\n"
                 + "".join(f"    {k}: {v}\n" for k, v in options.items())]
        if broker is not None:
            lines.append(f"mqtt:\n  enabled: true\n  host: {broker.host}\n  port: {broker.port}\n  device_id: box")
        config = tmp_path / "wyoming.yaml"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.proc = start_serve(config, self.port)

    def client(self) -> AsyncTcpClient:
        return AsyncTcpClient("127.0.0.1", self.port)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()


@pytest.fixture(scope="module")
def wyoming_server(tmp_path_factory, model):
    server = Wyoming(tmp_path_factory.mktemp("wyoming"), model)
    yield server
    server.stop()


async def ha_utterance(server, audio: bytes, language="en", chunk=2048, pace=0.0, send_stop_at_end=True):
    """What Home Assistant's provider does: upload and read at once; the first transcript wins.

    Returns (events read, seconds from the end of the audio upload to the transcript, audio-stop sent?)."""
    events, sent_stop = [], False
    async with server.client() as client:
        await client.write_event(Transcribe(language=language).event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())

        async def upload():
            nonlocal sent_stop
            for i in range(0, len(audio), chunk):
                await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=audio[i:i + chunk]).event())
                if pace:
                    await asyncio.sleep(pace)
            if send_stop_at_end:
                await client.write_event(AudioStop().event())
                sent_stop = True

        async def receive():
            while True:
                event = await client.read_event()
                if event is None:
                    return None
                events.append(event)
                if Transcript.is_type(event.type) or Error.is_type(event.type):
                    return event

        uploading = asyncio.create_task(upload())
        receiving = asyncio.create_task(receive())
        done, _ = await asyncio.wait({uploading, receiving}, return_when=asyncio.FIRST_COMPLETED)
        finished_upload = time.monotonic() if uploading in done else None
        if receiving not in done:
            await receiving
        uploading.cancel()
        return events, sent_stop, finished_upload


def test_describe_lists_one_asr_program_with_the_languages_ha_asks_for(wyoming_server):
    async def describe():
        async with wyoming_server.client() as client:
            await client.write_event(Describe().event())
            return Info.from_event(await client.read_event())

    info = asyncio.run(describe())
    (program,) = info.asr
    assert program.name == "stt-agent" and program.installed and program.version
    assert program.supports_transcript_streaming and not program.requires_external_vad
    (model,) = program.models
    assert set(model.languages) == {"zh", "zh-cn", "zh-tw", "zh-hk", "yue", "en", "ja", "ko"}
    assert model.installed and model.attribution.name


def test_the_transcript_comes_when_the_speaker_stops_before_audio_stop(wyoming_server, tmp_path):
    """requires_external_vad false: our VAD ends the utterance; HA stops uploading when the transcript comes."""
    audio = turn(1, after=3.0)  # 3 s of silence after the speech: the endpoint is heard long before the end
    events, sent_stop, _ = asyncio.run(ha_utterance(wyoming_server, pcm(audio), pace=0.064))
    assert not sent_stop  # the transcript arrived while audio was still being sent
    transcript = Transcript.from_event(events[-1])
    assert transcript.text.startswith(tm.PATTERN_TEXT) and transcript.language == "en"
    data = events[-1].data
    for key in ("language_scores", "emotion", "emotion_scores", "event", "event_scores", "confidence", "timing"):
        assert key in data, key
    assert data["emotion"] == "happy" and data["timing"]["endpoint_delay_ms"] is not None
    # the text is what `stt-agent transcribe` gives for the same audio
    start, end = data["audio_start"], data["audio_end"]
    clip = write_wav(tmp_path / "clip.wav", audio[round(start * RATE):round(end * RATE)])
    proc = run("transcribe", str(clip), "--model", str(wyoming_server.model), "--json")
    assert json.loads(proc.stdout)["text"] == transcript.text


def test_streaming_clients_get_start_chunks_stop_then_the_transcript(wyoming_server):
    audio = turn(2, talk=2.5, after=1.5)
    events, _, _ = asyncio.run(ha_utterance(wyoming_server, pcm(audio), pace=0.064))
    types = [e.type for e in events]
    assert types[0] == "transcript-start" and types[-2:] == ["transcript-stop", "transcript"]
    assert set(types[1:-2]) <= {"transcript-chunk"}
    chunks = "".join(TranscriptChunk.from_event(e).text for e in events if TranscriptChunk.is_type(e.type))
    assert chunks == Transcript.from_event(events[-1]).text
    assert TranscriptStart.from_event(events[0]).language == "en"
    assert TranscriptStop.is_type(events[-2].type)


def test_audio_stop_before_the_endpoint_gives_the_transcript_of_what_was_sent(wyoming_server):
    audio = turn(3, after=0.1)  # the speech runs to the end: no silence to end it
    events, sent_stop, _ = asyncio.run(ha_utterance(wyoming_server, pcm(audio)))
    assert sent_stop and Transcript.from_event(events[-1]).text.startswith(tm.PATTERN_TEXT)


def test_silence_only_gives_an_empty_transcript(wyoming_server):
    events, _, _ = asyncio.run(ha_utterance(wyoming_server, pcm(np.zeros(RATE))))
    assert Transcript.from_event(events[-1]).text == ""


def test_any_rate_width_and_channels_are_converted(wyoming_server):
    import soxr

    audio = soxr.resample(turn(4, after=1.5).astype(np.float32), RATE, 22050)
    stereo = np.stack([audio, audio], axis=1).reshape(-1)

    async def utterance():
        async with wyoming_server.client() as client:
            await client.write_event(Transcribe(language="zh-hk").event())
            await client.write_event(AudioStart(rate=22050, width=4, channels=2).event())
            data = (np.clip(stereo, -32768, 32767) * 65536).astype("<i4").tobytes()
            for i in range(0, len(data), 8192):
                await client.write_event(AudioChunk(rate=22050, width=4, channels=2, audio=data[i:i + 8192]).event())
            await client.write_event(AudioStop().event())
            while True:
                event = await client.read_event()
                if Transcript.is_type(event.type):
                    return event

    event = asyncio.run(utterance())
    transcript = Transcript.from_event(event)
    assert transcript.text.startswith(tm.PATTERN_TEXT)
    assert transcript.language == "zh-hk"  # as asked; the model decoded Cantonese (yue)
    assert event.data["language_scores"]


@pytest.mark.parametrize("events, code", [
    ([AudioChunk(rate=RATE, width=2, channels=1, audio=b"\0\0").event()], "no_audio_start"),
    ([AudioStart(rate=RATE, width=2, channels=1).event()], "no_transcribe"),
])
def test_out_of_order_events_get_a_clear_error(wyoming_server, events, code):
    async def send():
        async with wyoming_server.client() as client:
            for event in events:
                await client.write_event(event)
            return Error.from_event(await client.read_event())

    error = asyncio.run(send())
    assert error.code == code and error.text


def test_an_oversized_payload_is_refused_and_nothing_else_is_disturbed(wyoming_server):
    async def attack():
        reader, writer = await asyncio.open_connection("127.0.0.1", wyoming_server.port)
        header = {"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1},
                  "payload_length": 1 << 30}  # 1 GiB announced
        writer.write((json.dumps(header) + "\n").encode())
        await writer.drain()
        answer = await async_read_event(reader)
        closed = await reader.read() == b""
        writer.close()
        return answer, closed

    answer, closed = asyncio.run(attack())
    assert Error.is_type(answer.type) and Error.from_event(answer).code == "too_large" and closed
    events, _, _ = asyncio.run(ha_utterance(wyoming_server, pcm(turn(5, after=1.5)), pace=0.064))
    assert Transcript.from_event(events[-1]).text.startswith(tm.PATTERN_TEXT)


def test_a_hundred_idle_connections_disturb_nobody(wyoming_server):
    async def scenario():
        idle = [await asyncio.open_connection("127.0.0.1", wyoming_server.port) for _ in range(100)]
        events, _, _ = await ha_utterance(wyoming_server, pcm(turn(6, after=1.5)), pace=0.064)
        closed = 0
        for reader, writer in idle:
            try:
                closed += await asyncio.wait_for(reader.read(), 10) == b""  # closed at server.idle_timeout_s
            finally:
                writer.close()
        return events, closed

    events, closed = asyncio.run(scenario())
    assert Transcript.from_event(events[-1]).text.startswith(tm.PATTERN_TEXT)
    assert closed == 100


@needs_mosquitto
def test_the_utterance_also_goes_to_mqtt_even_when_the_client_drops_mid_utterance(tmp_path, model, broker):
    server = Wyoming(tmp_path, model, broker=broker, device_id="ha-kitchen")
    sub = Subscriber(broker, "stt-agent/ha-kitchen/#")

    async def drop():
        async with server.client() as client:
            await client.write_event(Transcribe(language="en").event())
            await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
            audio = pcm(np.concatenate([np.zeros(4800), np.random.default_rng(7).standard_normal(RATE) * 6000]))
            for i in range(0, len(audio), 2048):
                await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=audio[i:i + 2048]).event())
        # the connection is gone mid-utterance

    try:
        asyncio.run(drop())
        (final,) = sub.wait_topic("stt-agent/ha-kitchen/stt/final", timeout=20)
        assert json.loads(final.payload)["text"].startswith(tm.PATTERN_TEXT)
        assert sub.wait_topic("stt-agent/ha-kitchen/emotion", timeout=5)
    finally:
        server.stop()
        sub.close()


def test_sigterm_finishes_an_open_utterance_and_sends_its_transcript(tmp_path, model):
    server = Wyoming(tmp_path, model, endpoint="false")

    async def scenario():
        async with server.client() as client:
            await client.write_event(Transcribe(language="en").event())
            await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
            audio = pcm(turn(8, after=0.0))
            for i in range(0, len(audio), 2048):
                await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=audio[i:i + 2048]).event())
            await asyncio.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            while True:
                event = await client.read_event()
                if event is None or Transcript.is_type(event.type):
                    return event

    event = asyncio.run(scenario())
    server.stop()
    assert server.proc.returncode == 0
    assert Transcript.from_event(event).text.startswith(tm.PATTERN_TEXT)


def test_the_service_is_announced_by_zeroconf_where_multicast_works(tmp_path, model):
    zeroconf = pytest.importorskip("zeroconf")
    server = Wyoming(tmp_path, model, zeroconf="true")
    found = []
    try:
        zc = zeroconf.Zeroconf(interfaces=zeroconf.InterfaceChoice.All)
        try:
            browser = zeroconf.ServiceBrowser(zc, "_wyoming._tcp.local.", handlers=[
                lambda zeroconf, service_type, name, state_change: found.append(name)])
            deadline = time.monotonic() + 5
            while not found and time.monotonic() < deadline:
                time.sleep(0.1)
            browser.cancel()
            info = zc.get_service_info("_wyoming._tcp.local.", found[0], timeout=3000) if found else None
        finally:
            zc.close()
    finally:
        _, err = server.stop()
    if not found:
        assert "zeroconf announcement failed" in err or "Wyoming speech-to-text at" in err
        pytest.skip("no multicast on this machine: the announcement was not seen (the server said so or tried)")
    assert found[0].startswith("stt-agent-") and info is not None and info.port == server.port


def test_audio_stop_gets_its_transcript_while_the_model_is_behind(model):
    """Each decode takes 1.5 s, longer than pipeline.drain_timeout_s: the transcript still comes, not an
    empty one."""
    import threading

    from agent.pipeline.scheduler import DecodeScheduler
    from agent.recognizer import load_recognizer
    from agent.server.loop import NetworkLoop
    from agent.recognizer.settings import RecognizerSettings
    from agent.settings import Settings

    recognizer = load_recognizer(RecognizerSettings(model_dir=str(model), warmup=False))
    never = threading.Event()

    def decode(audios, options, offsets, cancel):
        never.wait(1.5)  # a model far behind
        return recognizer.recognize_batch(audios, options, offsets, cancel=cancel)

    decoder = DecodeScheduler(decode)
    decoder.start()
    settings = Settings()
    settings.vad.kind, settings.pipeline.drain_timeout_s, settings.pipeline.speculative_final = "energy", 0.2, False
    settings.server.idle_timeout_s = 10.0
    port = free_port()
    settings.server.wyoming.enabled, settings.server.wyoming.zeroconf = True, False
    settings.server.wyoming.uri, settings.server.wyoming.endpoint = f"tcp://127.0.0.1:{port}", False
    server = NetworkLoop(settings, recognizer, decoder, session="00000000")
    server.start()

    class Client:
        def client(self):
            return AsyncTcpClient("127.0.0.1", port)

    try:
        events, sent_stop, _ = asyncio.run(ha_utterance(Client(), pcm(turn(talk=1.0, after=0.1))))
    finally:
        server.stop(1.0)
        decoder.stop(1.0)
    transcript = Transcript.from_event(events[-1])
    assert sent_stop and transcript.text


# ---------------------------------------------------------------------------------- malformed input
def _header(header: dict, data: bytes = b"", payload: bytes = b"") -> bytes:
    return (json.dumps(header) + "\n").encode() + data + payload


START = {"type": "audio-start", "data": {"rate": RATE, "width": 2, "channels": 1}}
MALFORMED = [
    (b"not json\n", "bad_event"),
    (b"[1, 2]\n", "bad_event"),
    (_header({"type": 7}), "bad_event"),
    (_header({"type": "describe", "data": [1]}), "bad_event"),
    (_header({"type": "describe", "data": "x"}), "bad_event"),
    (_header({"type": "describe", "data_length": "12"}), "bad_event"),
    (_header({"type": "describe", "data_length": [3]}), "bad_event"),
    (_header({"type": "describe", "data_length": -1}), "bad_event"),
    (_header({"type": "describe", "data_length": 3}, b"[1]"), "bad_event"),
    (_header({"type": "describe", "data_length": 5}, b"nope!"), "bad_event"),
    (_header({"type": "audio-chunk", "payload_length": "2"}), "bad_event"),
    (_header({"type": "audio-chunk", "payload_length": 1.5}), "bad_event"),
    (_header({"type": "audio-chunk", "payload_length": True}), "bad_event"),
    (_header({"type": "describe", "data_length": 1 << 40}), "too_large"),
    (_header({"type": "transcribe", "data": {"language": 5}}), "bad_event"),
    (_header({"type": "transcribe", "data": {"transcript_names": "Kitchen"}}), "bad_event"),
    (_header({"type": "select-program", "data": {"name": "whisper"}}), "unknown_program"),
]
AFTER_TRANSCRIBE = [  # each follows a good transcribe
    (_header({"type": "audio-start", "data": {"width": 2, "channels": 1}}), "bad_audio"),
    (_header({"type": "audio-start", "data": {"rate": "16000", "width": 2, "channels": 1}}), "bad_audio"),
    (_header({"type": "audio-start", "data": {"rate": RATE, "width": 2, "channels": 2 ** 70}}), "bad_audio"),
    (_header({"type": "audio-start", "data": {"rate": RATE, "width": 3.0, "channels": 1}}), "bad_audio"),
    (_header({"type": "audio-start", "data": {"rate": 10 ** 9, "width": 2, "channels": 1}}), "bad_audio"),
    (_header({"type": "audio-start", "data": {"rate": RATE, "width": 2, "channels": 0}}), "bad_audio"),
    (_header({"type": "audio-start", "data": {"rate": True, "width": 2, "channels": 1}}), "bad_audio"),
    (_header(START) + _header({"type": "audio-chunk", "data": {"rate": RATE, "width": 2}, "payload_length": 2},
                              payload=b"\0\0"), "bad_audio"),
    (_header(START) + _header({"type": "audio-chunk", "data": {"rate": 8000, "width": 2, "channels": 1},
                               "payload_length": 2}, payload=b"\0\0"), "bad_audio"),
]


async def _answer(server, raw: bytes, transcribe=False):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    if transcribe:
        writer.write(_header({"type": "transcribe", "data": {"language": "en"}}))
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(async_read_event(reader), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("raw, code", MALFORMED + [(raw, code) for raw, code in AFTER_TRANSCRIBE])
def test_every_malformed_event_is_answered_with_an_error(wyoming_server, raw, code):
    after = any(raw is r for r, _ in AFTER_TRANSCRIBE)
    answer = asyncio.run(_answer(wyoming_server, raw, transcribe=after))
    assert answer is not None and Error.is_type(answer.type), answer
    error = Error.from_event(answer)
    assert error.code == code and error.text


def test_malformed_input_leaves_no_traceback_and_the_server_serves_on(tmp_path, model):
    server = Wyoming(tmp_path, model)
    try:
        for raw, _ in MALFORMED:
            asyncio.run(_answer(server, raw))
        for raw, _ in AFTER_TRANSCRIBE:
            asyncio.run(_answer(server, raw, transcribe=True))
        events, _, _ = asyncio.run(ha_utterance(server, pcm(turn(9, after=1.5)), pace=0.032))
    finally:
        out, err = server.stop()
    assert Transcript.from_event(events[-1]).text.startswith(tm.PATTERN_TEXT)
    assert "Traceback" not in err and server.proc.returncode == 0, err[-3000:]


def test_a_payload_that_arrives_late_keeps_the_connection_in_step(wyoming_server):
    """A Wi-Fi retransmission: a chunk's payload 0.7 s after its header."""
    audio = pcm(turn(10, after=1.5))

    async def late():
        reader, writer = await asyncio.open_connection("127.0.0.1", wyoming_server.port)
        writer.write(_header({"type": "transcribe", "data": {"language": "en"}}) + _header(START))
        for i in range(0, len(audio), 4096):
            part = audio[i:i + 4096]
            writer.write(_header({"type": "audio-chunk", "data": {"rate": RATE, "width": 2, "channels": 1},
                                  "payload_length": len(part)}))
            if i == 4096 * 3:
                await writer.drain()
                await asyncio.sleep(0.7)
            writer.write(part)
        writer.write(_header({"type": "audio-stop"}))
        await writer.drain()
        while True:
            event = await asyncio.wait_for(async_read_event(reader), 20)
            if event is None or Transcript.is_type(event.type) or Error.is_type(event.type):
                writer.close()
                return event

    event = asyncio.run(late())
    assert Transcript.is_type(event.type) and Transcript.from_event(event).text.startswith(tm.PATTERN_TEXT)


def test_a_command_uploaded_at_once_gets_the_transcript_of_one_streamed_in_real_time(tmp_path, model):
    """12 s of speech sent as fast as the socket takes it: a transcript of all of it, not an empty one (the
    audio is never overwritten: the upload waits instead)."""
    server = Wyoming(tmp_path, model, endpoint="false")
    rng = np.random.default_rng(11)
    audio = np.concatenate([np.zeros(4800), rng.standard_normal(12 * RATE) * 6000, np.zeros(8000)])
    try:
        events, sent_stop, _ = asyncio.run(ha_utterance(server, pcm(audio), chunk=8192))
    finally:
        server.stop()
    transcript = events[-1]
    assert sent_stop and Transcript.from_event(transcript).text.startswith(tm.PATTERN_TEXT)
    assert transcript.data["audio_start"] <= 0.3 and transcript.data["audio_end"] >= 12.3  # every second of it


def test_fifty_clients_at_once_each_get_their_own_transcript_and_numbers(tmp_path, model):
    server = Wyoming(tmp_path, model, server={"max_streams": 64}, endpoint="false")

    async def everyone():
        return await asyncio.gather(*(ha_utterance(server, pcm(turn(i, talk=0.6, after=0.3)), chunk=4096)
                                      for i in range(50)))

    try:
        results = asyncio.run(everyone())
    finally:
        server.stop()
    transcripts = [events[-1] for events, _, _ in results]
    assert [t.data for t in transcripts if not Transcript.is_type(t.type)] == []
    assert all(Transcript.is_type(t.type) and t.data["text"].startswith(tm.PATTERN_TEXT) for t in transcripts)
    keys = {(t.data["device_id"], t.data["utterance_id"]) for t in transcripts}
    assert len(keys) == 50


def test_connections_that_only_ping_do_not_lock_home_assistant_out(tmp_path, model):
    server = Wyoming(tmp_path, model, server={"max_streams": 2, "max_pending": 4})

    async def scenario():
        pingers = []
        for _ in range(8):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(_header({"type": "ping"}))
            await writer.drain()
            pingers.append(writer)
        events, _, _ = await ha_utterance(server, pcm(turn(12, after=1.5)), pace=0.032)
        for writer in pingers:
            writer.close()
        return events

    try:
        events = asyncio.run(scenario())
    finally:
        server.stop()
    assert Transcript.from_event(events[-1]).text.startswith(tm.PATTERN_TEXT)


def test_audio_after_an_endpointed_transcript_is_ignored_quietly(wyoming_server):
    audio = pcm(turn(13, after=3.0))

    async def scenario():
        async with wyoming_server.client() as client:
            await client.write_event(Transcribe(language="en", transcript_names=["Kitchen Light"]).event())
            await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
            got = []
            for i in range(0, len(audio), 2048):
                await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=audio[i:i + 2048]).event())
                await asyncio.sleep(0.03)
            await client.write_event(AudioStop().event())
            await client.write_event(Describe().event())
            while True:
                event = await asyncio.wait_for(client.read_event(), 20)
                got.append(event)
                if Info.is_type(event.type):
                    return got

    events = asyncio.run(scenario())
    assert not any(Error.is_type(e.type) for e in events)
    assert sum(Transcript.is_type(e.type) for e in events) == 1


def test_a_language_the_model_does_not_have_falls_back_to_detection(wyoming_server):
    events, _, _ = asyncio.run(ha_utterance(wyoming_server, pcm(turn(14, after=1.5)), language="de", pace=0.032))
    transcript = Transcript.from_event(events[-1])
    assert transcript.text.startswith(tm.PATTERN_TEXT) and transcript.language != "de"


def test_ping_gets_pong(wyoming_server):
    async def ping():
        async with wyoming_server.client() as client:
            await client.write_event(Event(type="ping", data={"text": "hi"}))
            return await client.read_event()

    assert asyncio.run(ping()).type == "pong"


def test_transcript_names_and_terms_travel_with_the_utterance_to_the_decoder(model):
    from agent.pipeline.scheduler import DecodeScheduler
    from agent.recognizer import load_recognizer
    from agent.server.loop import NetworkLoop
    from agent.recognizer.settings import RecognizerSettings
    from agent.settings import Settings

    recognizer = load_recognizer(RecognizerSettings(model_dir=str(model), warmup=False))
    asked = []

    def decode(audios, options, offsets, cancel):
        asked.extend(options)
        return recognizer.recognize_batch(audios, options, offsets, cancel=cancel)

    decoder = DecodeScheduler(decode)
    decoder.start()
    settings = Settings()
    settings.vad.kind = "energy"
    port = free_port()
    settings.server.wyoming.enabled, settings.server.wyoming.zeroconf = True, False
    settings.server.wyoming.uri, settings.server.wyoming.endpoint = f"tcp://127.0.0.1:{port}", False
    server = NetworkLoop(settings, recognizer, decoder, session="00000000")
    server.start()

    async def utterance():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Transcribe(language="en", transcript_names=["Kitchen Light"],
                                                transcript_terms=["dimmer"]).event())
            await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
            await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=pcm(turn(15, after=0.3))).event())
            await client.write_event(AudioStop().event())
            while not Transcript.is_type((event := await client.read_event()).type):
                pass
            return event

    try:
        event = asyncio.run(utterance())
    finally:
        server.stop(1.0)
        decoder.stop(1.0)
    assert Transcript.from_event(event).text
    assert asked and all(o.hotwords == (("Kitchen Light", 2.0), ("dimmer", 1.0)) for o in asked)
