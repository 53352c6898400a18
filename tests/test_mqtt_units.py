"""MQTT pieces without a broker: settings, command validation (by docs/schemas/command.json itself),
outbox lanes, bounds, collapsing and expiry, latency percentiles, payload mapping, Home Assistant discovery."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from agent.config_schema import build
from agent.errors import ConfigError
from agent.mqtt import commands
from agent.mqtt.commands import CommandError, parse_command, request_id_of
from agent.mqtt.discovery import discovery_messages
from agent.mqtt.health import LatencyWindow
from agent.mqtt.outbox import DROP_TYPES, EXPIRED, FULL, OFFLINE, Outbox
from agent.mqtt.payloads import EventMapper, Message
from agent.mqtt.settings import MqttQosSettings, MqttSettings
from agent.mqtt.topics import Topics, command_device, command_filter, device_id_of
from helpers import final, stamped

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def schema(name):
    return json.loads((SCHEMAS / name).read_text())


def problems_of(data):
    problems = []
    build(MqttSettings, data, path="mqtt", problems=problems)
    return problems


def test_settings_defaults_and_checks():
    s = MqttSettings()
    assert (s.port, s.protocol, s.topic_prefix, s.tls.insecure) == (1883, "5", "stt-agent", False)
    assert (s.qos.partial, s.qos.final, s.qos.health, s.qos.error) == (0, 1, 0, 1)
    assert not s.home_assistant.enabled and not s.hermes.enabled
    assert problems_of({"host": "b", "tls": {"enabled": True, "ca_file": "/x.pem"}}) == []
    assert "unknown key" in problems_of({"pasword": "x"})[0]  # the password is never a setting
    assert "unknown key" in problems_of({"password": "x"})[0]
    assert "not one of" in problems_of({"protocol": "4"})[0]
    assert "expected a string" in problems_of({"protocol": 5})[0]
    assert "out of range" in problems_of({"port": 0})[0]
    assert "not one of" in problems_of({"qos": {"final": 3}})[0]
    assert "not both" in problems_of({"username": "u", "password_file": "/f", "password_env": "P"})[0]
    assert "needs a username" in problems_of({"password_env": "P"})[0]
    assert "reconnect_max_s" in problems_of({"reconnect_min_s": 10, "reconnect_max_s": 5})[0]
    assert "one topic level" in problems_of({"device_id": "a/b"})[0]
    assert "contains a wildcard" in problems_of({"topic_prefix": "x/#"})[0]
    assert "go together" in problems_of({"tls": {"cert_file": "/c.pem"}})[0]


@pytest.mark.parametrize("data, message", [
    ({"device_id": "kiosk\x01"}, "mqtt.device_id: 'kiosk\\x01' contains the character U+0001, which MQTT topics"),
    ({"device_id": "a\x7fb"}, "contains the character U+007F"),
    ({"device_id": "a\ufffe"}, "contains the character U+FFFE"),
    ({"device_id": "x" * 70000}, "is 70000 bytes long (at most 253)"),
    ({"device_id": "+"}, "contains a wildcard (+ or #)"),
    ({"topic_prefix": "$SYS"}, "mqtt.topic_prefix: '$SYS' starts with $, which brokers reserve"),
    ({"topic_prefix": "$share/g"}, "starts with $"),
    ({"topic_prefix": "a//b"}, "has an empty topic level"),
    ({"topic_prefix": ""}, "mqtt.topic_prefix: '' is empty"),
    ({"home_assistant": {"discovery_prefix": "ha/"}}, "mqtt.home_assistant.discovery_prefix: 'ha/' has an empty"),
    ({"client_id": "c\x00"}, "mqtt.client_id: 'c\\x00' contains the character U+0000"),
    ({"enabled": True, "host": ""}, "mqtt.host: is empty: name the broker"),
])
def test_identity_values_that_would_break_publishing_are_refused(data, message):
    """Brokers drop a client whose topics carry these, and log nothing the agent sees."""
    problems = problems_of(data)
    assert len(problems) == 1 and message in problems[0], problems
    assert len(problems[0]) < 300  # a 70,000-character value is not echoed back whole


def test_device_id_defaults_to_host_name(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "jetson/1 +x")
    assert device_id_of(MqttSettings()) == "jetson_1__x"
    assert device_id_of(MqttSettings(device_id="kiosk-3")) == "kiosk-3"


def test_password_never_in_repr_and_read_from_file_or_env(tmp_path, monkeypatch):
    from agent.mqtt.connection import read_password

    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    s = MqttSettings(username="u", password_file=str(f))
    assert read_password(s) == "s3cret" and "s3cret" not in repr(s)
    monkeypatch.setenv("MQTT_PW", "envpw")
    assert read_password(MqttSettings(username="u", password_env="MQTT_PW")) == "envpw"
    with pytest.raises(ConfigError, match="MISSING_PW is not set"):
        read_password(MqttSettings(username="u", password_env="MISSING_PW"))
    with pytest.raises(ConfigError, match="cannot read"):
        read_password(MqttSettings(username="u", password_file=str(tmp_path / "nope")))


def test_a_password_file_everyone_can_read_is_warned_about_once(tmp_path, caplog):
    import logging

    from agent.mqtt.connection import read_password

    shared = tmp_path / "pw"
    shared.write_text("s3cret\n")
    shared.chmod(0o644)
    private = tmp_path / "pw-private"
    private.write_text("s3cret\n")
    private.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="agent.mqtt.connection"):
        for _ in range(3):  # check-config, the client, a reload's client
            assert read_password(MqttSettings(username="u", password_file=str(shared))) == "s3cret"
        assert read_password(MqttSettings(username="u", password_file=str(private))) == "s3cret"
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"mqtt.password_file: {shared} is readable by every user of this machine (mode 644); "
                        f"chmod 600 {shared} (owned by the agent's user)"]


VALID = [
    {"command": "mute"}, {"command": "unmute", "id": 7}, {"command": "health"}, {"command": "clear_language"},
    {"command": "set_language", "language": "en"}, {"command": "set_language", "allowed_languages": ["zh", "en"]},
]
# payload, code, the message (exactly): it names the field and what was expected
INVALID = [
    (b"not json", "bad_json", "payload is not JSON: Expecting value: line 1 column 1 (char 0)"),
    (b"[1, 2]", "bad_json", "payload must be a JSON object, got an array"),
    (b"\xff\xfe", "bad_json", ("payload is not JSON: 'utf-8' codec can't decode byte 0xff in position 0: "
                               "invalid start byte")),
    (b"{}", "missing_field", "no 'command' field"),
    (b'{"command": "dance"}', "unknown_command",
     "unknown command 'dance' (known: mute, unmute, set_language, clear_language, health, set_hotwords, clear_hotwords)"),
    (b'{"command": 7}', "unknown_command",
     "unknown command 7 (known: mute, unmute, set_language, clear_language, health, set_hotwords, clear_hotwords)"),
    (b'{"command": "mute", "volume": 3}', "bad_field", "mute: unknown field(s) 'volume' (allowed: command, id)"),
    (b'{"command": "set_language"}', "bad_field",
     "set_language needs exactly one of 'language' or 'allowed_languages'"),
    (b'{"command": "set_language", "language": "fr"}', "bad_field",
     "language 'fr' is not one of: zh, en, yue, ja, ko"),
    (b'{"command": "set_language", "language": "en", "allowed_languages": ["en"]}', "bad_field",
     "set_language needs exactly one of 'language' or 'allowed_languages'"),
    (b'{"command": "set_language", "language": "en", "volume": 3}', "bad_field",
     "set_language: unknown field(s) 'volume' (allowed: command, id, language)"),
    (b'{"command": "set_language", "volume": 3}', "bad_field", "set_language: unknown field(s) 'volume'"),
    (b'{"command": "set_language", "allowed_languages": []}', "bad_field", "allowed_languages must not be empty"),
    (b'{"command": "set_language", "allowed_languages": ["en", "en"]}', "bad_field",
     "allowed_languages lists an item twice: ['en', 'en']"),
    (b'{"command": "set_language", "allowed_languages": ["en", "fr"]}', "bad_field",
     "allowed_languages[1] 'fr' is not one of: zh, en, yue, ja, ko"),
    (b'{"command": "set_language", "allowed_languages": "en"}', "bad_field",
     "allowed_languages must be an array, got a string"),
    (b'{"command": "mute", "id": [1]}', "bad_field", "id must be a string or an integer, got an array"),
    (b'{"command": "mute", "id": true}', "bad_field", "id must be a string or an integer, got true or false"),
    (b'{"command": "mute", "pad": "' + b"x" * 5000 + b'"}', "too_large",
     "command payload is 5030 bytes (at most 4096)"),
]


@pytest.mark.parametrize("command", VALID)
def test_valid_commands_pass_code_and_schema(command):
    jsonschema.validate(command, schema("command.json"))
    assert parse_command(json.dumps(command).encode()) == command


@pytest.mark.parametrize("payload,code,message", INVALID)
def test_invalid_commands_fail_code_and_schema(payload, code, message):
    with pytest.raises(CommandError) as info:
        parse_command(payload)
    assert (info.value.code, info.value.message) == (code, message)
    try:
        data = json.loads(payload)
    except ValueError:
        return
    if code != "too_large":
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, schema("command.json"))


def test_the_schemas_languages_are_the_recognizers():
    """Commands are checked by the schema's language lists: both must be the model's."""
    from agent.recognizer.settings import LANGUAGES

    assert parse_command(b'{"command":"set_language","language":"yue"}') == {"command": "set_language",
                                                                             "language": "yue"}
    branches = schema("command.json")["oneOf"]
    assert tuple(branches[1]["properties"]["language"]["enum"]) == tuple(LANGUAGES) == commands.languages()
    assert tuple(branches[2]["properties"]["allowed_languages"]["items"]["enum"]) == tuple(LANGUAGES)


def test_commands_are_checked_by_the_schema_file_itself(tmp_path, monkeypatch):
    """No second copy of the rules: a command the file adds is valid, one it removes is unknown."""
    changed = schema("command.json")
    changed["properties"]["command"]["enum"] = ["mute", "reboot"]
    changed["oneOf"][0]["properties"]["command"]["enum"] = ["mute", "reboot"]
    path = tmp_path / "command.json"
    path.write_text(json.dumps(changed))
    monkeypatch.setattr(commands, "SCHEMA_PATH", path)
    commands._validator.cache_clear()
    try:
        assert parse_command(b'{"command": "reboot"}') == {"command": "reboot"}
        with pytest.raises(CommandError, match="unknown command 'health' .known: mute, reboot."):
            parse_command(b'{"command": "health"}')
        monkeypatch.setattr(commands, "SCHEMA_PATH", tmp_path / "missing.json")
        commands._validator.cache_clear()
        assert "cannot read" in commands.schema_problem()
        with pytest.raises(CommandError) as info:
            parse_command(b'{"command": "mute"}')
        assert info.value.code == "unsupported"
    finally:
        commands._validator.cache_clear()


def test_command_topics_name_their_device():
    assert command_filter("a/b") == "a/b/+/cmd"
    assert command_device("a/b", "a/b/kiosk-1/cmd") == "kiosk-1"
    assert command_device("a/b", "a/b//cmd") == ""  # checked (and refused) by the publisher
    for topic in ("a/b/cmd", "a/b/x/y/cmd", "a/c/x/cmd", "a/b/x/status", "homeassistant/status"):
        assert command_device("a/b", topic) is None, topic


def msg(kind="final", seq=1, created=0.0, **kw):
    return Message(kind, "t", b"{}", 1, seq=seq, created=created, **kw)


def error(device, code, seq, created=0.0):
    payload = json.dumps({"type": "error", "device_id": device, "seq": seq, "code": code}).encode()
    return Message("error", f"p/{device}/error", payload, 1, seq=seq, created=created, event_type="error",
                   collapse_key=(device, code))


def test_outbox_drops_oldest_when_full_and_counts():
    box = Outbox(3)
    dropped = [box.put(msg(seq=i)) for i in range(1, 6)]
    assert [d.seq if d else None for d in dropped] == [None, None, None, 1, 2]
    assert box.dropped_full == 2 and [box.pop().seq for _ in range(3)] == [3, 4, 5] and box.pop() is None


def test_outbox_drops_partials_offline_and_expires_old_events():
    box = Outbox(10)
    for m in (msg("partial", 1), msg("final", 2), msg("partial", 3), msg("vad", 4)):
        box.put(m)
    assert box.drop_unqueued() == 2 and box.dropped_offline == 2 and len(box) == 2
    assert box.remaining_expiry(msg(created=100.0), 60, now=130.5) == 29
    assert box.remaining_expiry(msg(created=100.0), 60, now=159.9) == 1
    assert box.remaining_expiry(msg(created=100.0), 60, now=160.0) == 0 and box.dropped_expired == 1
    assert box.remaining_expiry(msg(created=100.0), 0, now=1e9) is None  # 0 = never
    assert box.remaining_expiry(msg("partial", created=100.0), 60, now=1e9) is None


def test_latency_window_percentiles():
    w = LatencyWindow(size=100)
    assert w.summary() == {"p50": None, "p95": None, "count": 0}
    for v in range(1, 201):  # only the last 100 (101..200) are kept
        w.add(v)
    w.add(None)
    assert w.summary() == {"p50": 150.0, "p95": 195.0, "count": 200}


def test_final_maps_to_its_topic_and_hermes_and_the_derived_events_to_theirs():
    from agent.events import Emotion, Language, Problem

    mapper = EventMapper("stt-agent", MqttQosSettings(), hermes_site="kitchen")
    out = mapper.map(stamped(final(3, "hello"), seq=7, device_id="dev", session="0123abcd"))
    assert [m.kind for m in out] == ["final", "hermes_text"]
    assert [m.topic for m in out] == ["stt-agent/dev/stt/final", "hermes/asr/textCaptured"]
    body, hermes = (json.loads(m.payload) for m in out)
    assert body["seq"] == 7 and body["timing"] == {"queue_ms": 0.0, "decode_ms": 5.0, "endpoint_delay_ms": 100.0}
    assert hermes == {"text": "hello", "likelihood": 0.9, "seconds": 0.005, "siteId": "kitchen",
                      "sessionId": "0123abcd-3", "wakewordId": None, "lang": "en"}
    jsonschema.validate(body, schema("final.json"))
    jsonschema.validate(hermes, schema("hermes-text-captured.json"))
    emotion = mapper.map(stamped(Emotion(3, "happy", {"happy": 0.8}, 0.7), seq=8, device_id="dev"))
    language = mapper.map(stamped(Language(3, "en", {"en": 0.9}, 0.7), seq=9, device_id="other"))
    assert (emotion[0].topic, language[0].topic) == ("stt-agent/dev/emotion", "stt-agent/other/language")
    jsonschema.validate(json.loads(emotion[0].payload), schema("emotion.json"))
    # answers to commands travel in their own lane; pipeline errors with the events
    reply = mapper.map(stamped(Problem("command", "bad_json", "x", request="{", request_id=4)))
    failure = mapper.map(stamped(Problem("pipeline", "decode_failed", "x", utterance_id=2)))
    assert (reply[0].kind, failure[0].kind) == ("reply", "error") and reply[0].queued
    # a pipeline error may collapse into a waiting one of its device and code; an answer never does
    assert (failure[0].collapse_key, reply[0].collapse_key) == (("dev1", "decode_failed"), None)
    assert (failure[0].drop_type, reply[0].drop_type, emotion[0].drop_type) == ("error", "reply", "emotion")
    assert reply[0].topic == failure[0].topic == "stt-agent/dev1/error"
    assert json.loads(reply[0].payload)["request_id"] == 4


def test_outbox_keeps_finals_when_command_answers_flood_it():
    """A flood of bad commands fills only the answers' lane: finals stay, and leave in creation order."""
    box = Outbox(5, max_replies=3)
    box.put(msg("final", 1, created=1.0))
    for i in range(100):
        box.put(msg("reply", 100 + i, created=2.0 + i))
    box.put(msg("final", 2, created=200.0))
    assert box.dropped_replies == 97 and box.dropped_full == 0
    assert [box.pop().seq for _ in range(5)] == [1, 197, 198, 199, 2]


