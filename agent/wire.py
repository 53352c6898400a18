"""Events as JSON: the one documented form (docs/EVENTS.md, docs/schemas/*.json) for every sink.

JSON lines on stdout, MQTT payloads and network clients all get exactly these bodies, so a
prototype written against one works unchanged on another. Fields are copied by name, never passed
through wholesale: a pipeline change cannot silently change what subscribers receive.
"""

from __future__ import annotations

import json

from agent.events import Emotion, Final, Language, Partial, Problem, SpeechEnded, SpeechStarted, Stamped

SCHEMA_VERSION = 1


def dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def body(stamped: Stamped) -> dict:
    """The event's JSON object (schema_version, type, device_id, session, seq, ts, ...)."""
    event = stamped.event
    out = {"schema_version": SCHEMA_VERSION, "type": event.type, "device_id": stamped.device_id,
           "session": stamped.session, "seq": stamped.seq, "ts": stamped.ts}
    if getattr(event, "utterance_id", None) is not None:
        out["utterance_id"] = event.utterance_id
    out.update(_FIELDS[type(event)](event))
    return out


def _vad(event) -> dict:
    out = {"at": round(event.at, 3), "at_wall": _r(event.at_wall), "detected_wall": _r(event.detected_wall)}
    if isinstance(event, SpeechEnded):
        out["reason"] = event.reason
    out["timing"] = _timing(vad_delay_ms=event.vad_delay_ms)
    return out


def _result(event) -> dict:
    final = isinstance(event, Final)
    out = event.result.to_dict(tokens=final)  # text, tags and their scores, confidence, duration
    out.update(audio_start=round(event.audio_start, 3), audio_end=round(event.audio_end, 3),
               audio_start_wall=_r(event.audio_start_wall), audio_end_wall=_r(event.audio_end_wall),
               timing=_timing(queue_ms=event.queue_ms, decode_ms=event.decode_ms,
                              endpoint_delay_ms=event.endpoint_delay_ms if final else None))
    if final:
        out["speculative"] = event.speculative
        # The name the original /ws/stt clients read: the same end of speech -> final as timing's.
        out["latency_ms"] = out["timing"].get("endpoint_delay_ms")
    return out


def _label(event) -> dict:
    return {"label": event.label, "scores": {k: round(v, 4) for k, v in event.scores.items()},
            "confidence": round(event.confidence, 4)}


def _problem(event: Problem) -> dict:
    out = {"source": event.source, "code": event.code, "message": event.message}
    if event.request is not None:
        out["request"] = event.request
    if event.request_id is not None:
        out["request_id"] = event.request_id
    return out


_FIELDS = {SpeechStarted: _vad, SpeechEnded: _vad, Partial: _result, Final: _result, Emotion: _label,
           Language: _label, Problem: _problem}


def _timing(**values) -> dict:
    return {k: round(v, 1) for k, v in values.items() if v is not None}


def _r(value):
    return None if value is None else round(value, 3)
