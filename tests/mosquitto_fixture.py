"""A real Mosquitto broker for tests: own config in a temp dir, 127.0.0.1, a free port.

`Broker` is plain Python (scripts/bench_mqtt.py uses it too); the pytest fixtures at the end
(`broker`, `make_broker`; import broker_fixture / make_broker_fixture into a test module) start
brokers for one test and stop them afterwards. Tests skip, with the reason, when mosquitto is absent.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest


def mosquitto_binary():
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)


MOSQUITTO = mosquitto_binary()
needs_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None, reason="the mosquitto binary is not installed (apt-get install mosquitto mosquitto-clients)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One mosquitto process; stop() and start() again keep the port, config and persistence."""

    def __init__(self, directory: Path, *, port: int | None = None, tls: dict | None = None,
                 password_file: Path | None = None, persistence: bool = True):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "mosquitto.log"
        lines = [f"listener {self.port} 127.0.0.1", "log_dest file " + str(self.log_path),
                 "log_type error", "log_type warning", "log_type notice", "log_type information",
                 "connection_messages true", "max_queued_messages 10000"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to user 'mosquitto', who cannot read our temp files
        lines.append(f"allow_anonymous {'false' if password_file else 'true'}")
        if password_file:
            lines.append(f"password_file {password_file}")
        if tls:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
        if persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/", "autosave_interval 3600"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> Broker:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                self.proc = None
                raise RuntimeError(f"mosquitto exited at start: {err} {self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s: {self.log()}")

    def stop(self, timeout: float = 10.0):
        """SIGTERM (mosquitto saves its persistence file on the way out), then wait."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()
        self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Subscriber:
    """A paho test client that records every message it receives (topic, payload, retain, dup)."""

    def __init__(self, broker: Broker, topics, *, client_id: str = "", persistent: bool = False, tls_ca=None,
                 username=None, password=None):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: list = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._topics = [topics] if isinstance(topics, str) else list(topics)
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"test-sub-{os.getpid()}-{id(self)}",
                                  protocol=mqtt.MQTTv5)
        if tls_ca:
            self.client.tls_set(ca_certs=str(tls_ca))
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)
        props = None
        if persistent:  # the broker keeps our session (and queues QoS 1 messages) while we are away
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 600
        self.client.connect(broker.host, broker.port, keepalive=10, clean_start=not persistent, properties=props)
        self.client.loop_start()
        assert self._subscribed.wait(10), "test subscriber did not subscribe"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        for topic in self._topics:
            client.subscribe(topic, qos=1)

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def on(self, topic: str) -> list:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, predicate, timeout: float = 10.0):
        """Wait until predicate(messages) is truthy; return its value (or fail with what arrived)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self.messages)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    topics = [(m.topic, m.payload[:80]) for m in self.messages[-10:]]
                    raise AssertionError(f"timed out after {timeout} s; last messages: {topics}")
                self._cond.wait(min(left, 0.2))

    def wait_topic(self, topic: str, count: int = 1, timeout: float = 10.0, prefix: bool = False) -> list:
        """Wait for `count` messages on `topic` (or on topics starting with it); return all of them."""
        def matching(ms):
            got = [m for m in ms if (m.topic.startswith(topic) if prefix else m.topic == topic)]
            return got if len(got) >= count else None
        return self.wait_for(matching, timeout)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def retained(broker: Broker, topic: str, timeout: float = 5.0):
    """The retained payload on `topic` as a fresh client sees it (None if there is none)."""
    sub = Subscriber(broker, topic)
    try:
        got = sub.wait_for(lambda ms: [m for m in ms if m.topic == topic and m.retain], timeout)
        return got[-1].payload
    except AssertionError:
        return None
    finally:
        sub.close()


@pytest.fixture(name="broker")
def broker_fixture(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("the mosquitto binary is not installed (apt-get install mosquitto mosquitto-clients)")
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture(name="make_broker")
def make_broker_fixture(tmp_path):
    """Factory for brokers with options (TLS, passwords); all are stopped after the test."""
    if MOSQUITTO is None:
        pytest.skip("the mosquitto binary is not installed (apt-get install mosquitto mosquitto-clients)")
    made = []

    def make(name="broker", start=True, **kwargs):
        b = Broker(tmp_path / name, **kwargs)
        made.append(b)
        return b.start() if start else b

    yield make
    for b in made:
        b.stop()
