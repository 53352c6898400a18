"""/metrics, /healthz and /readyz of `stt-agent serve`: the real server process, real WebSocket clients
over loopback, a real broker, scrapes parsed by prometheus_client's own parser.

Counters move after a stream's final (and the microphone's, with `run`); /readyz says 503 while
max_streams devices are connected and 200 once they left; /healthz says 503 and why while a decode
is stuck; refusals are counted by reason; no device id is a label unless configured; the probes need
no token and count neither as refusals nor as pending connections; the container's HEALTHCHECK asks
/healthz, or reads the health file where nothing listens.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers import stream_and_read, write_wav
from mosquitto_fixture import free_port, needs_mosquitto

prometheus_client = pytest.importorskip("prometheus_client")
websockets = pytest.importorskip("websockets")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
TOKEN = "0123456789abcdef0123456789abcdef"


def turn(seed=0):
    """One utterance the energy VAD finds: 0.3 s silence, 1 s of noise, 1 s of silence (past the endpoint)."""
    noise = np.random.default_rng(seed).standard_normal(RATE) * 6000
    return np.concatenate([np.zeros(int(0.3 * RATE)), noise, np.zeros(RATE)])


def s16(samples) -> bytes:
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


class Serve:
    """`python -m agent serve` with a tiny model, on 127.0.0.1 and a free port."""

    def __init__(self, tmp_path, model, metrics=None, broker=None, wyoming=None, **server):
        self.port = free_port()
        tokens = tmp_path / "tokens"
        tokens.write_text(f"{TOKEN}\n", encoding="utf-8")
        options = {"port": self.port, "host": "127.0.0.1", "tokens_file": str(tokens), "max_ahead_s": 60.0,
                   "idle_timeout_s": 20.0, **server}
        text = "".join(f"  {k}: {v}\n" for k, v in options.items())
        for section, keys in (("metrics", metrics), ("wyoming", wyoming)):
            if keys:
                text += f"  {section}:\n" + "".join(f"    {k}: {v}\n" for k, v in keys.items())
        if broker is not None:
            text += f"mqtt:\n  enabled: true\n  host: {broker.host}\n  port: {broker.port}\n  device_id: box\n"
        config = tmp_path / "serve.yaml"
        config.write_text(f"recognizer:\n  model_dir: {model}\nvad:\n  kind: energy\nserver:\n{text}", encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not listen within 30 s"
                time.sleep(0.05)

    def url(self, device: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/stt/{device}"

    def get(self, path: str) -> tuple:
        """(status, body) of a plain GET with no token."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def scrape(self) -> dict:
        """{(sample name, labels as sorted tuples): value} of one /metrics scrape."""
        status, text = self.get("/metrics")
        assert status == 200, text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stop(self) -> tuple:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def headers(token=TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def stream(url, audio: bytes) -> list:
    """Stream `audio` in 100 ms messages, then stop; the events that came back."""
    async with connect(url, additional_headers=headers()) as ws:
        return await stream_and_read(ws, audio)


async def refused_with(url, token) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=headers(token)):
            pass
    return info.value.response.status_code


@pytest.fixture(scope="module")
def serve(tmp_path_factory, model):
    server = Serve(tmp_path_factory.mktemp("metrics"), model, max_streams=2)
    yield server
    server.stop()