def test_finals_have_a_lane_nothing_else_can_evict():
    """Partials, vad and errors fill only their own lane; in the finals' lane emotion and language go first."""
    drops = []
    box = Outbox(3, on_drop=lambda m, reason: drops.append((m.seq, m.drop_type, reason)))
    box.put(msg("final", 1, created=1.0))
    box.put(msg("emotion", 2, created=2.0))
    for i in range(3, 103):  # 100 partials, vad events and errors of other codes
        kind = ("partial", "vad", "error")[i % 3]
        box.put(msg(kind, i, created=float(i), event_type="speech_start" if kind == "vad" else kind))
    assert box.dropped_by_type["final"] == box.dropped_by_type["emotion"] == 0
    assert [m.seq for m in box._finals] == [1, 2]
    box.put(msg("language", 103, created=103.0))
    box.put(msg("final", 104, created=104.0))  # the lane is full: the oldest emotion goes, counted and told
    assert drops[-1] == (2, "emotion", FULL) and box.dropped_by_type["final"] == 0
    box.put(msg("final", 105, created=105.0))  # then the language
    box.put(msg("final", 106, created=106.0))  # finals only: the oldest final goes
    assert drops[-2:] == [(103, "language", FULL), (1, "final", FULL)] and box.dropped_by_type["final"] == 1
    assert box.dropped_full == 100 and sum(box.dropped_by_type.values()) == 100
    assert (box.dropped_by_type["partial"], box.dropped_by_type["speech_start"], box.dropped_by_type["error"]) == (
        33, 32, 32)  # 34, 33 and 33 came; the last of each (100, 101, 102) waits
    # the sender takes the oldest head of the lanes: creation order across lanes
    assert [box.pop().seq for _ in range(6)] == [100, 101, 102, 104, 105, 106] and box.pop() is None


