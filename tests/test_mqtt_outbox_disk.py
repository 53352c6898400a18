"""The disk outbox (mqtt.outbox: disk) against a real Mosquitto: finals outlive a SIGKILL of `stt-agent run`,
expired rows are not sent, a broken file (corrupt, read-only, full) falls back to memory with one warning,
two instances keep two files, and the byte cap drops what docs/EVENTS.md says, counted."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT, emit_all, final, run, settings_for, utterance, write_wav
from mosquitto_fixture import Subscriber, needs_mosquitto

from agent.errors import EXIT_CONFIG
from agent.mqtt.outbox import Outbox
from agent.mqtt.payloads import Message
from agent.mqtt.publisher import MqttPublisher
from agent.mqtt.store import DiskStore, OutboxInUse

pytestmark = needs_mosquitto
FALLBACK = "the disk outbox"


def rows(path, kind=None) -> list:
    """(kind, seq) of the rows in an outbox file, oldest first (read as another process would)."""
    db = sqlite3.connect(str(path))
    try:
        query = "SELECT kind, seq FROM outbox" + (" WHERE kind = ?" if kind else "") + " ORDER BY id"
        return db.execute(query, (kind,) if kind else ()).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # the agent is still creating it
            return []
        raise
    finally:
        db.close()


def wait_until(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def fallback_lines(caplog) -> list:
    return [r for r in caplog.records if r.levelno == logging.WARNING and FALLBACK in r.getMessage()]


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount(dir, options): a tmpfs there (root only; skipped where mounting is not allowed)."""
    mounted = []

    def mount(directory, options):
        directory.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
        mounted.append(directory)
        return directory

    yield mount
    for directory in reversed(mounted):
        subprocess.run(["umount", "-l", str(directory)], check=False)


def test_finals_waiting_in_an_outage_survive_a_sigkill_of_run_and_arrive_once_in_order(make_broker, tmp_path, model):
    """`stt-agent run` decodes three utterances while the broker is down, is SIGKILLed with the finals
    waiting (on disk), and the next run delivers each of them once, in order, before its own events."""
    b = make_broker()
    sub = Subscriber(b, "stt-agent/box1/#", client_id="outbox-kill-sub", persistent=True)
    rng = np.random.default_rng(0)
    parts = [np.zeros(8000)]
    for _ in range(3):
        parts += [rng.standard_normal(20000) * 6000, np.zeros(16000)]
    speech = write_wav(tmp_path / "three.wav", np.concatenate(parts))
    outbox = tmp_path / "state" / "outbox.sqlite3"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"recognizer:\n  model_dir: {model}\nvad:\n  kind: energy\n"
        f"mqtt:\n  enabled: true\n  host: {b.host}\n  port: {b.port}\n  device_id: box1\n  outbox: disk\n"
        f"  outbox_path: {outbox}\n  drain_timeout_s: 60\n  reconnect_min_s: 0.1\n  reconnect_max_s: 0.5\n",
        encoding="utf-8")
    b.stop()  # the outage
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--input", str(speech),
                             "--fast"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_until(lambda: outbox.exists() and len(rows(outbox, "final")) == 3 or proc.poll() is not None, 60,
                   "three finals on disk")
        assert proc.poll() is None, proc.stderr.read()  # still draining into the outage (drain_timeout_s: 60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    waiting = rows(outbox)
    assert [k for k, _ in waiting].count("final") == 3 and {k for k, _ in waiting} == {"final", "emotion", "language"}
    assert [s for _, s in waiting] == sorted(s for _, s in waiting)

    b.start()  # the next run says three utterances of its own: the first run's go first
    second = run("run", "--config", str(config), "--input", str(speech), "--fast", timeout=120)
    assert second.returncode == 0, second.stderr
    assert "9 event(s) from an earlier run read back from" in second.stderr
    sub.wait_topic("stt-agent/box1/stt/final", 6, timeout=20)
    time.sleep(0.5)  # a doubled one would arrive now
    finals = sub.on("stt-agent/box1/stt/final")
    bodies = [json.loads(m.payload) for m in finals]
    sessions = list(dict.fromkeys(body["session"] for body in bodies))
    assert len(sessions) == 2 and not any(m.dup for m in finals)
    assert [(sessions.index(body["session"]), body["utterance_id"]) for body in bodies] == [
        (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)], bodies  # each once, the killed run's first, in order
    old = [json.loads(m.payload)["seq"] for m in sub.messages if m.topic.split("/")[-1] in ("final", "emotion",
                                                                                            "language")
           and json.loads(m.payload)["session"] == sessions[0]]
    assert old == [s for _, s in waiting]  # emotion and language too, once each, in seq order
    assert rows(outbox) == []  # each row deleted at its PUBACK
    sub.close()


