"""The publisher against a real Mosquitto: payloads validated against docs/schemas with a real
subscriber, commands, Home Assistant discovery, Hermes mirror, clean stop, outbox bounds."""

from __future__ import annotations

import json
import logging
import time

import jsonschema
import numpy as np
import pytest
import tiny_models as tm
from helpers import ROOT, emit_all, final, partial, settings_for, utterance, write_wav
from mosquitto_fixture import Subscriber, needs_mosquitto, retained

from agent.events import Problem
from agent.mqtt.outbox import DROP_TYPES
from agent.mqtt.publisher import MqttPublisher

pytestmark = needs_mosquitto
SCHEMAS = ROOT / "docs" / "schemas"
SCHEMA_OF = {"stt/final": "final.json", "stt/partial": "partial.json", "emotion": "emotion.json",
             "language": "language.json", "vad": "vad.json", "error": "error.json", "health": "health.json"}
HERMES_SCHEMA = {"hermes/asr/textCaptured": "hermes-text-captured.json",
                 "hermes/asr/partialTextCaptured": "hermes-partial-text-captured.json"}


def schema(name):
    return json.loads((SCHEMAS / name).read_text())


def payloads(messages):
    return [json.loads(m.payload) for m in messages]


@pytest.fixture(scope="module")
def real_events(tmp_path_factory):
    """Typed events of the real pipeline (tiny model, energy VAD, real time so partials happen)."""
    import threading

    from agent.audio import FileSource
    from agent.events import Emitter
    from agent.listening import EnergyVad, Segmenter
    from agent.pipeline.live import LivePipeline
    from agent.pipeline.settings import PipelineSettings
    from agent.recognizer import load_recognizer
    from agent.recognizer.settings import RecognizerSettings

    d = tmp_path_factory.mktemp("pipeline")
    model = tm.write_sherpa(d / "model")
    rng = np.random.default_rng(0)
    audio = np.concatenate([np.zeros(4800), rng.standard_normal(20000) * 6000, np.zeros(12800)])
    wav = write_wav(d / "speech.wav", audio)
    stamped = []

    class Collect:
        publish, close = staticmethod(stamped.append), staticmethod(lambda: None)

    pipeline = LivePipeline(FileSource(str(wav)), Segmenter(EnergyVad()),
                            load_recognizer(RecognizerSettings(model_dir=str(model))),
                            Emitter("dev1", "00000000", [Collect]), PipelineSettings())
    assert pipeline.run(threading.Event())
    events = [s.event for s in stamped]
    assert {e.type for e in events} == {"speech_start", "partial", "speech_end", "final", "emotion", "language"}
    return events