def test_a_full_events_lane_drops_a_partial_first_and_a_status_last():
    box = Outbox(3)
    for m in (msg("status", 1, retain=True), msg("vad", 2), msg("partial", 3)):
        box.put(m)
    assert box.put(msg("vad", 4)).seq == 3  # the partial: stale anyway
    assert box.put(msg("vad", 5)).seq == 2  # then the oldest event that is not a status
    assert box.put(msg("vad", 6)).seq == 4
    assert [m.seq for m in box._events] == [1, 5, 6]
    for i in (7, 8):
        box.put(msg("status", i, retain=True))
    assert box.put(msg("status", 9, retain=True)).seq == 1  # only statuses left: the oldest goes


def test_one_devices_repeated_errors_collapse_into_the_waiting_one():
    box = Outbox(10)
    box.put(error("b", "bad_frame", 1, created=1.0))
    box.put(msg("final", 2, created=2.0))
    for seq in range(3, 3003):
        assert box.put(error("b", "bad_frame", seq, created=float(seq))) is None
    box.put(error("b", "decode_failed", 3003, created=3003.0))  # another code: its own message
    box.put(error("c", "bad_frame", 3004, created=3004.0))  # another device: its own message
    assert len(box) == 4 and box.collapsed == 3000 and sum(box.dropped_by_type.values()) == 0
    first = box.pop()
    assert first.seq == 1 and json.loads(first.payload) == {"type": "error", "device_id": "b", "seq": 1,
                                                            "code": "bad_frame", "repeated": 3000}
    assert [box.pop().seq for _ in range(3)] == [2, 3003, 3004]
    box.put(error("b", "bad_frame", 3005))  # nothing of its kind waits any more: queued, not collapsed
    assert "repeated" not in json.loads(box.pop().payload) and box.collapsed == 3000


