"""The model's vocabulary: pieces by id, the tag tokens found by name, and detokenisation."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from agent.errors import ModelError

WORD_BOUNDARY = "\u2581"  # sentencepiece's "▁"
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")

# Tag names as the vocabulary spells them; ids are looked up, never assumed.
LANGUAGE_TAGS = ("zh", "en", "yue", "ja", "ko", "nospeech")
EMOTION_TAGS = ("HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN")
EVENT_TAGS = ("Speech", "BGM", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough", "Sing",
              "Speech_Noise", "GBG", "Event_UNK")


@dataclass(frozen=True)
class TagSet:
    """Tags of one kind: their lower-case labels and token ids, in the same order."""

    labels: tuple
    ids: tuple

    @classmethod
    def find(cls, vocab: "Vocabulary", names: Sequence[str], kind: str, required: Sequence[str] = ()):
        labels, ids = [], []
        for name in names:
            token_id = vocab.id_of(f"<|{name}|>")
            if token_id is not None:
                labels.append(name.lower())
                ids.append(token_id)
        missing = [n for n in required if n.lower() not in labels]
        if missing:
            raise ModelError(f"{vocab.source}: the vocabulary has no {kind} tag {', '.join(f'<|{m}|>' for m in missing)}"
                             " (is this a SenseVoice model?)")
        return cls(tuple(labels), tuple(ids))


class Vocabulary:
    def __init__(self, pieces: List[str], source: str):
        self.pieces = pieces
        self.source = source
        self._ids: Dict[str, int] = {p: i for i, p in enumerate(pieces)}
        self.is_special = [p.startswith("<|") and p.endswith("|>") for p in pieces]
        self.encode = None  # text -> pieces, where the model's own tokenizer is at hand (hotword phrases)

    def __len__(self):
        return len(self.pieces)

    def id_of(self, piece: str):
        return self._ids.get(piece)

    def piece_text(self, token_id: int) -> str:
        """One token as it reads on its own (word boundary as a leading space)."""
        return self.detokenize([token_id], strip=False)

    def detokenize(self, ids: Sequence[int], strip: bool = True) -> str:
        """Join pieces: "▁" marks a word start, CJK pieces join without spaces; byte pieces are UTF-8."""
        out = bytearray()
        for token_id in ids:
            piece = self.pieces[token_id]
            byte = _BYTE_PIECE.match(piece)
            if byte:
                out.append(int(byte.group(1), 16))
            else:
                out += piece.replace(WORD_BOUNDARY, " ").encode("utf-8")
        text = out.decode("utf-8", errors="replace")
        return text.strip() if strip else text


def load_tokens_txt(path: Path) -> Vocabulary:
    """sherpa-onnx's tokens.txt: "piece id" per line (a piece may itself be a space)."""
    pieces: Dict[int, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read tokens file: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        piece, _, token_id = line.rpartition(" ")
        if not token_id.isdigit():
            raise ModelError(f"{path}:{number}: expected 'piece id', got {line!r}")
        pieces[int(token_id)] = piece
    if not pieces:
        raise ModelError(f"{path}: the tokens file is empty (expected a 'piece id' line per token, as "
                         "sherpa-onnx's export writes it: download it again)")
    if sorted(pieces) != list(range(len(pieces))):
        missing = next(i for i in range(len(pieces) + 1) if i not in pieces)
        raise ModelError(f"{path}: token ids are not 0..{len(pieces) - 1} without gaps (no id {missing}; "
                         f"the largest is {max(pieces)})")
    return Vocabulary([pieces[i] for i in range(len(pieces))], str(path))


def load_tokens_json(path: Path) -> Vocabulary:
    """FunASR export's tokens.json: a JSON list of pieces, index = id."""
    try:
        pieces = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read tokens file: {exc}") from None
    if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces):
        raise ModelError(f"{path}: expected a JSON list of token strings")
    if not pieces:
        raise ModelError(f"{path}: the tokens file is an empty list (FunASR's export lists every token: "
                         "download it again)")
    return Vocabulary(pieces, str(path))


def load_bpe_model(path: Path) -> Vocabulary:
    """FunASR's sentencepiece model (chn_jpn_yue_eng_ko_spectok.bpe.model)."""
    import sentencepiece  # lazy: only this flavour needs it

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a readable sentencepiece model: {exc}") from None
    vocab = Vocabulary([processor.IdToPiece(i) for i in range(processor.GetPieceSize())], str(path))
    vocab.encode = processor.EncodeAsPieces
    return vocab