def test_counters_move_after_a_streams_final(serve):
    before = serve.scrape()
    events = asyncio.run(stream(serve.url("kitchen"), s16(np.concatenate([turn(1), turn(2)]))))
    finals = [e for e in events if e["type"] == "final"]
    assert len(finals) == 2
    after = serve.scrape()
    assert value(after, "stt_events_total", type="final") - value(before, "stt_events_total", type="final") == 2
    assert value(after, "stt_events_total", type="speech_end") - value(before, "stt_events_total", type="speech_end") == 2
    count = "stt_end_of_speech_to_final_seconds_count"
    assert value(after, count) - value(before, count) == 2
    total = value(after, "stt_end_of_speech_to_final_seconds_sum") - value(before, "stt_end_of_speech_to_final_seconds_sum")
    assert total == pytest.approx(sum(f["timing"]["endpoint_delay_ms"] for f in finals) / 1000, abs=0.01)
    assert value(after, "stt_end_of_speech_to_final_seconds_bucket", le="+Inf") - \
        value(before, "stt_end_of_speech_to_final_seconds_bucket", le="+Inf") == 2
    sent = 2 * len(turn()) / RATE
    assert value(after, "stt_audio_seconds_total") - value(before, "stt_audio_seconds_total") == pytest.approx(sent)
    assert value(after, "stt_decode_seconds_total", kind="final") > value(before, "stt_decode_seconds_total",
                                                                          kind="final") or \
        value(after, "stt_speculative_finals_total", outcome="used") > value(before, "stt_speculative_finals_total",
                                                                             outcome="used")
    runs = value(after, "stt_decode_batch_size_count") - value(before, "stt_decode_batch_size_count")
    finals_run = value(after, "stt_decode_batch_size_sum") - value(before, "stt_decode_batch_size_sum")
    # finals not taken from a speculative decode ran in batches of one or two (both ready at once)
    assert runs <= finals_run <= 2 and finals_run <= 2 * runs
    assert value(after, "stt_decode_batch_size_bucket", le="+Inf") == value(after, "stt_decode_batch_size_count")
    assert value(after, "stt_streams_opened_total") - value(before, "stt_streams_opened_total") == 1
    assert value(after, "stt_streams_active", protocol="websocket") == 0
    assert value(after, "stt_http_requests_total", route="/ws/stt/{device_id}", status="101") - \
        value(before, "stt_http_requests_total", route="/ws/stt/{device_id}", status="101") == 1
    assert value(after, "stt_streams_max") == 2 and value(after, "stt_decoder_queued_finals") == 0
    assert ("stt_decoder_load", (("kind", "finals"),)) in after
    assert value(after, "process_resident_memory_bytes") > 0


def test_refusals_are_counted_by_reason_and_probes_are_not(serve):
    before = serve.scrape()

    async def attempts():
        return [await refused_with(serve.url("kitchen"), None), await refused_with(serve.url("kitchen"), "wrong"),
                await refused_with(serve.url("a%2Bb"), TOKEN), await refused_with(f"ws://127.0.0.1:{serve.port}/x", TOKEN)]

    assert asyncio.run(attempts()) == [401, 401, 400, 404]
    for path in ("/healthz", "/readyz", "/metrics"):
        assert serve.get(path)[0] == 200  # no token
    after = serve.scrape()

    def moved(reason):
        return value(after, "stt_refusals_total", protocol="websocket", reason=reason) - \
            value(before, "stt_refusals_total", protocol="websocket", reason=reason)

    assert (moved("unauthorized"), moved("bad_device"), moved("bad_path")) == (2, 1, 1)
    refused = sum(v for (name, _), v in after.items() if name == "stt_refusals_total")
    assert refused == sum(v for (name, _), v in before.items() if name == "stt_refusals_total") + 4
    assert value(after, "stt_http_requests_total", route="/ws/stt/{device_id}", status="401") >= 2
    assert value(after, "stt_http_requests_total", route="other", status="404") >= 1
    assert value(after, "stt_http_requests_total", route="/healthz", status="200") >= 1
    assert value(after, "stt_http_requests_total", route="/metrics", status="200") >= 1
    assert value(after, "stt_connections_pending", protocol="websocket") == 0
    assert value(after, "stt_connections_closed_pending_total", protocol="websocket", reason="expired") == 0


def test_no_device_id_is_a_label_by_default(serve):
    asyncio.run(stream(serve.url("secret-room-42"), s16(turn(3))))
    status, text = serve.get("/metrics")
    assert status == 200 and "secret-room-42" not in text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert "device" not in sample.labels, sample