def test_expired_rows_are_not_sent_and_the_rest_carry_the_life_they_have_left(make_broker, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="agent.mqtt")
    b = make_broker()
    sub = Subscriber(b, "stt-agent/dev1/#", client_id="outbox-expiry-sub", persistent=True)
    b.stop()
    path = tmp_path / "outbox.sqlite3"
    short = MqttPublisher(settings_for(b, outbox="disk", outbox_path=str(path), message_expiry_s=1))
    short.start()
    emit_all(short, utterance(1))
    assert short._store.flush() and short.stop(timeout=0) == 3
    time.sleep(1.2)  # utterance 1's rows are past their 1 s
    long = MqttPublisher(settings_for(b, outbox="disk", outbox_path=str(path), message_expiry_s=30))
    assert long.stats()["dropped"]["expired"] == 3 and long.stats()["dropped"]["by_type"]["final"] == 1
    long.start()
    emit_all(long, [final(2)])
    assert long._store.flush() and long.stop(timeout=0) == 1
    assert rows(path) == [("final", 1)]  # the new session's seq 1: utterance 2
    time.sleep(2.0)
    b.start()
    last = MqttPublisher(settings_for(b, outbox="disk", outbox_path=str(path), message_expiry_s=30))
    assert last.outbox_stats()["restored"] == 1
    last.start()
    (got,) = sub.wait_topic("stt-agent/dev1/stt/final", 1, timeout=15)
    assert last.stop() == 0
    assert json.loads(got.payload)["utterance_id"] == 2
    assert 1 <= got.properties.MessageExpiryInterval <= 28  # 30 s less the 2 s it waited on disk
    time.sleep(0.3)
    assert len(sub.on("stt-agent/dev1/stt/final")) == 1 and rows(path) == []
    sub.close()


def delivered_with_fallback(b, caplog, settings, problem):
    """A publisher whose disk outbox cannot work: one warning naming the problem, memory from then on."""
    pub = MqttPublisher(settings)
    sub = Subscriber(b, "stt-agent/dev1/stt/final")
    pub.start()
    try:
        emit_all(pub, [final(1), final(2)])
        got = sub.wait_topic("stt-agent/dev1/stt/final", 2, timeout=15)
        assert [json.loads(m.payload)["utterance_id"] for m in got] == [1, 2]
        outbox = pub.stats()["outbox"]
        assert outbox["fallback"] is True and outbox["kind"] == "memory" and problem in outbox["problem"]
    finally:
        assert pub.stop() == 0
        sub.close()
    assert len(fallback_lines(caplog)) == 1, caplog.text


def test_a_corrupt_file_falls_back_to_memory_with_one_warning(broker, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="agent.mqtt")
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"not a database, a disk that flipped bits " * 200)
    delivered_with_fallback(broker, caplog, settings_for(broker, outbox="disk", outbox_path=str(path)),
                            "not a database")
    assert path.read_bytes().startswith(b"not a database")  # left for someone to look at, not overwritten


def test_a_read_only_directory_falls_back_to_memory_with_one_warning(broker, tmp_path, caplog, mount_tmpfs):
    caplog.set_level(logging.WARNING, logger="agent.mqtt")
    directory = tmp_path / "ro"
    if os.geteuid() == 0:  # root writes through mode bits: a read-only file system it is
        mount_tmpfs(directory, "ro,size=64k")
    else:
        directory.mkdir()
        directory.chmod(0o555)
    delivered_with_fallback(broker, caplog, settings_for(broker, outbox="disk",
                                                         outbox_path=str(directory / "outbox.sqlite3")),
                            "Read-only file system" if os.geteuid() == 0 else "Permission denied")


