"""Pipeline events -> MQTT messages: topic, JSON payload, QoS, and whether it waits out an outage.

The payload shapes are the public contract with firmware (docs/EVENTS.md, docs/schemas/*.json):
fields are copied by name, never passed through wholesale, so a pipeline change cannot silently
change what subscribers receive.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from agent.mqtt.topics import HERMES_PARTIAL, HERMES_TEXT, Topics

SCHEMA_VERSION = 1
# Kinds that wait in the outbox through an outage; everything else is dropped while disconnected.
QUEUED_KINDS = ("final", "emotion", "language", "vad", "error", "hermes_text")
_RESULT_FIELDS = ("text", "language", "language_scores", "emotion", "emotion_scores", "event", "event_scores",
                  "confidence", "duration", "audio_start", "audio_end", "audio_start_wall", "audio_end_wall")
_VAD_FIELDS = ("at", "at_wall", "detected_wall", "reason")
_TIMING = ("queue_ms", "decode_ms", "endpoint_delay_ms", "vad_delay_ms")


@dataclass
class Message:
    kind: str  # final, partial, emotion, language, vad, error, hermes_text, hermes_partial
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    seq: int | None = None
    created: float = field(default_factory=time.monotonic)

    @property
    def queued(self) -> bool:
        """True if it waits in the outbox while the broker is away (partials do not)."""
        return self.kind in QUEUED_KINDS


def dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class EventMapper:
    """Builds the messages for one pipeline event. Not thread-safe: the publisher holds its lock."""

    def __init__(self, topics: Topics, session: str, qos, hermes_site: str | None = None):
        self.topics = topics
        self.session = session
        self.qos = qos
        self.hermes_site = hermes_site
        self.seq = 0

    def _head(self, kind: str, utterance_id=None) -> dict:
        self.seq += 1
        head = {"schema_version": SCHEMA_VERSION, "type": kind, "device_id": self.topics.device_id,
                "session": self.session, "seq": self.seq, "ts": round(time.time(), 3)}
        if utterance_id is not None:
            head["utterance_id"] = utterance_id
        return head

    def _message(self, kind, topic, body, qos) -> Message:
        return Message(kind, topic, dumps(body), qos, seq=body.get("seq"))

    def map(self, event: dict) -> list[Message]:
        kind = event.get("type")
        if kind == "final":
            return self._final(event)
        if kind == "partial":
            return self._partial(event)
        if kind in ("speech_start", "speech_end"):
            body = self._head(kind, event.get("utterance_id"))
            body.update({k: event[k] for k in _VAD_FIELDS if k in event})
            body["timing"] = _timing(event)
            return [self._message("vad", self.topics.vad, body, self.qos.vad)]
        if kind == "error":
            return [self.error(str(event.get("code", "pipeline")), str(event.get("message", "")), source="pipeline",
                               utterance_id=event.get("utterance_id"))]
        raise ValueError(f"unknown event type {kind!r}")

    def _result(self, kind: str, event: dict) -> dict:
        body = self._head(kind, event.get("utterance_id"))
        body.update({k: event[k] for k in _RESULT_FIELDS if k in event})
        body["timing"] = _timing(event)
        return body

    def _final(self, event: dict) -> list[Message]:
        body = self._result("final", event)
        body["tokens"] = [{"text": t["text"], "start": t["start"], "end": t["end"], "prob": t["prob"]}
                          for t in event.get("tokens", [])]
        if "speculative" in event:
            body["speculative"] = bool(event["speculative"])
        out = [self._message("final", self.topics.final, body, self.qos.final)]
        utterance = event.get("utterance_id")
        if event.get("text"):  # an utterance with no words says nothing about mood or language
            for derived, label_key, scores_key, qos in (("emotion", "emotion", "emotion_scores", self.qos.emotion),
                                                        ("language", "language", "language_scores", self.qos.language)):
                if label_key in event:
                    d = self._head(derived, utterance)
                    d["label"] = event[label_key]
                    d["scores"] = event.get(scores_key, {})
                    d["confidence"] = event.get("confidence")
                    out.append(self._message(derived, getattr(self.topics, derived), d, qos))
        if self.hermes_site is not None:
            out.append(Message("hermes_text", HERMES_TEXT, dumps(self._hermes(event)), self.qos.final))
        return out

    def _partial(self, event: dict) -> list[Message]:
        body = self._result("partial", event)
        out = [self._message("partial", self.topics.partial, body, self.qos.partial)]
        if self.hermes_site is not None:
            out.append(Message("hermes_partial", HERMES_PARTIAL, dumps(self._hermes(event)), self.qos.partial))
        return out

    def _hermes(self, event: dict) -> dict:
        decode_ms = event.get("decode_ms")
        return {"text": event.get("text", ""), "likelihood": float(event.get("confidence") or 0.0),
                "seconds": round((decode_ms or 0.0) / 1000.0, 3), "siteId": self.hermes_site,
                "sessionId": f"{self.session}-{event.get('utterance_id')}", "wakewordId": None,
                "lang": event.get("language")}

    def error(self, code: str, message: str, *, source: str = "agent", utterance_id=None, **extra) -> Message:
        body = self._head("error", utterance_id)
        body.update({"source": source, "code": code, "message": message})
        body.update({k: v for k, v in extra.items() if v is not None})
        return self._message("error", self.topics.error, body, self.qos.error)


def _timing(event: dict) -> dict:
    return {k: event[k] for k in _TIMING if event.get(k) is not None}