def test_every_drop_is_counted_by_type_and_told_with_its_reason():
    drops = []
    box = Outbox(10, on_drop=lambda m, reason: drops.append((m.drop_type, reason)))
    box.put(msg("partial", 1, event_type="partial"))
    box.put(msg("hermes_partial", None))
    box.drop_unqueued()
    box.count_offline(msg("partial", 2, event_type="partial"))
    assert box.remaining_expiry(msg("final", 3, created=0.0, event_type="final"), 60, now=61.0) == 0
    box.put(error("b", "x", 4))
    box.put(error("b", "x", 5))  # collapsed: not a drop
    assert drops == [("partial", OFFLINE), ("hermes_partial", OFFLINE), ("partial", OFFLINE), ("final", EXPIRED)]
    assert set(DROP_TYPES) <= set(box.dropped_by_type)
    assert {k: v for k, v in box.dropped_by_type.items() if v} == {"partial": 2, "hermes_partial": 1, "final": 1}


def test_offline_counts_partials_apart_from_their_hermes_mirrors():
    box = Outbox(10)
    for m in (msg("partial", 1), msg("hermes_partial", None), msg("partial", 2)):
        box.put(m)
    box.drop_unqueued()
    assert (box.dropped_offline, box.dropped_mirrors_offline) == (2, 1)