def test_a_disk_that_fills_during_an_outage_falls_back_with_one_warning(make_broker, tmp_path, caplog, mount_tmpfs):
    """A tmpfs of 1 MiB, filled up by another file once the outbox is open: the next commit fails with
    SQLITE_FULL; the finals queued before and after it still arrive, from memory."""
    caplog.set_level(logging.WARNING, logger="agent.mqtt")
    disk = mount_tmpfs(tmp_path / "small", "size=1m")
    b = make_broker()
    sub = Subscriber(b, "stt-agent/dev1/stt/final", client_id="outbox-full-sub", persistent=True)
    b.stop()
    pub = MqttPublisher(settings_for(b, outbox="disk", outbox_path=str(disk / "outbox.sqlite3")))
    pub.start()
    try:
        emit_all(pub, [final(1)])
        assert pub._store.flush() and pub.outbox_stats()["rows"] == 1
        with open(disk / "filler", "wb") as filler:
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass  # ENOSPC: the disk is full
        for i in range(2, 41):
            emit_all(pub, [final(i, text="y" * 2000)])
        assert pub._store.flush()
        outbox = pub.stats()["outbox"]
        assert outbox["fallback"] and outbox["kind"] == "memory" and "full" in outbox["problem"], outbox
        assert pub.stats()["queued"] == 40
        b.start()
        got = sub.wait_topic("stt-agent/dev1/stt/final", 40, timeout=20)
        assert [json.loads(m.payload)["utterance_id"] for m in got] == list(range(1, 41))
    finally:
        pub.stop()
        sub.close()
    assert len(fallback_lines(caplog)) == 1, caplog.text


def test_a_disk_store_that_fills_up_gives_up_once(tmp_path):
    """Where no tmpfs can be mounted: SQLite's own page limit makes the file full (SQLITE_FULL)."""
    failures = []
    store = DiskStore(tmp_path / "o.sqlite3", expiry_s=60, on_failure=failures.append, max_page_count=8)
    assert store.open() == []
    box = Outbox(1000, journal=store)
    for i in range(200):
        box.put(Message("final", "t/stt/final", b"z" * 3000, 1, seq=i))
    assert store.flush()
    assert len(failures) == 1 and "full" in failures[0] and not store.active
    assert len(box) == 200  # the memory outbox holds them all
    store.close()


def test_two_instances_keep_two_files_and_a_shared_file_is_refused(broker, tmp_path, monkeypatch, model):
    state = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    sub = Subscriber(broker, ["stt-agent/kiosk-a/stt/final", "stt-agent/kiosk-b/stt/final"])
    a = MqttPublisher(settings_for(broker, device_id="kiosk-a"))  # outbox: auto, with a state directory: disk
    b = MqttPublisher(settings_for(broker, device_id="kiosk-b"))
    files = sorted(p.name for p in state.glob("*.sqlite3"))
    assert files == ["mqtt-outbox-stt-agent-kiosk-a.sqlite3", "mqtt-outbox-stt-agent-kiosk-b.sqlite3"]
    assert a.outbox_stats()["kind"] == b.outbox_stats()["kind"] == "disk"
    with pytest.raises(OutboxInUse, match=r"in use by another running stt-agent \(pid \d+\)"):
        MqttPublisher(settings_for(broker, device_id="kiosk-a"))
    config = tmp_path / "c.yaml"
    config.write_text(f"recognizer:\n  model_dir: {model}\nmqtt:\n  enabled: true\n  host: {broker.host}\n"
                      f"  port: {broker.port}\n  device_id: kiosk-a\n", encoding="utf-8")
    wav = write_wav(tmp_path / "s.wav", np.zeros(1600))
    proc = run("run", "--config", str(config), "--input", str(wav), env={"STATE_DIRECTORY": str(state)})
    assert proc.returncode == EXIT_CONFIG and "Traceback" not in proc.stderr
    assert "mqtt.outbox_path:" in proc.stderr and "in use by another running stt-agent" in proc.stderr
    a.start()
    b.start()
    emit_all(a, [final(1)])
    emit_all(b, [final(7)])
    sub.wait_topic("stt-agent/kiosk-a/stt/final", 1)
    sub.wait_topic("stt-agent/kiosk-b/stt/final", 1)
    assert a.stop() == 0 and b.stop() == 0
    assert rows(state / files[0]) == rows(state / files[1]) == []
    sub.close()


