"""Hotword phrases: "phrase" or "phrase:weight" lines, their limits, and their spelling in the model's tokens.

A phrase is spelled the way SenseVoice writes it: a word of a spaced script starts with the word-boundary
piece ("▁kitchen"), Han characters and kana follow each other without one ("你好"), and a character no
piece covers falls back to its UTF-8 byte pieces (<0xE4>...) when the vocabulary has them. With the FunASR
export's sentencepiece model the spaced words are encoded by that model itself; with tokens.txt (pieces
only, no scores) by the fewest pieces that spell them. Each phrase is also tried all lower-case and with
a capital first letter: the model capitalises the start of a sentence when ITN is on, and a name is
typed either way.
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from agent.errors import AgentError

MAX_PHRASES = 1000  # per list (the config's, one stream's): Wyoming and OpenAI clients are cut there too
MAX_CHARS = 200  # per phrase, as the network front ends cut them
MAX_TOKENS = 64  # per spelling: a longer one is a sentence, not a hotword
MAX_WEIGHT = 10.0
WORD_BOUNDARY = "\u2581"
_BYTE = "<0x{:02X}>"

Hotwords = Tuple[Tuple[str, float], ...]


class HotwordError(AgentError):
    """A phrase list that breaks a limit or cannot be read; the message names where and what."""


def parse_phrase(text: str, where: str) -> Tuple[str, float]:
    """"Kitchen Light" -> ("Kitchen Light", 1.0); "Kitchen Light:2" -> ("Kitchen Light", 2.0).

    Only a number after the last colon is a weight, so "Re: Zero" stays one phrase.
    """
    at = f"{where}: " if where else ""
    if not isinstance(text, str):
        raise HotwordError(f"{at}expected a string 'phrase' or 'phrase:weight', got {text!r}")
    phrase, weight = text, 1.0
    head, colon, tail = text.rpartition(":")
    if colon:
        try:
            weight = float(tail)
        except ValueError:
            pass
        else:
            phrase = head
            if not math.isfinite(weight) or not 0 < weight <= MAX_WEIGHT:
                raise HotwordError(f"{at}weight {tail.strip()} of {head.strip()[:40]!r} is not a number in "
                                   f"(0, {MAX_WEIGHT:g}]")
    phrase = " ".join(phrase.split())
    if not phrase:
        raise HotwordError(f"{at}empty phrase in {text[:40]!r}")
    if len(phrase) > MAX_CHARS:
        raise HotwordError(f"{at}phrase {phrase[:40]!r}... is {len(phrase)} characters; at most {MAX_CHARS}")
    return phrase, weight


def parse_phrases(items: Iterable[str], where: str) -> Hotwords:
    """A list of "phrase" / "phrase:weight" strings, at most MAX_PHRASES."""
    items = list(items)
    if len(items) > MAX_PHRASES:
        raise HotwordError(f"{where}: {len(items)} phrases; at most {MAX_PHRASES}")
    return tuple(parse_phrase(item, f"{where}[{i}]") for i, item in enumerate(items))


def read_phrase_file(path) -> Hotwords:
    """One phrase per line ("phrase" or "phrase:weight"); blank lines and lines starting with # are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise HotwordError(f"{path}: no such hotwords file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HotwordError(f"{path}: cannot read the hotwords file (UTF-8 text, a phrase per line): {exc}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(parse_phrase(line, f"{path}:{number}"))
    if len(out) > MAX_PHRASES:
        raise HotwordError(f"{path}: {len(out)} phrases; at most {MAX_PHRASES}")
    return tuple(out)


def merge(*lists: Hotwords) -> Hotwords:
    """Lists joined in order; a phrase given twice keeps its first place and its highest weight."""
    weights: Dict[str, float] = {}
    for phrase, weight in (item for hotwords in lists for item in hotwords):
        weights[phrase] = max(weight, weights.get(phrase, 0.0))
    return tuple(weights.items())


def _spelled_without_boundary(ch: str) -> bool:
    """Han characters and kana: written without spaces, each a piece of its own in SenseVoice's output."""
    code = ord(ch)
    return (0x3040 <= code <= 0x30FF or 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF
            or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F or 0x31F0 <= code <= 0x31FF)


