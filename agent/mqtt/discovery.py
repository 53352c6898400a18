"""Home Assistant MQTT discovery: one device, its entities reading the agent's own topics.

Each entity is a retained config message under <discovery_prefix>/<component>/<node>/<object>/config;
states come from the agent's normal topics through value templates, so nothing is published twice.
Its entity id is `default_entity_id` (e.g. sensor.stt_agent_kiosk_1_emotion), the key Home Assistant
reads since 2025.10; `object_id` stays beside it for older versions.
"""

from __future__ import annotations

import json
import re

from agent.mqtt.topics import Topics

_TEXT_ATTRS = ("{{ {'text': value_json.text, 'language': value_json.language, 'emotion': value_json.emotion, "
               "'confidence': value_json.confidence, 'utterance_id': value_json.utterance_id} | tojson }}")


def node_id(device_id: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", device_id)


def discovery_messages(topics: Topics, prefix: str, name: str, version: str) -> list[tuple[str, bytes]]:
    """(topic, payload) for every entity; publish retained."""
    node = node_id(topics.device_id)
    device = {"identifiers": [f"stt-agent_{node}"], "name": name or f"stt-agent {topics.device_id}",
              "manufacturer": "stt-agent", "model": "SenseVoice speech agent", "sw_version": version}
    common = {"availability_topic": topics.status, "payload_available": "online",
              "payload_not_available": "offline", "device": device,
              "origin": {"name": "stt-agent", "sw_version": version}}
    entities = [
        ("sensor", "last_text", {
            "name": "Last text", "icon": "mdi:text-recognition", "state_topic": topics.final,
            "value_template": "{{ value_json.text[:255] }}",
            "json_attributes_topic": topics.final, "json_attributes_template": _TEXT_ATTRS}),
        ("sensor", "emotion", {
            "name": "Emotion", "icon": "mdi:emoticon-outline", "state_topic": topics.emotion,
            "value_template": "{{ value_json.label }}",
            "json_attributes_topic": topics.emotion, "json_attributes_template": "{{ value_json.scores | tojson }}"}),
        ("sensor", "language", {
            "name": "Language", "icon": "mdi:translate", "state_topic": topics.language,
            "value_template": "{{ value_json.label }}",
            "json_attributes_topic": topics.language, "json_attributes_template": "{{ value_json.scores | tojson }}"}),
        ("event", "speech", {
            "name": "Speech", "icon": "mdi:account-voice", "state_topic": topics.final, "event_types": ["final"],
            "value_template": ("{{ {'event_type': 'final', 'text': value_json.text, 'language': value_json.language, "
                               "'emotion': value_json.emotion, 'utterance_id': value_json.utterance_id} | tojson }}")}),
        ("binary_sensor", "listening", {
            "name": "Listening", "device_class": "sound", "state_topic": topics.vad,
            "value_template": "{{ 'ON' if value_json.type == 'speech_start' else 'OFF' }}"}),
    ]
    out = []
    for component, object_id, config in entities:
        entity = f"stt_agent_{node}_{object_id}"
        # default_entity_id (domain.object) is how Home Assistant 2025.10+ names the entity; object_id is
        # deprecated there and ignored from Core 2026.4, but older Home Assistants read only object_id.
        # With both present, 2025.10+ takes default_entity_id and logs no deprecation warning.
        payload = {**config, "unique_id": entity, "default_entity_id": f"{component}.{entity}",
                   "object_id": entity, **common}
        out.append((f"{prefix}/{component}/{node}/{object_id}/config",
                    json.dumps(payload, ensure_ascii=False).encode("utf-8")))
    return out