def test_every_topic_payload_matches_its_schema(broker, real_events):
    sub = Subscriber(broker, ["stt-agent/#", "hermes/#"])
    handled = []
    pub = MqttPublisher(settings_for(broker, hermes__enabled=True), on_command=lambda _, c: handled.append(c),
                        health=lambda: {"provider": "cpu", "model": "tiny", "overflows": 0, "samples_lost": 0,
                                        "audio_device": {"name": "file", "state": "open"}})
    pub.start()
    assert pub.wait_connected(10)
    emit_all(pub, real_events + [Problem("pipeline", "decode_failed", "test", utterance_id=1)])
    sub.client.publish("stt-agent/dev1/cmd", b'{"command": "dance"}', qos=1)
    base = "stt-agent/dev1/"
    sub.wait_topic(base + "error", 2)
    pub.stop()
    sub.wait_for(lambda ms: [m for m in ms if m.topic == base + "status" and m.payload == b"offline"])
    sub.close()
    seen = set()
    for m in sub.messages:
        name = SCHEMA_OF.get(m.topic[len(base):]) if m.topic.startswith(base) else HERMES_SCHEMA.get(m.topic)
        if m.topic in (base + "status", base + "cmd"):
            assert m.topic.endswith("cmd") or m.payload in (b"online", b"offline")
            continue
        assert name, f"no schema for {m.topic}"
        body = json.loads(m.payload)
        s = schema(name)
        jsonschema.validate(body, s)
        undeclared = set(body) - set(s["properties"])
        assert not undeclared, f"{m.topic}: fields missing from {name}: {undeclared}"
        seen.add(name)
    assert seen == set(SCHEMA_OF.values()) | set(HERMES_SCHEMA.values())
    # seq counts every event message in order; finals carry a message expiry (MQTT 5)
    seqs = [json.loads(m.payload)["seq"] for m in sub.messages if m.topic.startswith(base)
            and m.topic[len(base):] not in ("status", "health", "cmd")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    finals = sub.on(base + "stt/final")
    assert len(finals) == 1 and 55 <= finals[0].properties.MessageExpiryInterval <= 60
    body = json.loads(finals[0].payload)
    assert body["text"] and body["tokens"] and body["timing"]["endpoint_delay_ms"] is not None
    health = json.loads(sub.on(base + "health")[0].payload)
    assert health["provider"] == "cpu" and health["mqtt"]["connected"] is True


def test_status_online_retained_and_clean_stop_delivers_then_offline(broker):
    sub = Subscriber(broker, "stt-agent/dev1/#")
    pub = MqttPublisher(settings_for(broker))
    pub.start()
    assert pub.wait_connected(10)
    assert retained(broker, "stt-agent/dev1/status") == b"online"
    emit_all(pub, [final(i) for i in range(1, 101)])
    assert pub.stop() == 0  # stop drains the outbox first
    got = sub.wait_for(lambda ms: ms if ms and ms[-1].payload == b"offline" else None)
    ids = [json.loads(m.payload)["utterance_id"] for m in got if m.topic.endswith("stt/final")]
    assert ids == list(range(1, 101))
    assert retained(broker, "stt-agent/dev1/status") == b"offline"
    health = json.loads(retained(broker, "stt-agent/dev1/health"))  # the last word: not connected any more
    assert health["state"] == "stopped" and health["mqtt"]["connected"] is False
    jsonschema.validate(health, schema("health.json"))
    sub.close()


def test_commands_valid_reach_handler_bad_ones_answered_on_error_topic(broker, caplog):
    caplog.set_level(logging.WARNING, logger="agent.mqtt")
    handled = []

    def handler(device_id, command):
        assert device_id == "dev1"
        if command["command"] == "unmute":
            raise RuntimeError("microphone is gone")
        handled.append(command)

    sub = Subscriber(broker, ["stt-agent/dev1/error", "stt-agent/dev1/health"])
    send = lambda payload, retain=False: sub.client.publish("stt-agent/dev1/cmd", payload, qos=1, retain=retain)
    # a retained command is not executed (it would run again on every reconnect)
    send(b'{"command": "mute", "id": "old"}', retain=True).wait_for_publish(5)
    pub = MqttPublisher(settings_for(broker, commands_per_s=100), on_command=handler)
    pub.start()
    assert pub.wait_connected(10)
    refused = json.loads(sub.wait_topic("stt-agent/dev1/error")[0].payload)
    assert (refused["code"], refused["request_id"]) == ("retained", "old")
    # ...and refused the same way when it is published while the agent listens (the broker strips the
    # flag for existing subscribers unless asked to keep it)
    send(b'{"command": "mute", "id": "live"}', retain=True).wait_for_publish(5)
    refused = json.loads(sub.wait_topic("stt-agent/dev1/error", 2)[1].payload)
    assert (refused["code"], refused["request_id"]) == ("retained", "live")
    send(b"", retain=True).wait_for_publish(5)  # clears it: nothing to answer
    sub.wait_topic("stt-agent/dev1/health")  # the first health, sent on connect
    time.sleep(0.3)
    assert len(sub.on("stt-agent/dev1/error")) == 2
    sub.messages.clear()
    bad = [(b"{not json", "bad_json"), (b'{"command": "dance", "id": "r1"}', "unknown_command"),
           (b'{"command": "set_language", "language": "fr"}', "bad_field"), (b'"mute"', "bad_json"),
           (b'{"language": "en"}', "missing_field")]
    for payload, _ in bad:
        send(payload)
    good = [{"command": "mute"}, {"command": "set_language", "language": "en"},
            {"command": "set_language", "allowed_languages": ["zh", "en"]}, {"command": "clear_language"}]
    for command in good:
        send(json.dumps(command).encode())
    send(b'{"command": "unmute", "id": 9}')
    send(b'{"command": "health"}')
    errors = payloads(sub.wait_topic("stt-agent/dev1/error", len(bad) + 1))
    sub.wait_topic("stt-agent/dev1/health", 1)
    deadline = time.monotonic() + 5
    while len(handled) < len(good) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert handled == good and {"command": "mute"} not in handled[1:]
    for body in errors:
        jsonschema.validate(body, schema("error.json"))
        assert body["source"] == "command" and body["message"]
    assert [e["code"] for e in errors[:len(bad)]] == [code for _, code in bad]
    assert errors[0]["request"] == "{not json" and errors[1]["request_id"] == "r1"
    assert errors[-1]["code"] == "command_failed" and "microphone is gone" in errors[-1]["message"]
    assert errors[-1]["request_id"] == 9
    # the first refusal is logged; the rest of a burst within 10 s only as a count with the next line
    assert caplog.text.count("rejected command") == 1 and "retained commands are ignored" in caplog.text
    assert pub.connected and pub.stats()["commands"] == {"accepted": 6, "rejected": 7, "over_limit": 0,
                                                         "for_others": 0}
    pub.stop()
    sub.close()


def test_home_assistant_discovery_and_hermes_mirror(broker):
    sub = Subscriber(broker, ["homeassistant/#", "hermes/#"])
    pub = MqttPublisher(settings_for(broker, home_assistant__enabled=True, hermes__enabled=True,
                                     hermes__site_id="kiosk"))
    pub.start()
    assert pub.wait_connected(10)
    configs = sub.wait_topic("homeassistant/", 5, prefix=True)
    topics = sorted(m.topic for m in configs)
    assert topics == ["homeassistant/binary_sensor/dev1/listening/config", "homeassistant/event/dev1/speech/config",
                      "homeassistant/sensor/dev1/emotion/config", "homeassistant/sensor/dev1/language/config",
                      "homeassistant/sensor/dev1/last_text/config"]
    for m in configs:
        config = json.loads(m.payload)
        assert config["availability_topic"] == "stt-agent/dev1/status" and config["state_topic"].startswith(
            "stt-agent/dev1/")
    assert retained(broker, "homeassistant/sensor/dev1/emotion/config") is not None
    # Home Assistant restarts: discovery again
    sub.client.publish("homeassistant/status", b"online", qos=1)
    sub.wait_topic("homeassistant/", 10, prefix=True)
    emit_all(pub, [partial(1, "x" * 300), final(1, "x" * 300)])
    mirrored, text = (json.loads(sub.wait_topic(t)[0].payload)
                      for t in ("hermes/asr/partialTextCaptured", "hermes/asr/textCaptured"))
    jsonschema.validate(mirrored, schema("hermes-partial-text-captured.json"))
    jsonschema.validate(text, schema("hermes-text-captured.json"))
    assert text["siteId"] == "kiosk" and text["text"] == "x" * 300 and text["sessionId"] == f"{pub.session}-1"
    pub.stop()
    sub.close()


def test_a_full_outbox_gives_up_emotion_and_language_before_finals_then_delivers_in_order(make_broker, caplog):
    caplog.set_level(logging.WARNING, logger="agent.mqtt")
    b = make_broker()
    sub = Subscriber(b, "stt-agent/dev1/stt/#", client_id="outbox-sub", persistent=True)
    b.stop()  # the subscriber's session is saved; the agent starts with the broker away
    pub = MqttPublisher(settings_for(b, outbox_max=30))  # 25 utterances come: final, emotion, language each
    pub.start()
    for i in range(1, 26):
        emit_all(pub, utterance(i) + [partial(i)])  # partials are dropped while disconnected
    stats = pub.stats()
    assert not pub.connected and stats["queued"] == 30
    # 75 for a lane of 30: emotion and language give way first, so every final waits (and the newest moods)
    by_type = {**{kind: 0 for kind in DROP_TYPES}, "final": 0, "emotion": 23, "language": 22, "partial": 25}
    assert stats["dropped"] == {"outbox_full": 45, "outbox_bytes": 0, "expired": 0, "offline": 25,
                                "mirrors_offline": 0, "replies": 0, "by_type": by_type, "collapsed": 0}
    assert "outbox full" in caplog.text
    b.start()
    got = sub.wait_topic("stt-agent/dev1/stt/final", 25, timeout=15)
    assert [json.loads(m.payload)["utterance_id"] for m in got] == list(range(1, 26))
    assert not [m for m in sub.messages if m.topic.endswith("partial")]
    pub.stop()
    sub.close()


def test_events_older_than_message_expiry_are_not_delivered(make_broker):
    b = make_broker()
    sub = Subscriber(b, "stt-agent/dev1/stt/final", client_id="expiry-sub", persistent=True)
    b.stop()
    pub = MqttPublisher(settings_for(b, message_expiry_s=1))
    pub.start()
    emit_all(pub, utterance(1) + utterance(2))
    time.sleep(1.1)
    emit_all(pub, utterance(3))
    b.start()
    got = sub.wait_topic("stt-agent/dev1/stt/final", 1, timeout=15)
    assert pub.wait_connected(5)
    time.sleep(0.3)
    assert [json.loads(m.payload)["utterance_id"] for m in sub.on("stt-agent/dev1/stt/final")] == [3]
    assert got[0].properties.MessageExpiryInterval == 1 and pub.stats()["dropped"]["expired"] == 6  # final, emotion, language
    pub.stop()
    sub.close()


def test_mqtt_3_1_1(broker):
    sub = Subscriber(broker, "stt-agent/dev1/#")
    pub = MqttPublisher(settings_for(broker, protocol="3.1.1"))
    pub.start()
    assert pub.wait_connected(10)
    emit_all(pub, [final(1)])
    body = json.loads(sub.wait_topic("stt-agent/dev1/stt/final")[0].payload)
    jsonschema.validate(body, schema("final.json"))
    pub.stop()
    sub.close()


def test_bad_events_and_callbacks_never_reach_the_caller(broker):
    pub = MqttPublisher(settings_for(broker), health=lambda: 1 / 0)
    pub.start()
    assert pub.wait_connected(10)
    class Nonsense:
        type = "nonsense"

    emit_all(pub, [Nonsense()])
    pub.publish("not even an event")  # type: ignore[arg-type]
    sub = Subscriber(broker, "stt-agent/dev1/health")
    health = json.loads(sub.wait_topic("stt-agent/dev1/health")[0].payload)  # retained, from the connect
    assert "ZeroDivisionError" in health["health_error"]
    emit_all(pub, [final(1)])
    assert pub.stop() == 0 and pub.stats()["errors"] == 2 and pub.published >= 1
    sub.close()
