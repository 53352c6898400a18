"""Commands for every device on the prefix, against a real Mosquitto: `<prefix>/+/cmd` reaches the
handler with the device id, answers go to that device's error topic numbered among its events."""

from __future__ import annotations

import json
import logging
import time

import jsonschema
from helpers import ROOT, settings_for
from mosquitto_fixture import Subscriber, needs_mosquitto

from agent.events import Emitter
from agent.mqtt.commands import CommandError
from agent.mqtt.publisher import MqttPublisher

pytestmark = needs_mosquitto
ERROR_SCHEMA = json.loads((ROOT / "docs" / "schemas" / "error.json").read_text(encoding="utf-8"))


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def answers(sub, device, count):
    got = [json.loads(m.payload) for m in sub.wait_topic(f"stt-agent/{device}/error", count)]
    for body in got:
        jsonschema.validate(body, ERROR_SCHEMA)
        assert body["device_id"] == device and body["source"] == "command"
    return got


def test_commands_for_other_devices_reach_the_handler_and_are_answered_on_their_topic(broker):
    handled = []
    streaming = {"kiosk-2": Emitter("kiosk-2", "0badcafe", last_seq=41)}  # a network device, 41 events so far

    def handler(device_id, command):
        if device_id not in ("dev1", "kiosk-2"):
            raise CommandError("not_connected", f"device {device_id!r} is not connected")
        if command["command"] == "unmute":
            raise RuntimeError("microphone is gone")
        handled.append((device_id, command))

    sub = Subscriber(broker, ["stt-agent/+/error", "stt-agent/dev1/health"])
    pub = MqttPublisher(settings_for(broker, commands_per_s=100), on_command=handler,
                        device_emitter=streaming.get)
    streaming["kiosk-2"].sinks.append(pub)
    pub.start()
    assert pub.wait_connected(10)
    sub.wait_topic("stt-agent/dev1/health")  # sent after the agent subscribed: its subscription is in place
    send = lambda device, payload: sub.client.publish(f"stt-agent/{device}/cmd", payload, qos=1)
    send("kiosk-2", b'{"command": "mute", "id": "m2"}')
    send("dev1", b'{"command": "mute"}')
    assert wait_until(lambda: len(handled) == 2)
    assert sorted(handled) == [("dev1", {"command": "mute"}), ("kiosk-2", {"command": "mute", "id": "m2"})]

    # a malformed command for kiosk-2 is answered on kiosk-2's error topic, with kiosk-2's next seq
    send("kiosk-2", b'{"command": "set_language", "language": "fr", "id": 5}')
    (bad,) = answers(sub, "kiosk-2", 1)
    assert (bad["code"], bad["request_id"], bad["seq"], bad["session"]) == ("bad_field", 5, 42, "0badcafe")
    assert bad["message"] == "language 'fr' is not one of: zh, en, yue, ja, ko"
    send("kiosk-2", b'{"command": "unmute", "id": 6}')
    failed = answers(sub, "kiosk-2", 2)[1]
    assert (failed["code"], failed["seq"]) == ("command_failed", 43) and "microphone is gone" in failed["message"]

    # a device that is not connected: answered on its own error topic, numbered by the publisher
    send("kiosk-9", b'{"command": "mute", "id": "m9"}')
    (first,) = answers(sub, "kiosk-9", 1)
    send("kiosk-9", b'{"command": "dance"}')  # refused at once, on the network thread: after the first
    second = answers(sub, "kiosk-9", 2)[1]
    assert (first["code"], first["request_id"], first["seq"]) == ("not_connected", "m9", 1)
    assert first["message"] == "device 'kiosk-9' is not connected" and first["session"] == pub.session
    assert json.loads(first["request"]) == {"command": "mute", "id": "m9"}
    assert (second["code"], second["seq"]) == ("unknown_command", 2)

    # health for any device id: the agent's own health, now
    before = len(sub.on("stt-agent/dev1/health"))
    send("kiosk-9", b'{"command": "health"}')
    sub.wait_topic("stt-agent/dev1/health", before + 1)
    time.sleep(0.3)
    assert not sub.on("stt-agent/dev1/error")  # nothing for dev1 was refused
    assert len(sub.on("stt-agent/kiosk-2/error")) == 2 and len(sub.on("stt-agent/kiosk-9/error")) == 2
    assert pub.stop() == 0
    sub.close()


def test_answers_without_a_device_emitter_and_without_a_handler(broker):
    """No device_emitter: this device's answers go through `emitter`, others' through the publisher's own."""
    own = Emitter("dev1", "0123abcd", last_seq=7)
    sub = Subscriber(broker, ["stt-agent/+/error", "stt-agent/dev1/health"])
    pub = MqttPublisher(settings_for(broker), emitter=own)  # no on_command: nothing can be applied
    own.sinks.append(pub)
    pub.start()
    assert pub.wait_connected(10)
    sub.wait_topic("stt-agent/dev1/health")  # sent after the agent subscribed: its subscription is in place
    sub.client.publish("stt-agent/dev1/cmd", b'{"command": "mute"}', qos=1)
    sub.client.publish("stt-agent/other/cmd", b'{"command": "mute"}', qos=1)
    sub.client.publish("stt-agent/other/cmd", b"{", qos=1)
    (mine,) = answers(sub, "dev1", 1)
    assert (mine["code"], mine["seq"], mine["session"]) == ("unsupported", 8, "0123abcd")
    theirs = answers(sub, "other", 2)
    assert [(a["code"], a["seq"], a["session"]) for a in theirs] == [("unsupported", 1, "0123abcd"),
                                                                      ("bad_json", 2, "0123abcd")]
    pub.stop()
    sub.close()


def test_a_device_level_that_is_no_device_id_is_ignored_with_one_log_line(broker, caplog):
    caplog.set_level(logging.WARNING, logger="agent.mqtt")
    handled = []
    sub = Subscriber(broker, "stt-agent/#")
    pub = MqttPublisher(settings_for(broker, commands_per_s=100), on_command=lambda d, c: handled.append(d))
    pub.start()
    assert pub.wait_connected(10)
    sub.wait_topic("stt-agent/dev1/health")  # sent after the agent subscribed: its subscription is in place
    for topic in ["stt-agent//cmd"] * 5 + ["stt-agent/$x/cmd"]:
        sub.client.publish(topic, b'{"command": "mute"}', qos=1)
    sub.client.publish("stt-agent/dev1/cmd", b'{"command": "mute"}', qos=1)  # after them: all were read
    assert wait_until(lambda: handled == ["dev1"])
    assert pub.stats()["commands"]["rejected"] == 6
    assert caplog.text.count("ignored a command on") == 1 and "'stt-agent//cmd': the device id is empty" in caplog.text
    assert not [m for m in sub.messages if m.topic.endswith("/error")]
    pub.stop()
    sub.close()