def test_readyz_is_503_while_max_streams_devices_are_connected(serve):
    assert serve.get("/readyz") == (200, "ok\n")

    async def scenario():
        async with connect(serve.url("a"), additional_headers=headers()) as a, \
                connect(serve.url("b"), additional_headers=headers()) as b:
            await a.send(s16(np.zeros(1600)))
            await b.send(s16(np.zeros(1600)))
            await asyncio.sleep(0.3)  # both streaming
            ready = await asyncio.to_thread(serve.get, "/readyz")
            healthy = await asyncio.to_thread(serve.get, "/healthz")
            scraped = await asyncio.to_thread(serve.scrape)
            assert await refused_with(serve.url("c"), TOKEN) == 503  # what /readyz said
        return ready, healthy, scraped

    ready, healthy, scraped = asyncio.run(scenario())
    assert ready[0] == 503 and "server.max_streams is 2" in ready[1]
    assert healthy == (200, "ok\n")
    assert value(scraped, "stt_streams_active", protocol="websocket") == 2
    assert value(scraped, "stt_streams_admitted") == 2
    deadline = time.monotonic() + 10
    while serve.get("/readyz")[0] != 200:  # the streams finish (their finals) and give their places back
        assert time.monotonic() < deadline, serve.get("/readyz")
        time.sleep(0.1)
    assert serve.get("/readyz") == (200, "ok\n")
    after = serve.scrape()
    assert value(after, "stt_refusals_total", protocol="websocket", reason="full") >= 1
    assert value(after, "stt_streams_admitted") == 0


def test_per_device_labels_and_metrics_off(tmp_path, model):
    (tmp_path / "on").mkdir()
    wyoming = {"enabled": "true", "uri": f"tcp://127.0.0.1:{free_port()}", "zeroconf": "false"}
    labelled = Serve(tmp_path / "on", model, metrics={"per_device_labels": "true"}, wyoming=wyoming)
    try:
        asyncio.run(stream(labelled.url("porch"), s16(turn(4))))
        samples = labelled.scrape()
        assert value(samples, "stt_events_total", type="final", device="porch") == 1
        assert value(samples, "stt_end_of_speech_to_final_seconds_count", device="porch") == 1
        # with Wyoming on, its socket and counters too
        assert ("stt_connections_open", (("protocol", "wyoming"),)) in samples
        assert ("stt_wyoming_transcripts_total", ()) in samples
        assert value(samples, "stt_refusals_total", protocol="wyoming", reason="busy") == 0
    finally:
        labelled.stop()
    (tmp_path / "off").mkdir()
    off = Serve(tmp_path / "off", model, metrics={"enabled": "false"})
    try:
        assert off.get("/metrics")[0] == 404
        assert off.get("/healthz") == (200, "ok\n") and off.get("/readyz") == (200, "ok\n")
    finally:
        off.stop()


@needs_mosquitto
def test_mqtt_connection_and_outbox_are_scraped(tmp_path, model, broker):
    server = Serve(tmp_path, model, broker=broker)
    try:
        deadline = time.monotonic() + 20
        while value(server.scrape(), "stt_mqtt_connected") != 1:
            assert time.monotonic() < deadline, "never connected to the broker"
            time.sleep(0.1)
        before = server.scrape()
        asyncio.run(stream(server.url("hall"), s16(turn(7))))
        while True:  # speech_start, speech_end, final, emotion, language (and partials) reach the broker
            after = server.scrape()
            if value(after, "stt_mqtt_published_total") - value(before, "stt_mqtt_published_total") >= 5:
                break
            assert time.monotonic() < deadline + 20, after
            time.sleep(0.1)
        assert ("stt_mqtt_outbox_depth", ()) in after and ("stt_mqtt_inflight", ()) in after
        assert after[("stt_mqtt_outbox_on_disk", ())] == after[("stt_mqtt_outbox_fallback", ())] == 0  # memory
        outbox_drops = {labels: v for (name, labels), v in after.items() if name == "stt_mqtt_outbox_dropped_total"}
        assert len(outbox_drops) == 5 and sum(outbox_drops.values()) == 0, outbox_drops
        assert sum(v for (name, _), v in after.items() if name == "stt_events_dropped_total") == 0
        broker.stop()  # the broker goes away: the gauge says so
        deadline = time.monotonic() + 20
        while value(server.scrape(), "stt_mqtt_connected") != 0:
            assert time.monotonic() < deadline, "still connected to a stopped broker"
            time.sleep(0.1)
    finally:
        server.stop()