def test_deeply_nested_json_is_bad_json_not_a_traceback():
    payload = b"[" * 2000 + b"]" * 2000  # under the 4,096-byte limit
    with pytest.raises(CommandError) as info:
        parse_command(payload)
    assert info.value.code == "bad_json" and "nested too deeply" in info.value.message
    assert request_id_of(b'{"command": "mute", "id": "r1"}') == "r1"
    assert request_id_of(payload) is None and request_id_of(b"\xff") is None
    assert request_id_of(b'{"command": "mute", "id": true}') is None  # not an id the schema takes
    with pytest.raises(CommandError) as info:
        parse_command(b'{"command": "dance", "id": 4}')
    assert info.value.request_id == 4


def test_discovery_configs():
    msgs = dict(discovery_messages(Topics("stt-agent", "kiosk.1"), "homeassistant", "", "0.1.0"))
    assert sorted(msgs) == ["homeassistant/binary_sensor/kiosk_1/listening/config",
                            "homeassistant/event/kiosk_1/speech/config",
                            "homeassistant/sensor/kiosk_1/emotion/config",
                            "homeassistant/sensor/kiosk_1/language/config",
                            "homeassistant/sensor/kiosk_1/last_text/config"]
    for payload in msgs.values():
        config = json.loads(payload)
        assert config["availability_topic"] == "stt-agent/kiosk.1/status"
        assert config["device"]["identifiers"] == ["stt-agent_kiosk_1"] and config["unique_id"].startswith("stt_agent")
    text = json.loads(msgs["homeassistant/sensor/kiosk_1/last_text/config"])
    assert text["value_template"] == "{{ value_json.text[:255] }}" and text["json_attributes_topic"].endswith("final")
    assert json.loads(msgs["homeassistant/event/kiosk_1/speech/config"])["event_types"] == ["final"]