_RUNS = re.compile(r"\s+")


class PhraseSpeller:
    """Token ids of a phrase in one vocabulary (`pieces` by id, `is_special` per id)."""

    def __init__(self, pieces: Sequence[str], is_special: Sequence[bool], blank_id: int = 0,
                 encode: Optional[Callable[[str], List[str]]] = None):
        self._ids = {}
        for i, piece in enumerate(pieces):
            if not is_special[i] and i != blank_id and piece not in ("<unk>", "<s>", "</s>"):
                self._ids.setdefault(piece, i)
        self._longest = max((len(p) for p in self._ids), default=1)
        self._encode = encode
        self._bytes = all(_BYTE.format(b) in self._ids for b in range(0x80, 0x100))

    def spellings(self, phrase: str) -> List[Tuple[int, ...]]:
        """The distinct token sequences of the phrase's case variants (empty: the vocabulary cannot spell it)."""
        variants = dict.fromkeys([phrase, phrase.lower(), phrase[:1].upper() + phrase[1:].lower()])
        out: List[Tuple[int, ...]] = []
        for variant in variants:
            ids = self.spell(variant)
            if ids and ids not in out:
                out.append(ids)
        return out

    def spell(self, phrase: str) -> Optional[Tuple[int, ...]]:
        """One spelling, or None when a character has no piece (and no byte pieces stand in)."""
        phrase = unicodedata.normalize("NFKC", phrase)
        ids: List[int] = []
        for word in _RUNS.split(phrase.strip()):
            # A word of a spaced script starts with the boundary; Han/kana runs inside it do not.
            for chunk, spaced in _chunks(word):
                part = self._spell_chunk(chunk, spaced)
                if part is None:
                    return None
                ids += part
        return tuple(ids) if ids else None

    def _spell_chunk(self, chunk: str, spaced: bool) -> Optional[List[int]]:
        if spaced and self._encode is not None:
            pieces = self._encode(chunk)
            if pieces and all(p in self._ids for p in pieces):
                return [self._ids[p] for p in pieces]
        return self._fewest_pieces(WORD_BOUNDARY + chunk if spaced else chunk)

    def _fewest_pieces(self, text: str) -> Optional[List[int]]:
        """Dynamic programming over the text: the spelling with the fewest pieces (bytes as a last resort)."""
        n = len(text)
        cost = [0] + [math.inf] * n
        back: List[Optional[Tuple[int, List[int]]]] = [None] * (n + 1)
        for i in range(n):
            if cost[i] == math.inf:
                continue
            for j in range(min(n, i + self._longest), i, -1):
                piece = self._ids.get(text[i:j])
                if piece is not None and cost[i] + 1 < cost[j]:
                    cost[j], back[j] = cost[i] + 1, (i, [piece])
            if text[i] == WORD_BOUNDARY and cost[i] + 1 < cost[i + 1]:
                # No piece starts with the boundary here: the word is spelled without it.
                cost[i + 1], back[i + 1] = cost[i] + 1, (i, [])
            if self._bytes:
                byte_ids = [self._ids.get(_BYTE.format(b)) for b in text[i].encode("utf-8")]
                if all(b is not None for b in byte_ids) and cost[i] + len(byte_ids) + 1 < cost[i + 1]:
                    cost[i + 1], back[i + 1] = cost[i] + len(byte_ids) + 1, (i, byte_ids)
        if cost[n] == math.inf:
            return None
        out: List[int] = []
        j = n
        while j > 0:
            i, ids = back[j]
            out[:0] = ids
            j = i
        return out


def _chunks(word: str):
    """A whitespace-free word cut into (text, spaced) runs: Han/kana characters one by one and unspaced; other
    runs spaced only at the word's start ("用iPhone": sentencepiece writes no boundary before "iPhone")."""
    run, at_start = "", True
    for ch in word:
        if _spelled_without_boundary(ch):
            if run:
                yield run, at_start
                run = ""
            yield ch, False
            at_start = False
        else:
            run += ch
    if run:
        yield run, at_start
