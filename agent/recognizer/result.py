"""What a recognizer answers for one utterance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List


@dataclass
class Token:
    text: str  # as it reads in the text: a leading space marks a word start
    id: int
    start: float  # seconds from the start of the audio (plus the caller's offset)
    end: float
    prob: float  # posterior of this token at its peak frame


@dataclass
class Recognition:
    text: str
    language: str
    language_scores: Dict[str, float]
    emotion: str
    emotion_scores: Dict[str, float]
    event: str
    event_scores: Dict[str, float]
    confidence: float  # mean token posterior; with no text, how sure the model is there was none
    tokens: List[Token] = field(default_factory=list)
    duration: float = 0.0  # seconds of audio decoded
    hotwords_matched: List[str] = field(default_factory=list)  # phrases (as given) the biased search completed

    def to_dict(self, tokens: bool = True) -> dict:
        """A JSON-ready dict; probabilities to 4 decimals, times to the millisecond."""
        out = {
            "text": self.text,
            "language": self.language,
            "language_scores": _round(self.language_scores),
            "emotion": self.emotion,
            "emotion_scores": _round(self.emotion_scores),
            "event": self.event,
            "event_scores": _round(self.event_scores),
            "confidence": round(self.confidence, 4),
            "duration": round(self.duration, 3),
        }
        if self.hotwords_matched:
            out["hotwords_matched"] = list(self.hotwords_matched)
        if tokens:
            out["tokens"] = [{"text": t.text, "start": round(t.start, 3), "end": round(t.end, 3),
                              "prob": round(t.prob, 4)} for t in self.tokens]
        return out


def _round(scores: Dict[str, float]) -> Dict[str, float]:
    return {k: round(v, 4) for k, v in scores.items()}
