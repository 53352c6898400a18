"""Stamped events -> MQTT messages: topic, payload (agent/wire.py's body), QoS, and lane.

The payloads are the documented bodies every sink sends (docs/EVENTS.md, docs/schemas/*.json);
this module only decides where each goes and whether it waits out an outage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agent.events import Final, Partial, Problem, Stamped
from agent.mqtt.topics import HERMES_PARTIAL, HERMES_TEXT, Topics
from agent.wire import SCHEMA_VERSION, body, dumps  # noqa: F401 - SCHEMA_VERSION: the health message's too

# Kinds that wait in the outbox through an outage; everything else is dropped while disconnected.
QUEUED_KINDS = ("final", "emotion", "language", "vad", "error", "reply", "hermes_text", "status")
_LANE = {"final": "final", "partial": "partial", "emotion": "emotion", "language": "language",
         "speech_start": "vad", "speech_end": "vad", "error": "error"}


@dataclass
class Message:
    kind: str  # final, partial, emotion, language, vad, error, reply, hermes_text, hermes_partial, status
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    seq: int | None = None
    created: float = field(default_factory=time.monotonic)
    event_type: str | None = None  # speech_start, speech_end, ... where the kind does not say
    collapse_key: tuple | None = None  # (device, code) of an error: repeats collapse into a waiting one
    repeated: int = 0  # errors collapsed into this one while it waited (published as "repeated")
    store_id: int | None = None  # its row in the disk outbox (store.py) while it has one
    expiry_s: int | None = None  # its own life where it is not message_expiry_s: a row read back keeps its own

    @property
    def size(self) -> int:
        """What it costs the outbox's byte cap: topic and payload."""
        return len(self.topic) + len(self.payload)

    @property
    def drop_type(self) -> str:
        """How a drop of it is counted (health: mqtt.dropped.by_type)."""
        return self.event_type or self.kind

    @property
    def queued(self) -> bool:
        """True if it waits in the outbox while the broker is away (partials do not)."""
        return self.kind in QUEUED_KINDS


class EventMapper:
    """Builds the messages for one stamped event, under `<prefix>/<its device>/...`."""

    def __init__(self, prefix: str, qos, hermes_site: str | None = None):
        self.prefix = prefix
        self.qos = qos
        self.hermes_site = hermes_site

    def map(self, stamped: Stamped) -> list[Message]:
        event = stamped.event
        kind = _LANE[event.type]
        topics = Topics(self.prefix, stamped.device_id)
        topic = {"final": topics.final, "partial": topics.partial, "emotion": topics.emotion,
                 "language": topics.language, "vad": topics.vad, "error": topics.error}[kind]
        qos = getattr(self.qos, kind)
        collapse_key = None
        if isinstance(event, Problem):
            if event.source == "command":
                kind = "reply"  # its own lane: answers can never push out a final
            else:  # one device's error storm waits as one message with a count
                collapse_key = (stamped.device_id, event.code)
        out = [Message(kind, topic, dumps(body(stamped)), qos, seq=stamped.seq,
                       event_type="reply" if kind == "reply" else event.type, collapse_key=collapse_key)]
        if self.hermes_site is not None and isinstance(event, (Final, Partial)):
            final = isinstance(event, Final)
            out.append(Message("hermes_text" if final else "hermes_partial", HERMES_TEXT if final else HERMES_PARTIAL,
                               dumps(self._hermes(stamped)), self.qos.final if final else self.qos.partial))
        return out

    def _hermes(self, stamped: Stamped) -> dict:
        event = stamped.event
        return {"text": event.result.text, "likelihood": float(event.result.confidence),
                "seconds": round(event.decode_ms / 1000.0, 3), "siteId": self.hermes_site,
                "sessionId": f"{stamped.session}-{event.utterance_id}", "wakewordId": None,
                "lang": event.result.language}
