"""Vocabulary loaders: a real sentencepiece model (the FunASR export's tokenizer) and tokens.txt."""

from __future__ import annotations

import pytest
import sentencepiece

import tiny_models as tm
from agent.errors import ModelError
from agent.recognizer.vocab import LANGUAGE_TAGS, TagSet, load_bpe_model, load_tokens_txt


def test_bpe_model_pieces_and_tags(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\nhello there world\n你好 世界\n" * 50, encoding="utf-8")
    tags = [f"<|{t}|>" for t in tm.LANGS + tm.EMOTIONS + tm.EVENTS]
    sentencepiece.SentencePieceTrainer.Train(
        input=str(corpus), model_prefix=str(tmp_path / "bpe"), vocab_size=70, model_type="bpe",
        user_defined_symbols=tags, character_coverage=1.0, minloglevel=2)
    vocab = load_bpe_model(tmp_path / "bpe.model")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "bpe.model"))
    assert vocab.pieces == [processor.IdToPiece(i) for i in range(processor.GetPieceSize())]
    languages = TagSet.find(vocab, LANGUAGE_TAGS, "language", required=("zh", "en"))
    assert languages.ids == tuple(processor.PieceToId(f"<|{t}|>") for t in tm.LANGS)
    ids = processor.EncodeAsIds("hello world")
    assert vocab.detokenize(ids) == processor.DecodeIds(ids)


def test_unreadable_bpe_model(tmp_path):
    (tmp_path / "x.model").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a readable sentencepiece model"):
        load_bpe_model(tmp_path / "x.model")


def test_tokens_txt_allows_a_space_piece_and_needs_contiguous_ids(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("<unk> 0\n  1\nab 2\n", encoding="utf-8")
    assert load_tokens_txt(path).pieces == ["<unk>", " ", "ab"]
    path.write_text("<unk> 0\nab 2\n", encoding="utf-8")
    with pytest.raises(ModelError, match="without gaps"):
        load_tokens_txt(path)
