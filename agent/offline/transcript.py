"""A file's transcript: its timed segments, the whole-file result made from them, and the output
formats subtitle and transcript users expect (SRT, WebVTT, TSV, plain text, JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Sequence

from agent.recognizer.result import Recognition

FORMATS = ("json", "srt", "vtt", "tsv", "txt")


@dataclass(frozen=True)
class TimedText:
    """A segment's result placed in the file: start/end in seconds, token times in file seconds."""

    start: float
    end: float
    result: Recognition


def _wide(ch: str) -> bool:
    """Scripts written without spaces between words (Han, kana, Hangul syllables, CJK punctuation)."""
    o = ord(ch)
    return 0x2E80 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF or 0xFF00 <= o <= 0xFFEF


def join_texts(texts: Sequence[str]) -> str:
    out = ""
    for text in (t.strip() for t in texts):
        if not text:
            continue
        if out and not (_wide(out[-1]) or _wide(text[0])):
            out += " "
        out += text
    return out


def _weighted(scores: Sequence[Dict[str, float]], weights: Sequence[float]) -> Dict[str, float]:
    total = sum(weights) or 1.0
    out: Dict[str, float] = {}
    for s, w in zip(scores, weights):
        for k, v in s.items():
            out[k] = out.get(k, 0.0) + v * w / total
    return out


def whole(parts: List[TimedText], duration: float) -> Recognition:
    """The file as one result: the segments' text joined; language, emotion and event from their
    scores averaged by speech duration (over segments with words, when any have words)."""
    spoken = [p for p in parts if p.result.text] or parts
    if not spoken:
        return Recognition(text="", language="nospeech", language_scores={}, emotion="neutral", emotion_scores={},
                           event="speech", event_scores={}, confidence=1.0, tokens=[], duration=duration)
    weights = [p.end - p.start for p in spoken]
    labels = {}
    for name in ("language", "emotion", "event"):
        scores = _weighted([getattr(p.result, f"{name}_scores") for p in spoken], weights)
        if name == "language" and any(p.result.text for p in spoken):
            scores_spoken = {k: v for k, v in scores.items() if k != "nospeech"}
            label = max(scores_spoken or scores, key=(scores_spoken or scores).get)
        else:
            label = max(scores, key=scores.get) if scores else getattr(spoken[0].result, name)
        labels[name] = (label, scores)
    tokens = [t for p in parts for t in p.result.tokens]
    if tokens:
        confidence = sum(t.prob for t in tokens) / len(tokens)
    else:
        confidence = sum(p.result.confidence * w for p, w in zip(spoken, weights)) / (sum(weights) or 1.0)
    return Recognition(text=join_texts([p.result.text for p in parts]),
                       language=labels["language"][0], language_scores=labels["language"][1],
                       emotion=labels["emotion"][0], emotion_scores=labels["emotion"][1],
                       event=labels["event"][0], event_scores=labels["event"][1],
                       confidence=confidence, tokens=tokens, duration=duration,
                       hotwords_matched=list(dict.fromkeys(h for p in parts for h in p.result.hotwords_matched)))


def segment_dict(part: TimedText, tokens: bool) -> dict:
    out = {"start": round(part.start, 3), "end": round(part.end, 3)}
    out.update(part.result.to_dict(tokens=tokens))
    del out["duration"]  # end - start
    return out


# ------------------------------------------------------------------ formats


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(parts: List[TimedText]) -> str:
    cues = [p for p in parts if p.result.text.strip()]
    return "".join(f"{i}\n{_clock(p.start, ',')} --> {_clock(p.end, ',')}\n{p.result.text.strip()}\n\n"
                   for i, p in enumerate(cues, 1))


def vtt(parts: List[TimedText]) -> str:
    cues = [p for p in parts if p.result.text.strip()]
    return "WEBVTT\n\n" + "".join(f"{_clock(p.start, '.')} --> {_clock(p.end, '.')}\n{p.result.text.strip()}\n\n"
                                  for p in cues)


def tsv(parts: List[TimedText]) -> str:
    """whisper.cpp's and faster-whisper's columns: start and end in integer milliseconds, then text."""
    rows = ["start\tend\ttext"]
    rows += [f"{int(round(p.start * 1000))}\t{int(round(p.end * 1000))}\t"
             f"{p.result.text.strip().replace(chr(9), ' ').replace(chr(10), ' ')}"
             for p in parts if p.result.text.strip()]
    return "\n".join(rows) + "\n"


def txt(parts: List[TimedText]) -> str:
    return "".join(f"{p.result.text.strip()}\n" for p in parts if p.result.text.strip())


def json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


WRITERS = {"srt": srt, "vtt": vtt, "tsv": tsv, "txt": txt}
