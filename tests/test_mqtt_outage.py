"""Failures against a real Mosquitto: the agent killed (Last Will), the broker restarted in the
middle of a stream of finals, one device's error storm in an outage, TLS with a good and a wrong CA,
a wrong password."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import jsonschema
import pytest
from helpers import ROOT, emit_all, final, settings_for, utterance
from mosquitto_fixture import Subscriber, needs_mosquitto, retained

from agent.mqtt.publisher import MqttPublisher

pytestmark = needs_mosquitto


def test_last_will_offline_when_agent_is_killed(broker):
    script = textwrap.dedent(f"""
        import sys, time
        from agent.mqtt.publisher import MqttPublisher
        from agent.mqtt.settings import MqttSettings
        pub = MqttPublisher(MqttSettings(host="{broker.host}", port={broker.port}, device_id="dev1"))
        pub.start()
        print("ready" if pub.wait_connected(10) else "not connected", flush=True)
        time.sleep(60)
    """)
    sub = Subscriber(broker, "stt-agent/dev1/status")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "ready"
        sub.wait_for(lambda ms: [m for m in ms if m.payload == b"online"])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        sub.wait_for(lambda ms: [m for m in ms if m.payload == b"offline"])
        assert retained(broker, "stt-agent/dev1/status") == b"offline"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()


def test_broker_restart_mid_stream_every_final_once_in_order(make_broker, caplog):
    caplog.set_level(logging.INFO, logger="agent.mqtt")
    b = make_broker()
    sub = Subscriber(b, "stt-agent/dev1/stt/final", client_id="restart-sub", persistent=True)
    pub = MqttPublisher(settings_for(b))
    pub.start()
    assert pub.wait_connected(10)
    n = 90
    stopped = threading.Event()

    def outage():
        b.stop()
        stopped.set()
        time.sleep(0.5)
        b.start()

    outage_thread = None
    for i in range(1, n + 1):
        emit_all(pub, [final(i)])
        if i == 30:  # the broker goes away while finals are being published
            outage_thread = threading.Thread(target=outage)
            outage_thread.start()
            stopped.wait(10)
        time.sleep(0.01)
    outage_thread.join()
    got = sub.wait_for(lambda ms: ms if len({json.loads(m.payload)["seq"] for m in ms}) >= n else None, timeout=20)
    assert pub.wait_connected(5) and pub.stats()["reconnects"] >= 1
    time.sleep(0.3)  # anything doubled would arrive now
    got = list(sub.messages)
    ids = [json.loads(m.payload)["utterance_id"] for m in got]
    # QoS 1 lets the *broker* redeliver to the subscriber after its own restart; such copies carry DUP.
    # A copy the agent published twice would arrive without DUP.
    fresh = [i for i, m in zip(ids, got) if not m.dup]
    assert fresh == list(range(1, n + 1)), f"lost, doubled or reordered: {fresh}"
    assert sorted(set(ids)) == list(range(1, n + 1))
    assert "lost the connection" in caplog.text and "reconnected to" in caplog.text
    assert pub.stop() == 0
    sub.close()


def test_an_error_storm_of_one_device_costs_another_device_no_final(make_broker, caplog):
    """Broker down: device A says one utterance; device B sends 1,200 speech_start and 3,000 errors.
    Before, they shared one lane of 1,000 and A's final was dropped, without a log line of its own."""
    from agent.events import Emitter, Problem, SpeechStarted

    caplog.set_level(logging.INFO, logger="agent.mqtt")
    b = make_broker()
    sub = Subscriber(b, ["stt-agent/kiosk-a/#", "stt-agent/kiosk-b/#"], client_id="storm-sub", persistent=True)
    b.stop()
    pub = MqttPublisher(settings_for(b, outbox_max=1000))
    a = Emitter("kiosk-a", pub.session, [pub])  # as the pipeline and the server emit: the publisher a sink
    device_b = Emitter("kiosk-b", pub.session, [pub])
    pub.start()
    for i in range(1, 1201):
        device_b.emit(SpeechStarted(i, float(i), None, None, None))
    for event in utterance(1):
        a.emit(event)
    codes = ("bad_frame", "bad_header", "too_fast")
    for i in range(3000):
        device_b.emit(Problem("stream", codes[i % 3], f"frame {i} is not Opus"))
    stats = pub.stats()
    dropped = stats["dropped"]
    assert not pub.connected and stats["queued"] == 3 + 997 + 3  # A's utterance, B's newest vad, 3 errors
    assert dropped["by_type"]["final"] == dropped["by_type"]["emotion"] == dropped["by_type"]["language"] == 0
    assert dropped["by_type"]["speech_start"] == dropped["outbox_full"] == 203 and dropped["collapsed"] == 2997
    assert sum(dropped["by_type"].values()) == 203
    b.start()
    (final_a,) = sub.wait_topic("stt-agent/kiosk-a/stt/final", 1, timeout=15)
    assert json.loads(final_a.payload)["utterance_id"] == 1
    errors = sub.wait_topic("stt-agent/kiosk-b/error", 3, timeout=15)
    vad = sub.wait_topic("stt-agent/kiosk-b/vad", 997, timeout=15)
    time.sleep(0.3)
    schema = json.loads((ROOT / "docs" / "schemas" / "error.json").read_text(encoding="utf-8"))
    bodies = [json.loads(m.payload) for m in errors]
    for body in bodies:
        jsonschema.validate(body, schema)
    assert [(e["code"], e["repeated"]) for e in bodies] == [(code, 999) for code in codes]
    assert len(sub.on("stt-agent/kiosk-b/error")) == 3
    # B's messages left in the order they were made: its seq rises on the wire
    seqs = [json.loads(m.payload)["seq"] for m in sub.messages if m.topic.startswith("stt-agent/kiosk-b/")]
    assert seqs == sorted(seqs) and seqs[:1] == [204] and [e["seq"] for e in bodies] == [1201, 1202, 1203]
    assert [json.loads(m.payload)["utterance_id"] for m in vad[:1]] == [204]
    assert "outbox full" in caplog.text and caplog.text.count("dropped a speech_start") == 1
    assert pub.stats()["dropped"]["by_type"]["final"] == 0 and pub.stop() == 0
    sub.close()


