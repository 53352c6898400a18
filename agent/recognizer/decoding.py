"""Turn SenseVoice logits into text, tags, probabilities and token times (pure numpy).

Output frames 0..3 answer the prompts put before the speech: language, emotion, event, ITN.
The text is greedy CTC over the frames after them. Probabilities are softmaxes over the tag
tokens' logits at their frame, which no public SenseVoice runtime exposes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from agent.recognizer.hotwords import HotwordSearch
from agent.recognizer.result import Recognition, Token
from agent.recognizer.vocab import EMOTION_TAGS, EVENT_TAGS, LANGUAGE_TAGS, TagSet, Vocabulary

PROMPT_FRAMES = 4
LANGUAGE_FRAME, EMOTION_FRAME, EVENT_FRAME = 0, 1, 2


@dataclass(frozen=True)
class DecodeOptions:
    """Per-call choices; the recognizer's defaults come from RecognizerSettings."""

    language: str = "auto"  # or a fixed language code
    allowed_languages: Tuple[str, ...] = ()  # with auto: detect only among these (nospeech stays possible)
    use_itn: bool = True
    allow_emo_unknown: bool = False
    emotion_map: Mapping[str, str] = field(default_factory=dict)  # model label -> avatar label
    # Phrases to bias towards, (phrase, weight): the config's, and a stream's own (Wyoming's transcript_names
    # and terms, OpenAI's keywords and prompt, the WebSocket start). With any, the text comes from a prefix
    # beam search with their context graph (hotwords.py); without, from greedy search.
    hotwords: Tuple[Tuple[str, float], ...] = ()
    hotwords_score: float = 1.5  # bonus per matched token (times the phrase's weight), in nats
    hotwords_beam: int = 4


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max()
    e = np.exp(z)
    return e / e.sum()


def _pick(tags: TagSet, frame: np.ndarray, allowed: Sequence[str]) -> Tuple[str, Dict[str, float]]:
    """Softmax over the allowed tags' logits at one frame; the answer is their argmax."""
    index = [tags.labels.index(label) for label in allowed]
    probs = _softmax(frame[np.asarray([tags.ids[i] for i in index])])
    scores = {tags.labels[i]: float(p) for i, p in zip(index, probs)}
    return max(scores, key=scores.get), scores


class Decoder:
    def __init__(self, vocab: Vocabulary, seconds_per_frame: float, blank_id: int = 0):
        self.vocab = vocab
        self.seconds_per_frame = seconds_per_frame
        self.blank_id = blank_id
        self.languages = TagSet.find(vocab, LANGUAGE_TAGS, "language", required=("zh", "en"))
        self.emotions = TagSet.find(vocab, EMOTION_TAGS, "emotion", required=("NEUTRAL",))
        self.events = TagSet.find(vocab, EVENT_TAGS, "event", required=("Speech",))
        # Tags and other <|...|> specials never belong in the text.
        self._drop = np.asarray(vocab.is_special, dtype=bool)
        self._drop[blank_id] = True
        self.hotwords = HotwordSearch(vocab, blank_id, np.asarray(vocab.is_special, dtype=bool))

    def decode(self, logits: np.ndarray, options: DecodeOptions, duration: float,
               offset: float = 0.0) -> Recognition:
        """logits: (frames, vocab) for one utterance, already cut to its true length."""
        biased = self.hotwords.text(logits[PROMPT_FRAMES:], options, offset, self.seconds_per_frame)
        token_ids, tokens, confidence, matched = biased or (*self._text(logits[PROMPT_FRAMES:], offset), [])
        text = self.vocab.detokenize(token_ids)
        language, language_scores = self._language(logits[LANGUAGE_FRAME], options, bool(text))
        emotion, emotion_scores = self._emotion(logits[EMOTION_FRAME], options)
        event, event_scores = _pick(self.events, logits[EVENT_FRAME], self.events.labels)
        return Recognition(
            text=text,
            language=language, language_scores=language_scores,
            emotion=emotion, emotion_scores=emotion_scores,
            event=event, event_scores=event_scores,
            confidence=confidence, tokens=tokens, duration=duration, hotwords_matched=matched,
        )

    def _language(self, frame, options: DecodeOptions, has_text: bool):
        if options.language != "auto":
            # The prompt fixed the language; the scores still say how sure the model is of it.
            _, scores = _pick(self.languages, frame, self.languages.labels)
            return options.language, scores
        allowed = list(options.allowed_languages) or list(self.languages.labels)
        if "nospeech" in self.languages.labels and "nospeech" not in allowed:
            allowed.append("nospeech")
        allowed = [label for label in allowed if label in self.languages.labels]
        label, scores = _pick(self.languages, frame, allowed)
        if has_text and label == "nospeech":
            # Words were heard: they are in some language. Seen with allowed_languages [zh, ja] on
            # English speech, where nospeech outscored both allowed languages.
            spoken = {k: v for k, v in scores.items() if k != "nospeech"}
            if spoken:
                label = max(spoken, key=spoken.get)
        return label, scores

    def _emotion(self, frame, options: DecodeOptions):
        labels = [label for label in self.emotions.labels
                  if options.allow_emo_unknown or label != "emo_unknown"]
        label, scores = _pick(self.emotions, frame, labels)
        if not options.emotion_map:
            return label, scores
        mapped: Dict[str, float] = {}
        for model_label, p in scores.items():
            target = options.emotion_map.get(model_label, model_label)
            mapped[target] = mapped.get(target, 0.0) + p
        return max(mapped, key=mapped.get), mapped

    def _text(self, logits: np.ndarray, offset: float) -> Tuple[List[int], List[Token], float]:
        best = logits.argmax(axis=1)
        if best.size == 0:
            return [], [], 1.0
        # Runs of the same argmax collapse to one token (greedy CTC); blanks and tags are dropped.
        starts = np.flatnonzero(np.concatenate(([True], best[1:] != best[:-1])))
        ends = np.concatenate((starts[1:], [best.size]))
        keep = ~self._drop[best[starts]]
        if not keep.any():
            return [], [], self._blank_confidence(logits, best)
        frames = np.flatnonzero(~self._drop[best])
        prob_at = dict(zip(frames.tolist(), _top_posteriors(logits, frames, best).tolist()))
        spf = self.seconds_per_frame
        ids, tokens = [], []
        for start, end in zip(starts[keep].tolist(), ends[keep].tolist()):
            token_id = int(best[start])
            prob = max(prob_at[f] for f in range(start, end))
            ids.append(token_id)
            tokens.append(Token(self.vocab.piece_text(token_id), token_id,
                                offset + start * spf, offset + end * spf, prob))
        confidence = float(np.mean([t.prob for t in tokens]))
        return ids, tokens, confidence

    def _blank_confidence(self, logits: np.ndarray, best: np.ndarray) -> float:
        """With no text: how sure the model is that there was none (mean top posterior)."""
        return float(np.mean(_top_posteriors(logits, np.arange(len(best)), best)))