def test_the_byte_cap_in_a_long_outage_drops_the_oldest_non_finals_first_counted(make_broker, tmp_path):
    b = make_broker()
    sub = Subscriber(b, "stt-agent/dev1/#", client_id="outbox-cap-sub", persistent=True)
    b.stop()
    path = tmp_path / "outbox.sqlite3"
    cap = 65536
    pub = MqttPublisher(settings_for(b, outbox="disk", outbox_path=str(path), outbox_max_bytes=cap))
    pub.start()
    n = 40
    for i in range(1, n + 1):  # ~1.3 KB finals, their emotion and language: finals alone fit, all three do not
        emit_all(pub, utterance(i, text="z" * 700))
    stats = pub.stats()
    dropped = stats["dropped"]
    lost = dropped["by_type"]["emotion"] + dropped["by_type"]["language"]
    assert dropped["by_type"]["final"] == 0 and lost > 0 and dropped["outbox_bytes"] == lost
    assert sum(dropped["by_type"].values()) == lost and dropped["outbox_full"] == dropped["expired"] == 0
    assert stats["outbox"]["bytes"] <= cap and stats["queued"] == 3 * n - lost
    assert pub._store.flush() and len(rows(path)) == stats["queued"]  # a dropped message's row is gone too
    b.start()
    sub.wait_topic("stt-agent/dev1/stt/final", n, timeout=20)
    assert pub.stop() == 0
    time.sleep(0.3)
    utterances = {kind: [json.loads(m.payload)["utterance_id"] for m in sub.on(f"stt-agent/dev1/{kind}")]
                  for kind in ("stt/final", "emotion", "language")}
    assert utterances["stt/final"] == list(range(1, n + 1))
    kept = utterances["emotion"] + utterances["language"]
    assert len(kept) == 2 * n - lost and min(kept) > 1  # the oldest went, the newest stayed
    assert utterances["emotion"][-1] == utterances["language"][-1] == n
    sub.close()


def test_the_byte_cap_drops_partials_then_the_oldest_non_final_then_statuses_and_finals_last():
    drops = []
    box = Outbox(100, max_bytes=1000, on_drop=lambda m, reason: drops.append((m.drop_type, m.seq, reason)))

    def msg(kind, seq, event_type=None, retain=False):
        return Message(kind, "t", b"x" * 199, 1, seq=seq, event_type=event_type, retain=retain)  # 200 bytes each

    for m in (msg("status", 1, retain=True), msg("final", 2), msg("emotion", 3), msg("vad", 4, "speech_start"),
              msg("partial", 5)):
        box.put(m)
    assert drops == [] and box.bytes == 1000
    box.put(msg("final", 6))  # over the cap: the partial goes first, though it is the newest of the rest
    box.put(msg("final", 7))  # then the oldest non-final: the emotion (3), older than the vad event (4)
    box.put(msg("final", 8))
    box.put(msg("final", 9))  # then the status, and only then finals, the oldest first
    box.put(msg("final", 10))
    assert [(t, s) for t, s, _ in drops] == [("partial", 5), ("emotion", 3), ("speech_start", 4), ("status", 1),
                                              ("final", 2)]
    assert {r for _, _, r in drops} == {"bytes"} and box.dropped_bytes == 5 and box.bytes == 1000
    assert box.dropped_by_type["final"] == 1 and [box.pop().seq for _ in range(len(box))] == [6, 7, 8, 9, 10]


def test_outbox_disk_without_a_file_or_a_state_directory_is_a_config_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("mqtt:\n  enabled: true\n  outbox: disk\n", encoding="utf-8")
    proc = run("check-config", "--config", str(config))  # the tests run without $STATE_DIRECTORY (conftest.py)
    assert proc.returncode == EXIT_CONFIG and "Traceback" not in proc.stderr
    assert "mqtt.outbox" in proc.stderr and "outbox_path" in proc.stderr and "STATE_DIRECTORY" in proc.stderr
    assert run("check-config", "--config", str(config), env={"STATE_DIRECTORY": str(tmp_path)}).returncode == 0