# The keys of Home Assistant's MQTT discovery schema (the MQTT integration's documentation: entity options of
# sensor, event and binary_sensor, the shared availability, device and origin blocks) that these configs use.
HA_KEYS = {
    "common": {"name", "icon", "unique_id", "default_entity_id", "object_id", "state_topic", "value_template",
               "json_attributes_topic", "json_attributes_template", "availability_topic", "payload_available",
               "payload_not_available", "device", "origin"},
    "event": {"event_types"},
    "binary_sensor": {"device_class"},
    "sensor": set(),
}


def test_discovery_names_entities_by_default_entity_id_keeping_object_id_for_older_home_assistants():
    """HA 2025.10 deprecated object_id and Core 2026.4 ignores it: default_entity_id is <component>.<object id>;
    object_id stays for older versions (2025.10+ takes default_entity_id when both are given, without a warning)."""
    msgs = dict(discovery_messages(Topics("stt-agent", "kiosk.1"), "homeassistant", "", "0.1.0"))
    ids = set()
    for topic, payload in msgs.items():
        prefix, component, node, object_id, config_word = topic.split("/")
        config = json.loads(payload)
        assert config["default_entity_id"] == f"{component}.stt_agent_kiosk_1_{object_id}"
        assert config["object_id"] == config["unique_id"] == f"stt_agent_kiosk_1_{object_id}"
        assert set(config) <= HA_KEYS["common"] | HA_KEYS[component], set(config) - HA_KEYS["common"]
        ids.add(config["default_entity_id"])
    assert ids == {"sensor.stt_agent_kiosk_1_last_text", "sensor.stt_agent_kiosk_1_emotion",
                   "sensor.stt_agent_kiosk_1_language", "event.stt_agent_kiosk_1_speech",
                   "binary_sensor.stt_agent_kiosk_1_listening"}


def test_status_claims_only_another_instances_later_live_online_takes_a_device():
    from agent.mqtt.claims import StatusClaims

    claims = StatusClaims("stt-agent", "ours")
    topic = "stt-agent/dev-1/status"
    assert claims.device_of(topic) == "dev-1" and claims.device_of("stt-agent/dev-1/stt/final") is None
    assert claims.heard("stt-agent/dev-1/cmd", b"x", False, "theirs") is False  # not a status topic
    claims.said_online("dev-1")
    assert not claims.taken_elsewhere("dev-1")
    for retained, session in ((True, "theirs"), (False, None), (False, "ours")):  # said before, untagged, ours
        assert claims.heard(topic, b"online", retained, session)
        assert not claims.taken_elsewhere("dev-1")
    claims.heard(topic, b"online", False, "theirs")
    assert claims.taken_elsewhere("dev-1")
    claims.said_online("dev-1")  # the device came back here
    assert not claims.taken_elsewhere("dev-1")
    claims.heard(topic, b"online", False, "theirs")
    claims.heard(topic, b"offline", False, "theirs")  # and left there
    assert not claims.taken_elsewhere("dev-1")