class Proxy:
    """A TCP relay in front of the broker that can swallow traffic and cut connections."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list = []  # [client socket, upstream socket, {"blackhole": bool}]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            conn = [client, upstream, {"blackhole": False}]
            self.conns.append(conn)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, conn[2]), daemon=True).start()

    @staticmethod
    def _pump(src, dst, state):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not state["blackhole"]:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def blackhole(self):
        """Current connections swallow everything from now on (new ones pass)."""
        for conn in self.conns:
            conn[2]["blackhole"] = True

    def cut(self):
        for client, upstream, _ in self.conns:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.conns = []

    def close(self):
        self.cut()
        self.listener.close()


def test_unacknowledged_messages_are_resent_before_newer_ones_after_a_reconnect(broker):
    """Messages paho sent but the broker never acknowledged: paho re-sends them after the reconnect,
    the agent does not, and nothing newer overtakes them."""
    proxy = Proxy(broker.port)
    sub = Subscriber(broker, "stt-agent/dev1/stt/final")
    s = settings_for(broker)
    s.port = proxy.port
    pub = MqttPublisher(s)
    pub.start()
    try:
        assert pub.wait_connected(10)
        for i in range(1, 6):
            emit_all(pub, [final(i, text="")])
        sub.wait_topic("stt-agent/dev1/stt/final", 5)
        deadline = time.monotonic() + 10
        while pub.pending() and time.monotonic() < deadline:  # the agent has all five acknowledgements
            time.sleep(0.02)
        proxy.blackhole()  # the link dies silently: publishes vanish, no acknowledgements come back
        for i in range(6, 46):
            emit_all(pub, [final(i, text="")])
        deadline = time.monotonic() + 10
        while pub.stats()["inflight"] < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = pub.stats()
        assert (stats["inflight"], stats["queued"]) == (20, 20)  # MAX_INFLIGHT with paho, the rest waiting
        proxy.cut()
        got = sub.wait_topic("stt-agent/dev1/stt/final", 45, timeout=15)
        time.sleep(0.3)
        ids = [json.loads(m.payload)["utterance_id"] for m in sub.on("stt-agent/dev1/stt/final")]
        assert ids == list(range(1, 46)), ids
        assert pub.stop() == 0 and len(got) == 45
    finally:
        proxy.close()
        sub.close()


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=d)
    return d / f"{name}.crt"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca(d, "test-ca"), make_ca(d, "other-ca")
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                  "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                                  "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "test-ca.crt", "-CAkey", "test-ca.key", "-CAcreateserial",
            "-days", "2", "-out", "server.crt", "-extfile", "server.ext", cwd=d)
    return {"ca": ca, "other_ca": other_ca, "cert": d / "server.crt", "key": d / "server.key"}


def test_tls_verified_connection_and_wrong_ca_is_a_clear_error(make_broker, pki, caplog):
    caplog.set_level(logging.ERROR, logger="agent.mqtt")
    b = make_broker(tls={"ca": pki["ca"], "cert": pki["cert"], "key": pki["key"]})
    sub = Subscriber(b, "stt-agent/dev1/stt/final", tls_ca=pki["ca"])
    pub = MqttPublisher(settings_for(b, tls__enabled=True, tls__ca_file=str(pki["ca"])))
    pub.start()
    assert pub.wait_connected(10), pub.last_error
    emit_all(pub, [final(1)])
    assert json.loads(sub.wait_topic("stt-agent/dev1/stt/final")[0].payload)["utterance_id"] == 1
    pub.stop()
    sub.close()

    wrong = MqttPublisher(settings_for(b, tls__enabled=True, tls__ca_file=str(pki["other_ca"])))
    wrong.start()
    try:
        deadline = time.monotonic() + 10
        while wrong.connect_failures < 3 and time.monotonic() < deadline:  # it keeps retrying
            time.sleep(0.05)
        assert wrong.connect_failures >= 3 and not wrong.connected
        assert "certificate of the broker does not verify" in wrong.last_error
        assert "certificate" in wrong.last_error.split("does not verify:")[1]  # OpenSSL's own words follow
        assert f"broker {b.host}:{b.port}" in caplog.text and "mqtt.tls.ca_file" in caplog.text
    finally:
        wrong.stop()

    caplog.clear()
    caplog.set_level(logging.WARNING, logger="agent.mqtt")
    insecure = MqttPublisher(settings_for(b, tls__enabled=True, tls__ca_file=str(pki["other_ca"]),
                                          tls__insecure=True))
    insecure.start()
    try:
        assert insecure.wait_connected(10), insecure.last_error  # connects although nothing verifies...
        assert "WITHOUT verifying its TLS certificate (mqtt.tls.insecure: true)" in caplog.text  # ...and says so
        b.restart()
        deadline = time.monotonic() + 10
        while insecure.reconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert insecure.wait_connected(10)
        assert caplog.text.count("WITHOUT verifying its TLS certificate") == 2  # at every connect
    finally:
        insecure.stop()


def test_a_failure_inside_the_network_loop_is_logged_counted_and_survived(broker, caplog, monkeypatch):
    """paho runs its loop unguarded: an exception there (a struct.error packing an over-long client id)
    ended the thread for good. Now it is logged, counted in health, and the connection starts over."""
    import struct

    from agent.mqtt.connection import SupervisedClient

    caplog.set_level(logging.ERROR, logger="agent.mqtt")
    real = SupervisedClient._send_connect
    failures = []

    def flaky(self, keepalive):
        if len(failures) < 2:
            failures.append(1)
            raise struct.error("'H' format requires 0 <= number <= 65535")
        return real(self, keepalive)

    monkeypatch.setattr(SupervisedClient, "_send_connect", flaky)
    sub = Subscriber(broker, "stt-agent/dev1/stt/final")
    pub = MqttPublisher(settings_for(broker))
    pub.start()
    try:
        assert pub.wait_connected(15), pub.last_error
        emit_all(pub, [final(1)])
        assert json.loads(sub.wait_topic("stt-agent/dev1/stt/final")[0].payload)["utterance_id"] == 1
        assert pub.stats()["network_errors"] == 2
        assert "the network thread failed (error: 'H' format requires" in caplog.text
    finally:
        pub.stop()
        sub.close()


def test_wrong_password_is_a_clear_error_and_retried(make_broker, tmp_path, caplog, monkeypatch):
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed (it comes with the mosquitto package)")
    caplog.set_level(logging.ERROR, logger="agent.mqtt")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "avatar", "right-one"], check=True,
                   capture_output=True)
    b = make_broker(password_file=passwd)
    (tmp_path / "wrong").write_text("wrong-one\n")
    pub = MqttPublisher(settings_for(b, username="avatar", password_file=str(tmp_path / "wrong")))
    pub.start()
    try:
        deadline = time.monotonic() + 10
        while pub.connect_failures < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pub.connect_failures >= 3 and not pub.connected
        assert f"broker {b.host}:{b.port} refused the connection" in pub.last_error
        assert "reason code 134" in pub.last_error or "reason code 135" in pub.last_error
        assert caplog.text.count("refused the connection") == 1  # the same problem is not logged every retry
        assert "wrong-one" not in caplog.text
    finally:
        pub.stop()
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "right-one")
    good = MqttPublisher(settings_for(b, username="avatar", password_env="TEST_MQTT_PASSWORD"))
    good.start()
    assert good.wait_connected(10), good.last_error
    good.stop()
