"""Settings of the MQTT publisher (the `mqtt` section of config.yaml).

Written like agent/settings.py: one dataclass per part, a doc string per key, unknown keys are errors.
The password itself is never a setting: it is read from a file or an environment variable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from agent.config_schema import section, setting, show
from agent.mqtt.topics import MAX_DEVICE_ID_BYTES, MAX_PREFIX_BYTES, text_problem, topic_problem

PROTOCOLS = ("5", "3.1.1")
OUTBOX_KINDS = ("auto", "disk", "memory")


def state_directory() -> str | None:
    """systemd's StateDirectory= (the first of its colon-separated list), or the container's volume, which
    the images name the same way."""
    return os.environ.get("STATE_DIRECTORY", "").split(":")[0] or None
QOS_LEVELS = (0, 1, 2)


@dataclass
class MqttTlsSettings:
    enabled: bool = setting(False, "Connect over TLS (brokers usually listen for TLS on port 8883).")
    ca_file: Optional[str] = setting(  # noqa: UP045 - config_schema recognises typing.Union only
        None, "PEM file of the CA that signed the broker's certificate; null = the system's CA store.")
    cert_file: Optional[str] = setting(None, "Client certificate (PEM), for brokers that require one.")  # noqa: UP045
    key_file: Optional[str] = setting(None, "Private key (PEM) of cert_file.")  # noqa: UP045
    insecure: bool = setting(
        False, "Do not verify the broker's certificate or host name. Testing only: anyone on the "
               "network path can then read and forge every message.")

    def check(self):
        if (self.cert_file is None) != (self.key_file is None):
            yield "cert_file", "cert_file and key_file go together: give both or neither"


@dataclass
class MqttQosSettings:
    partial: int = setting(0, "QoS of stt/partial (partials are dropped while disconnected whatever it is).",
                           choices=QOS_LEVELS)
    final: int = setting(1, "QoS of stt/final (and of the Hermes textCaptured mirror).", choices=QOS_LEVELS)
    emotion: int = setting(1, "QoS of emotion.", choices=QOS_LEVELS)
    language: int = setting(1, "QoS of language.", choices=QOS_LEVELS)
    vad: int = setting(1, "QoS of vad (speech_start / speech_end).", choices=QOS_LEVELS)
    status: int = setting(1, "QoS of status (online / offline, and the Last Will).", choices=QOS_LEVELS)
    health: int = setting(0, "QoS of health.", choices=QOS_LEVELS)
    error: int = setting(1, "QoS of error.", choices=QOS_LEVELS)


@dataclass
class MqttHomeAssistantSettings:
    enabled: bool = setting(False, "Publish Home Assistant MQTT discovery (sensors for text, emotion, "
                                   "language; an event per final; a 'listening' binary sensor).")
    discovery_prefix: str = setting("homeassistant", "Home Assistant's discovery prefix; discovery is sent "
                                                     "again whenever <prefix>/status says online.")
    name: str = setting("", "Device name shown in Home Assistant; empty = 'stt-agent <device_id>'.")


@dataclass
class MqttHermesSettings:
    enabled: bool = setting(False, "Mirror finals to hermes/asr/textCaptured and partials to "
                                   "hermes/asr/partialTextCaptured (Rhasspy / Snips Hermes protocol).")
    site_id: str = setting("default", "siteId in the Hermes messages.")


@dataclass
class MqttSettings:
    enabled: bool = setting(False, "Publish speech events to an MQTT broker.")
    host: str = setting("localhost", "Broker host name or address.")
    port: int = setting(1883, "Broker port (1883 plain, usually 8883 with TLS).", min=1, max=65535)
    protocol: str = setting("5", "MQTT protocol version: \"5\" (message expiry, reason codes) or \"3.1.1\". "
                                 "Quote it in YAML.", choices=PROTOCOLS)
    client_id: str = setting("", "MQTT client id; empty = stt-agent-<device_id>. Two clients with the same "
                                 "id knock each other off the broker.")
    keepalive: int = setting(30, "Seconds between keepalive pings; the broker sends the Last Will after "
                                 "1.5x this without hearing from the agent.", min=5, max=3600)
    username: Optional[str] = setting(None, "User name, if the broker requires one.")  # noqa: UP045
    password_file: Optional[str] = setting(  # noqa: UP045
        None, "File holding the password (first line; mode 0600). The password itself never goes in "
              "the config and is never logged.")
    password_env: Optional[str] = setting(  # noqa: UP045
        None, "Name of an environment variable holding the password (e.g. for systemd LoadCredential).")
    tls: MqttTlsSettings = section(MqttTlsSettings, "TLS to the broker (verification on by default).")
    topic_prefix: str = setting("stt-agent", "First topic level: topics are <topic_prefix>/<device_id>/...")
    device_id: str = setting("", "This device's name in topics and payloads; empty = the host name.")
    qos: MqttQosSettings = section(MqttQosSettings, "QoS per topic.")
    message_expiry_s: int = setting(
        60, "Finals and the other queued events (emotion, language, vad, error) older than this are not "
            "delivered: they expire in the agent's outbox and, with MQTT 5, at the broker for "
            "subscribers that are offline. 0 = never expire.", min=0, max=86400)
    health_interval_s: float = setting(30.0, "Seconds between retained health messages.", min=1.0, max=3600.0)
    outbox_max: int = setting(
        1000, "Events kept while the broker is away, per lane: finals (with their emotion and language) have "
              "a lane of their own that nothing else evicts (past this its oldest emotion or language goes, a "
              "final only when the lane holds nothing else); the other events (partials first) another. Every "
              "drop is counted by type in health.",
        min=1, max=1000000)
    outbox: str = setting(
        "auto", "Where finals, emotion, language and error events wait for the broker. disk: also in an SQLite "
                "file (outbox_path), so they outlive a crash, a kill or a power cut and are delivered first at the "
                "next start; memory: lost when the process ends. auto = disk where outbox_path is set or a state "
                "directory exists ($STATE_DIRECTORY: systemd's StateDirectory=, the container's volume), else memory. A disk "
                "that fails (full, read-only, corrupt) falls back to memory with one warning "
                "(health: mqtt.outbox.fallback).", choices=OUTBOX_KINDS)
    outbox_path: Optional[str] = setting(  # noqa: UP045
        None, "The disk outbox's SQLite file; null = $STATE_DIRECTORY/mqtt-outbox-<client_id>.sqlite3, one file "
              "per instance. A second agent on the same file is refused (exit 78).")
    outbox_max_bytes: int = setting(
        16 * 1024 * 1024, "Bytes (topics and payloads) the outbox holds, finals and other events together; past "
                          "it the oldest message that is not a final is dropped first (a partial first), a final "
                          "only when nothing else is left. Counted in health (mqtt.dropped.outbox_bytes).",
        min=65536, max=1 << 34)
    reconnect_min_s: float = setting(1.0, "First reconnect delay; it doubles per failed attempt.",
                                     min=0.1, max=300.0)
    reconnect_max_s: float = setting(60.0, "Longest reconnect delay.", min=0.1, max=3600.0)
    commands_per_s: int = setting(
        10, "Commands read per second from <prefix>/+/cmd, for every device this agent serves together; more "
            "are ignored, counted in health (mqtt.commands.over_limit) and summarised in the log every 10 s, so "
            "a flood costs no final.",
        min=1, max=1000)
    drain_timeout_s: float = setting(5.0, "On stop: how long to wait for queued events to be delivered "
                                          "before publishing offline and disconnecting.", min=0.0, max=120.0)
    home_assistant: MqttHomeAssistantSettings = section(MqttHomeAssistantSettings, "Home Assistant discovery.")
    hermes: MqttHermesSettings = section(MqttHermesSettings, "Hermes protocol mirror.")

    def check(self):
        """Cross-field checks; yields (key, message)."""
        if self.password_file is not None and self.password_env is not None:
            yield "password_file", "give password_file or password_env, not both"
        if (self.password_file is not None or self.password_env is not None) and not self.username:
            yield "username", "a password needs a username (MQTT sends no password without one)"
        if self.reconnect_min_s > self.reconnect_max_s:
            yield "reconnect_min_s", (f"{self.reconnect_min_s} is above reconnect_max_s "
                                      f"({self.reconnect_max_s})")
        if self.enabled and self.outbox == "disk" and self.outbox_path is None:
            if state_directory() is None:
                yield "outbox", ("disk needs a file: set mqtt.outbox_path, or run where $STATE_DIRECTORY is set "
                                 "(systemd StateDirectory=)")
        if self.outbox_path is not None and not self.outbox_path.strip():
            yield "outbox_path", "is empty: name a file, or null for the default"
        if self.enabled and not self.host.strip():
            yield "host", "is empty: name the broker (a host name or address) or set enabled: false"
        for key, value in (("topic_prefix", self.topic_prefix),
                           ("home_assistant.discovery_prefix", self.home_assistant.discovery_prefix)):
            problem = topic_problem(value, levels=True, max_bytes=MAX_PREFIX_BYTES)
            if problem:
                yield key, f"{show(value)} {problem}"
        if self.device_id:
            problem = topic_problem(self.device_id, levels=False, max_bytes=MAX_DEVICE_ID_BYTES)
            if problem:
                yield "device_id", f"{show(self.device_id)} {problem}"
        for key, value in (("client_id", self.client_id), ("username", self.username or "")):
            problem = value and text_problem(value, 256)
            if problem:
                yield key, f"{show(value)} {problem}"

    def outbox_file(self, client_id: str) -> Path | None:
        """The disk outbox's file, or None for the memory outbox (outbox: memory, or auto without a state
        directory)."""
        if self.outbox == "memory":
            return None
        if self.outbox_path:
            return Path(self.outbox_path)
        base = state_directory()
        if base is None:
            return None
        return Path(base) / f"mqtt-outbox-{re.sub(r'[^A-Za-z0-9._-]', '_', client_id)}.sqlite3"