def test_the_container_healthcheck_asks_healthz_or_reads_the_health_file(serve, tmp_path):
    """`python -m agent.server.probes`, the image's HEALTHCHECK: the server where one listens, else the file."""
    def check(config_text):
        config = tmp_path / "check.yaml"
        config.write_text(config_text, encoding="utf-8")
        return subprocess.run([sys.executable, "-m", "agent.server.probes", "--config", str(config)],
                              capture_output=True, text=True, cwd=ROOT, timeout=30,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "HTTP_PROXY": "http://127.0.0.1:9"})

    done = check(f"server:\n  port: {serve.port}\n")  # host 0.0.0.0: asks 127.0.0.1
    assert (done.returncode, done.stdout) == (0, f"healthy: http://127.0.0.1:{serve.port}/healthz: ok\n"), done.stderr
    health = tmp_path / "health.json"
    health.write_text(json.dumps({"state": "running", "reason": None, "status": "utterances=0", "pid": 1,
                                  "updated": time.time(), "period_s": 5.0}), encoding="utf-8")
    done = check(f"server:\n  port: {free_port()}\nwatchdog:\n  health_file: {health}\n")  # nothing listens
    assert (done.returncode, done.stdout) == (0, "healthy: running (utterances=0)\n"), done.stderr
    health.unlink()
    done = check(f"server:\n  port: {free_port()}\nwatchdog:\n  health_file: {health}\n")
    assert done.returncode == 1 and done.stdout.startswith("unhealthy: no health file at"), done.stdout
    done = check("server:\n  port: 0\n")
    assert done.returncode == 78 and done.stderr.startswith("error: ") and "server.port" in done.stderr


def test_the_local_pipelines_finals_are_counted_with_the_networks(tmp_path, model):
    """`run` with server.enabled: the box's own audio (a WAV played in real time) and its finals."""
    wav = write_wav(tmp_path / "two.wav", np.concatenate([turn(5), turn(6), np.zeros(3 * RATE)]))
    port = free_port()
    config = tmp_path / "run.yaml"
    config.write_text(f"audio:\n  input: {wav}\n  realtime: true\nrecognizer:\n  model_dir: {model}\n"
                      f"vad:\n  kind: energy\nserver:\n  enabled: true\n  auth: none\n  host: 127.0.0.1\n"
                      f"  port: {port}\n", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--events", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    finals, deadline = 0.0, time.monotonic() + 30
    try:
        while finals < 2 and proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    text = response.read().decode()
                samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                           for family in text_string_to_metric_families(text) for s in family.samples}
                finals = value(samples, "stt_events_total", type="final")
                assert value(samples, "stt_end_of_speech_to_final_seconds_count") == finals
            except (urllib.error.URLError, ConnectionError):
                pass  # not listening yet, or gone since
            time.sleep(0.2)
    finally:
        out, err = proc.communicate(timeout=30)
    assert finals == 2, err
    assert [json.loads(line)["type"] for line in out.splitlines()].count("final") == 2


def test_healthz_is_503_with_the_reason_while_a_decode_is_stuck(model):
    """In process, to hold a decode open: the watchdog's Progress sees a decode start and no end, as with a
    runtime stuck in a kernel; /healthz says so after watchdog.decode_timeout_s, and recovers with it."""
    from agent import settings as agent_settings
    from agent.pipeline.scheduler import DecodeScheduler
    from agent.recognizer import load_recognizer
    from agent.server.loop import NetworkLoop
    from agent.service import Progress

    s = agent_settings.Settings()
    s.recognizer.model_dir = str(model)
    s.server.enabled, s.server.auth, s.server.host, s.server.port = True, "none", "127.0.0.1", free_port()
    s.watchdog.decode_timeout_s = 1.0
    recognizer = load_recognizer(s.recognizer)
    decoder = DecodeScheduler(lambda audios, options, offsets, cancel: recognizer.recognize_batch(
        audios, options, offsets, cancel=cancel))
    progress = Progress(parts=("network",), backlog=decoder.oldest_final_age)
    net = NetworkLoop(s, recognizer, decoder, "0badcafe", progress=progress)
    net.start()

    def get(path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{s.server.port}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        assert get("/healthz") == (200, "ok\n")
        token = progress.decode_started()
        time.sleep(1.3)
        status, text = get("/healthz")
        assert (status, text.startswith("a decode has been running for ")) == (503, True), text
        assert "(limit 1 s)" in text
        assert get("/readyz") == (503, f"unhealthy: {text}")
        progress.decode_finished(token)
        assert get("/healthz") == (200, "ok\n") and get("/readyz") == (200, "ok\n")
        assert net.refused == {}  # probes are no refusals
    finally:
        net.stop(5)
        decoder.stop(5)