# What SenseVoice itself answers for silence (<|nospeech|><|EMO_UNKNOWN|><|Event_UNK|>), for audio with no
# samples at all (a 0-sample WAV): decoding the frame of zeros the frontend pads it to said en/happy/speech.
NOTHING_HEARD = ("nospeech", "emo_unknown", "event_unk")


def nothing_heard(options: DecodeOptions, duration: float) -> Recognition:
    """No audio to decode: empty text, and labels (each with score 1) that say nothing was heard."""
    language, emotion, event = NOTHING_HEARD
    emotion = options.emotion_map.get(emotion, emotion)
    return Recognition(text="", language=language, language_scores={language: 1.0}, emotion=emotion,
                       emotion_scores={emotion: 1.0}, event=event, event_scores={event: 1.0},
                       confidence=1.0, tokens=[], duration=duration)


_CHUNK = 32  # rows per step: a (32, 25055) float32 scratch is 3 MB, not a copy of every frame


def _top_posteriors(logits: np.ndarray, frames: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Softmax probability of each frame's argmax token: 1 / sum(exp(row - max)).

    float32 in small chunks: the full-vocabulary exp is the only costly step of decoding, so it
    runs only on the frames asked for, without float64 copies of the logits.
    """
    out = np.empty(len(frames), np.float64)
    for i in range(0, len(frames), _CHUNK):
        rows = frames[i: i + _CHUNK]
        chunk = logits[rows]  # fancy indexing copies: safe to work in place
        chunk -= logits[rows, best[rows]][:, None]
        np.exp(chunk, out=chunk)
        out[i: i + _CHUNK] = 1.0 / chunk.sum(axis=1, dtype=np.float64)
    return out


def decode_batch(decoder: Decoder, logits: np.ndarray, lengths: Sequence[int],
                 options: "DecodeOptions | Sequence[DecodeOptions]", durations: Sequence[float],
                 offsets: Optional[Sequence[float]] = None) -> List[Recognition]:
    """Each item's Recognition, with its own options (one DecodeOptions for all, or one per item)."""
    offsets = offsets or [0.0] * len(lengths)
    per_item = [options] * len(lengths) if isinstance(options, DecodeOptions) else list(options)
    return [decoder.decode(logits[i, : int(n)], per_item[i], durations[i], offsets[i])
            for i, n in enumerate(lengths)]
