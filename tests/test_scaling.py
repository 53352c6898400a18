"""Past one box: `serve` replicas behind a real load balancer, and sessions that end to rebalance.

- server.max_session_s: a real WebSocket client streaming across the limit keeps its utterance whole; the
  server closes with 4001 between utterances, and the device's numbering goes on when it reconnects.
- Two real `serve` processes behind a real HAProxy on loopback (least connections, an HTTP check on
  /readyz, as docs/SCALING.md configures it): a full replica takes no new devices and keeps its own; a
  replica killed with SIGKILL loses its devices to the other, and every final of a finished utterance
  reaches the real Mosquitto broker. Skipped where haproxy is not installed (Debian: apt-get install haproxy).

Waits are on events (a final received, HAProxy's own line saying a server went down or up, a message on
the broker), never on sleeps, but for the one wait that crosses a configured time limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import tiny_models as tm
from helpers import start_serve
from mosquitto_fixture import Subscriber, free_port, needs_mosquitto, retained

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

RATE = 16000
TOKEN = "0123456789abcdef0123456789abcdef"
HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None)
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)")


# ------------------------------------------------------------------------------------------ audio
def speech(seconds, seed=0):
    return np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 6000


def silence(seconds):
    return np.zeros(int(seconds * RATE))


def s16(samples) -> bytes:
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def frames(samples, size=3200):
    data = s16(samples)
    return [data[i:i + size] for i in range(0, len(data), size)]


def turn(seed):
    """One utterance the energy VAD finds: a burst, then silence past the endpoint (400 ms)."""
    return np.concatenate([silence(0.3), speech(0.6, seed), silence(0.8)])


# ------------------------------------------------------------------------------------------ processes
class Replica:
    """One `serve` process on its own port; `broker`: its events also go to MQTT."""

    def __init__(self, directory: Path, model, name: str, broker=None, segmenter: str = "", **server):
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        tokens = directory / "tokens"
        tokens.write_text(f"{TOKEN}\n", encoding="utf-8")
        options = {"port": self.port, "host": "127.0.0.1", "tokens_file": str(tokens), "max_ahead_s": 60.0,
                   **server}
        lines = [f"recognizer:\n  model_dir: {model}", "vad:\n  kind: energy", "pipeline:\n  drain_timeout_s: 5.0",
                 "server:\n" + "".join(f"  {k}: {v}\n" for k, v in options.items())]
        if segmenter:
            lines.append(f"segmenter:\n{segmenter}")
        if broker is not None:
            lines.append(f"mqtt:\n  enabled: true\n  host: {broker.host}\n  port: {broker.port}\n"
                         f"  device_id: {name}\n  reconnect_min_s: 0.1")
        self.config = directory / "serve.yaml"
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.proc = None

    def start(self) -> Replica:
        self.proc = start_serve(self.config, self.port)
        return self

    def url(self, device: str, port: int | None = None) -> str:
        return f"ws://127.0.0.1:{port or self.port}/ws/stt/{device}"

    def stop(self) -> str:
        """SIGTERM (its outbox drained), and its log."""
        if self.proc is None or self.proc.returncode is not None:
            return ""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.communicate(timeout=30)[1] or ""
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()[1] or ""


def start_all(replicas):
    """Both replicas load their model at once (each takes seconds of CPU)."""
    with concurrent.futures.ThreadPoolExecutor(len(replicas)) as pool:
        list(pool.map(Replica.start, replicas))
    return replicas


class HAProxy:
    """HAProxy in the foreground, as docs/SCALING.md configures it, with checks every 100 ms so the test
    sees a replica's /readyz flip at once. Its warnings (a server going DOWN or UP) are read as they come."""

    def __init__(self, directory: Path, replicas):
        self.port = free_port()
        servers = "".join(f"  server {r.name} 127.0.0.1:{r.port} check\n" for r in replicas)
        self.config = directory / "haproxy.cfg"
        self.config.write_text(f"""global
  maxconn 1000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  timeout tunnel 1h
  retries 2
  option redispatch 1
frontend devices
  bind 127.0.0.1:{self.port}
  default_backend serve
backend serve
  balance leastconn
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 100ms fall 1 rise 1
{servers}""", encoding="utf-8")
        self.lines: list = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 10
        while not self._listening():
            assert self.proc.poll() is None, f"haproxy exited: {self.text()}"
            assert time.monotonic() < deadline, f"haproxy did not listen: {self.text()}"
            time.sleep(0.02)

    def _listening(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def _read(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip())
                self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, needle: str, after: int = 0, timeout: float = 10.0) -> int:
        """Until a line (from the `after`-th on) holds `needle`; returns the number of lines so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(needle in line for line in self.lines[after:]):
                left = deadline - time.monotonic()
                assert left > 0, f"haproxy never said {needle!r}:\n" + "\n".join(self.lines)
                self._cond.wait(left)
            return len(self.lines)

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def url(self, device: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/stt/{device}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------------------------ a device
class Device:
    """A WebSocket client as a device is one: it streams utterances and reads its events."""

    def __init__(self, device_id: str):
        self.device_id = device_id
        self.ws = None
        self.events: list = []
        self.close_codes: list = []

    async def connect(self, url: str):
        self.ws = await connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
        return self

    async def say(self, seed: int) -> dict:
        """One utterance; returns its final (with the session of the replica that decoded it)."""
        for chunk in frames(turn(seed)):
            await self.ws.send(chunk)
        return await self.until("final")

    async def until(self, kind: str) -> dict:
        while True:
            event = json.loads(await self.ws.recv())
            self.events.append(event)
            if event["type"] == kind:
                return event

    async def read_to_close(self):
        """Every event until the server closes; returns (close code, reason)."""
        try:
            while True:
                self.events.append(json.loads(await self.ws.recv()))
        except ConnectionClosed:
            pass
        self.close_codes.append(self.ws.close_code)
        return self.ws.close_code, self.ws.close_reason

    async def close(self):
        await self.ws.close()


def finals_of(events):
    return [e for e in events if e["type"] == "final"]


# ------------------------------------------------------------------------------------------ max_session_s
def test_a_session_past_max_session_s_ends_between_utterances_with_4001(tmp_path, model):
    """The limit passes mid-utterance: the utterance is finished by its own endpoint, whole, and only then the
    server closes (4001, the reason saying reconnect); the device reconnects and its numbering goes on."""
    replica = Replica(tmp_path, model, "box", max_session_s=1.0).start()

    async def scenario():
        device = await Device("dev-1").connect(replica.url("dev-1"))
        for chunk in frames(np.concatenate([silence(0.3), speech(0.6, 1)])):
            await device.ws.send(chunk)
        await device.until("speech_start")  # the utterance is open
        await asyncio.sleep(1.1)  # past max_session_s (1 s, less up to 10%): the one wait on the clock
        for chunk in frames(np.concatenate([speech(0.6, 2), silence(1.5)])):
            try:
                await device.ws.send(chunk)
            except ConnectionClosed:
                break
        code, reason = await device.read_to_close()
        again = await Device("dev-1").connect(replica.url("dev-1"))
        final = await again.say(3)
        await again.close()
        return device.events, code, reason, final

    try:
        events, code, reason, final_after = asyncio.run(scenario())
    finally:
        replica.stop()
    assert code == 4001 and "server.max_session_s (1 s) reached: reconnect" in reason
    ends = [e for e in events if e["type"] == "speech_end"]
    (final,) = finals_of(events)
    assert [e["reason"] for e in ends] == ["endpoint"]  # ended by its silence, not cut at the close
    assert final["text"].startswith(tm.PATTERN_TEXT)
    assert final["audio_end"] - final["audio_start"] > 1.2  # both bursts, sent before and after the limit
    assert final_after["session"] == final["session"]  # the same replica: the numbering goes on
    assert final_after["utterance_id"] == final["utterance_id"] + 1
    assert final_after["seq"] > max(e["seq"] for e in events)


def test_a_stream_that_never_pauses_is_closed_an_utterance_past_the_limit_and_others_are_served(tmp_path, model):
    """A device that talks without a pause (a TV) holds its connection past max_session_s: it is closed with
    4001 one max_utterance_s later, every utterance it began finished with one final; a device beside it that
    speaks and pauses gets its final once."""
    replica = Replica(tmp_path, model, "box", segmenter="  max_utterance_s: 3.0\n  cut_search_s: 0.5\n",
                      max_session_s=2.0).start()

    async def tv():
        device = await Device("tv").connect(replica.url("tv"))
        reader = asyncio.ensure_future(device.read_to_close())  # a device reads its events as they come
        sent = 0.0
        try:
            for chunk in frames(np.concatenate([silence(0.3), speech(12.0, 5)]), size=1600):  # 50 ms, real time
                await device.ws.send(chunk)
                sent += 0.05
                await asyncio.sleep(0.05)
        except ConnectionClosed:
            pass
        code, reason = await reader
        return device.events, code, reason, sent

    async def polite():
        device = await Device("kiosk").connect(replica.url("kiosk"))
        final = await device.say(3)
        await device.close()
        return device.events, final

    async def both():
        return await asyncio.gather(tv(), polite())

    try:
        (events, code, reason, sent), (polite_events, polite_final) = asyncio.run(asyncio.wait_for(both(), 60))
    finally:
        replica.stop()
    assert code == 4001 and "server.max_session_s (2 s) reached: reconnect" in reason
    assert sent < 2.0 + 3.0 + 3.0  # closed one utterance past the limit, long before the 12 s were sent
    starts = [e["utterance_id"] for e in events if e["type"] == "speech_start"]
    finals = [e["utterance_id"] for e in finals_of(events)]
    assert starts and sorted(finals) == starts  # each utterance it began: one final, none twice
    assert [f["utterance_id"] for f in finals_of(polite_events)] == [polite_final["utterance_id"]]
    assert polite_final["text"].startswith(tm.PATTERN_TEXT)


# ------------------------------------------------------------------------------------------ behind HAProxy
@pytest.fixture
def make_cluster(tmp_path, model):
    """make_cluster(broker, a={server options}, b={...}): replicas a and b behind HAProxy, stopped after the test."""
    made = []

    def make(broker=None, **options):
        replicas = [Replica(tmp_path / name, model, name, broker, **options.get(name, {})) for name in ("a", "b")]
        made.extend(replicas)
        start_all(replicas)
        made.append(HAProxy(tmp_path, replicas))
        return replicas, made[-1]

    yield make
    for each in reversed(made):
        each.stop()


@needs_haproxy
def test_a_full_replica_takes_no_new_devices_and_keeps_its_own(make_cluster):
    (a, b), lb = make_cluster(a={"max_streams": 2}, b={"max_streams": 8})

    async def scenario():
        mark = lb.mark()
        own = [await Device(f"own-{i}").connect(a.url(f"own-{i}")) for i in range(2)]  # straight to a: full
        session_a = (await own[0].say(1))["session"]
        lb.wait_for("serve/a is DOWN", after=mark)  # /readyz 503 at max_streams
        new = [await Device(f"new-{i}").connect(lb.url(f"new-{i}")) for i in range(4)]
        sessions = [(await device.say(10 + i))["session"] for i, device in enumerate(new)]
        kept = await own[1].say(2)  # a's own devices go on
        mark = lb.mark()
        for device in own:
            await device.close()
        lb.wait_for("serve/a is UP", after=mark)
        late = await Device("late").connect(lb.url("late"))  # least connections: a has none of them
        session_late = (await late.say(20))["session"]
        for device in new + [late]:
            await device.close()
        return session_a, sessions, kept, session_late

    session_a, sessions, kept, session_late = asyncio.run(scenario())
    assert len(set(sessions)) == 1 and sessions[0] != session_a  # all four on b
    assert kept["session"] == session_a and kept["text"].startswith(tm.PATTERN_TEXT)
    assert session_late == session_a


@needs_haproxy
@needs_mosquitto
def test_devices_of_a_killed_replica_reconnect_to_the_other_and_every_final_reaches_mqtt(make_cluster, broker):
    (a, b), lb = make_cluster(broker)
    sub = Subscriber(broker, "stt-agent/#")

    async def scenario():
        probe = await Device("probe").connect(a.url("probe"))  # which session is a's
        session_a = (await probe.say(0))["session"]
        await probe.close()
        devices = [await Device(f"dev-{i}").connect(lb.url(f"dev-{i}")) for i in range(4)]
        first = {d.device_id: await d.say(i) for i, d in enumerate(devices)}
        on_a = [d for d in devices if first[d.device_id]["session"] == session_a]
        assert 0 < len(on_a) < len(devices), "least connections spreads the devices over both replicas"
        # Every final so far has reached the broker; then a dies without a word.
        sub.wait_for(lambda ms: sum(m.topic.endswith("/stt/final") for m in ms) >= len(devices) + 1, 20)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        for device in on_a:  # each sees its connection drop, and connects again, through the balancer
            code, _ = await device.read_to_close()
            assert code == 1006  # no close frame: the replica is gone
            await device.connect(lb.url(device.device_id))
        second = {d.device_id: await d.say(10 + i) for i, d in enumerate(devices)}
        # While they stream on b, b's "online" is the last word on each status topic.
        status = {d.device_id: retained(broker, f"stt-agent/{d.device_id}/status") for d in devices}
        for device in devices:
            await device.close()
        return session_a, first, second, [d.device_id for d in on_a], status

    try:
        session_a, first, second, moved, status = asyncio.run(scenario())
        expected = {(f["device_id"], f["session"], f["utterance_id"]) for f in [*first.values(), *second.values()]}
        sub.wait_for(lambda ms: {(p["device_id"], p["session"], p["utterance_id"]) for p in
                                 (json.loads(m.payload) for m in ms if m.topic.endswith("/stt/final"))} >= expected,
                     20)
    finally:
        sub.close()
    assert all(second[device]["session"] != session_a for device in second)  # all on b now
    assert all(f["text"].startswith(tm.PATTERN_TEXT) for f in second.values())
    assert {first[device]["session"] for device in moved} == {session_a}
    assert set(status.values()) == {b"online"}


@needs_mosquitto
def test_a_replica_that_lost_a_device_to_another_does_not_call_it_offline(tmp_path, model, broker):
    """A half-open connection: the device went to b while a still held its old socket. When a's idle timeout
    ends that stream, a has heard b's `online` (tagged with b's session) and publishes no `offline`: the
    retained status stays b's word while the device streams there. b's own `offline` still goes out."""
    a, b = start_all([Replica(tmp_path / "a", model, "a", broker, idle_timeout_s=1.0),
                      Replica(tmp_path / "b", model, "b", broker)])
    topic = "stt-agent/dev-1/status"
    sub = Subscriber(broker, topic)

    async def scenario():
        old = await Device("dev-1").connect(a.url("dev-1"))
        await old.say(0)
        sub.wait_for(lambda ms: [m for m in ms if m.payload == b"online"], 10)
        new = await Device("dev-1").connect(b.url("dev-1"))  # the old socket stays open, silent
        await new.say(1)
        sub.wait_for(lambda ms: len([m for m in ms if m.payload == b"online"]) >= 2, 10)
        code, reason = await old.read_to_close()  # a notices at its idle timeout
        log_a = await asyncio.get_running_loop().run_in_executor(None, a.stop)  # a's outbox drained
        status_while_on_b = retained(broker, topic)
        await new.close()
        return code, reason, log_a, status_while_on_b

    try:
        code, reason, log_a, status_while_on_b = asyncio.run(scenario())
        sub.wait_for(lambda ms: [m for m in ms if m.payload == b"offline"], 10)  # b's, when the device left b
    finally:
        sub.close()
        b.stop()
    assert code == 1000 and "idle_timeout_s" in reason
    assert "device dev-1 streams through another instance now: its offline is not published" in log_a, log_a
    assert status_while_on_b == b"online"
    assert [m.payload for m in sub.messages] == [b"online", b"online", b"offline"]
