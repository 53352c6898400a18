"""Hotwords on designed logits: the context graph, the biased prefix beam search, phrase spelling and limits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import sentencepiece
from hypothesis import given, settings
from hypothesis import strategies as st

import tiny_models as tm
from agent.recognizer import beam_search
from agent.recognizer.context_graph import ROOT, ContextGraph
from agent.recognizer.decoding import Decoder, DecodeOptions
from agent.recognizer.phrases import (MAX_PHRASES, HotwordError, PhraseSpeller, merge, parse_phrase,
                                      parse_phrases, read_phrase_file)
from agent.recognizer.vocab import Vocabulary, load_bpe_model

WORDS = ["\u2581turn", "\u2581on", "\u2581the", "\u2581kitchen", "\u2581chicken", "\u2581light", "\u2581lamp",
         "厨", "房", "灯", "\u2581kit", "chen", "\u2581lights"]
PIECES = list(tm.VOCAB) + WORDS
VOCAB = Vocabulary(PIECES, "test")
DECODER = Decoder(VOCAB, seconds_per_frame=0.06)
SPECIAL = np.asarray(VOCAB.is_special, bool)
SCORE = 1.5  # the default bonus per token
SCHEMAS = Path(__file__).resolve().parent.parent / "agent" / "schemas"


def tid(piece: str) -> int:
    return PIECES.index(piece)


def frames(*rows, peak=8.0):
    """Prompt frames, then one text frame per row: a piece (at `peak`), None (the blank), or {piece: logit}."""
    logits = np.zeros((4 + len(rows), len(PIECES)), np.float32)
    logits[0, tid("<|en|>")] = 2.0
    for t, row in enumerate(rows):
        row = {"<unk>" if row is None else row: peak} if not isinstance(row, dict) else row
        for piece, value in row.items():
            logits[4 + t, tid("<unk>" if piece is None else piece)] = value
    return logits


def decode(logits, *hotwords, beam=4):
    return DECODER.decode(logits, DecodeOptions(hotwords=tuple(parse_phrase(h, "test") for h in hotwords),
                                                hotwords_beam=beam), duration=1.0)


# ---------------------------------------------------------------- the search
SPOKEN = frames(None, "\u2581turn", None, "\u2581on", None, "\u2581the", None,
                {"\u2581chicken": 6.0, "\u2581kitchen": 5.0}, None, "\u2581light", None)


def test_a_second_best_phrase_wins_with_its_boost_and_not_without():
    assert decode(SPOKEN).text == "turn on the chicken light"
    biased = decode(SPOKEN, "kitchen light")
    assert biased.text == "turn on the kitchen light"
    assert biased.hotwords_matched == ["kitchen light"]
    kitchen = biased.tokens[3]
    # Times and posterior are the phrase token's own at the frame it took (frame 7 of the text frames).
    row = SPOKEN[4 + 7].astype(np.float64)
    assert (kitchen.text, round(kitchen.start, 3), round(kitchen.end, 3)) == (" kitchen", 0.42, 0.48)
    assert kitchen.prob == pytest.approx(math.exp(5.0 - np.log(np.exp(row).sum())))
    assert biased.confidence == pytest.approx(np.mean([t.prob for t in biased.tokens]))
    # A weight scales the boost: at weight 0.3 the phrase earns 2 x 0.45 nats, short of the 1-nat gap.
    assert decode(SPOKEN, "kitchen light:0.3").text == "turn on the chicken light"


def test_results_without_hotwords_take_the_greedy_path():
    greedy = DECODER.decode(SPOKEN, DecodeOptions(), duration=1.0)
    assert greedy.hotwords_matched == [] and "hotwords_matched" not in greedy.to_dict()
    # A list none of whose phrases the vocabulary can spell is no hotword: greedy, token for token.
    assert decode(SPOKEN, "佢哋") == greedy


def test_a_cjk_phrase():
    logits = frames("厨", {"\u2581on": 6.0, "房": 5.0}, "灯", None)
    assert decode(logits).text == "厨 on灯"
    biased = decode(logits, "厨房灯")
    assert biased.text == "厨房灯" and biased.hotwords_matched == ["厨房灯"]
    assert [t.text for t in biased.tokens] == ["厨", "房", "灯"]


def test_two_phrases_sharing_a_prefix_each_match():
    logits = frames({"\u2581chicken": 6.0, "\u2581kitchen": 5.0}, "\u2581light", None,
                    {"\u2581chicken": 6.0, "\u2581kitchen": 5.0}, "\u2581lamp", None)
    assert decode(logits).text == "chicken light chicken lamp"
    biased = decode(logits, "kitchen light", "kitchen lamp:2")
    assert biased.text == "kitchen light kitchen lamp"
    assert biased.hotwords_matched == ["kitchen light", "kitchen lamp"]


def test_a_match_left_unfinished_is_taken_back():
    # "kitchen" alone earns 1.5 while the search runs (5 + 1.5 > 6), but "kitchen light" never completes:
    # at the end the bonus goes back, and "chicken" (more likely by 1 nat) is the text.
    at_end = frames("\u2581the", {"\u2581chicken": 6.0, "\u2581kitchen": 5.0}, None)
    assert decode(at_end, "kitchen light").text == "the chicken"
    # The same when the match breaks off on a fail link mid-utterance.
    broken = frames("\u2581the", {"\u2581chicken": 6.0, "\u2581kitchen": 5.0}, None, "\u2581on", None)
    result = decode(broken, "kitchen light")
    assert result.text == "the chicken on" and result.hotwords_matched == []


def reference_greedy(frame_tokens):
    out, previous = [], None
    for token in frame_tokens:
        if token != previous and token != 0 and not SPECIAL[token]:
            out.append(token)
        previous = token
    return out


TEXT_IDS = [tid(p) for p in tm.WORDS + WORDS]
SOME_SPECIAL = [i for i, s in enumerate(SPECIAL) if s][:3]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([0, 0, 0] + TEXT_IDS + SOME_SPECIAL), max_size=80),
       st.floats(min_value=11.0, max_value=20.0), st.integers(1, 6))
def test_beam_search_without_hotwords_equals_greedy_on_peaked_posteriors(frame_tokens, peak, beam):
    logits = np.zeros((len(frame_tokens), len(PIECES)), np.float32)
    logits[np.arange(len(frame_tokens)), frame_tokens] = peak
    kept, matched, silence = beam_search.best_path(logits, ContextGraph([], SCORE), beam, 0, SPECIAL)
    ids, tokens, confidence = DECODER._text(logits, 0.0)
    assert [k[0] for k in kept] == ids == reference_greedy(frame_tokens)
    assert [(s * 0.06, e * 0.06) for _, s, e, _ in kept] == [(t.start, t.end) for t in tokens]
    assert [p for *_, p in kept] == pytest.approx([t.prob for t in tokens], rel=1e-6)
    if not tokens:
        assert silence == pytest.approx(confidence, rel=1e-6)
    assert matched == []


def test_long_utterances_align_every_token():
    # 150 tokens: 301 alignment states, past what an int8 state index holds.
    rng = np.random.default_rng(0)
    frame_tokens = [x for token in rng.choice(TEXT_IDS, 150) for x in (int(token), 0)]
    logits = np.zeros((len(frame_tokens), len(PIECES)), np.float32)
    logits[np.arange(len(frame_tokens)), frame_tokens] = 12.0
    kept, _, _ = beam_search.best_path(logits, ContextGraph([], SCORE), 4, 0, SPECIAL)
    assert [(k[0], k[1], k[2]) for k in kept] == [(t, 2 * i, 2 * i + 1) for i, t in enumerate(frame_tokens[::2])]


# Phrase tokens that trail each spoken word by their boost plus 1 nat: never in the text. (The nat pays for
# the alignments a token could take within a word's frames, which prefix search adds up: at 0.125 a phrase
# token took the last of three frames of "turn". Over blank frames they sit at 0, as a word the model does
# not hear; a phrase inside another, or a phrase partly spoken, would earn more.)
OTHER_IDS = [tid(p) for p in ("\u2581turn", "\u2581on", "\u2581the", "\u2581lamp", "灯")]  # none in a phrase


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([0, 0] + OTHER_IDS), min_size=1, max_size=60), st.sampled_from([1.0, 2.0, 4.0]),
       st.floats(min_value=1.0, max_value=3.0))
def test_an_unspoken_phrase_does_not_appear(frame_tokens, weight, margin):
    logits = np.zeros((4 + len(frame_tokens), len(PIECES)), np.float32)
    peak = 10.0 + SCORE * weight
    for t, token in enumerate(frame_tokens):
        logits[4 + t, token] = peak
        if token != 0:
            for piece in ("\u2581kitchen", "\u2581light", "\u2581lights", "房"):
                logits[4 + t, tid(piece)] = peak - SCORE * weight - margin
    result = decode(logits, f"kitchen light:{weight}", f"厨房:{weight}", f"lights:{weight}")
    assert result.hotwords_matched == []
    assert result.text == DECODER.decode(logits, DecodeOptions(), duration=1.0).text


def test_frames_of_near_certain_blank_are_skipped_but_keep_repeats_apart():
    logits = np.zeros((6, len(PIECES)), np.float32)
    hello = tm.token_id("\u2581hello")
    for t, token in enumerate([hello, 0, 0, hello, 0, 0]):
        logits[t, token] = 30.0  # blank at 30: 1 - P(blank) ~ 1e-11, skipped
    graph = ContextGraph([((hello,), 1.0, "hello")], SCORE)
    kept, matched, _ = beam_search.best_path(logits, graph, 4, 0, SPECIAL)
    assert [(k[0], k[1], k[2]) for k in kept] == [(hello, 0, 1), (hello, 3, 4)] and matched == ["hello"]


# ---------------------------------------------------------------- the graph
def walk(graph, tokens):
    state, total, names = ROOT, 0.0, []
    for token in tokens:
        state, delta, done = graph.step(state, token)
        total += delta
        names += done
    return state, total, names


def test_graph_bonus_completed_kept_unfinished_given_back():
    a, b, c, d = 101, 102, 103, 104
    graph = ContextGraph([((a, b, c), 1.0, "abc"), ((a, b, d), 2.0, "abd"), ((b, c), 1.0, "bc")], SCORE)
    assert len(graph) == 1 + 4 + 2  # a, ab, abc, abd, b, bc: the prefix a-b is shared
    # A shared token earns the highest weight of the phrases through it (abd's 2), its own token its own.
    state, total, names = walk(graph, [a, b, d])
    assert names == ["abd"] and total == pytest.approx(3 * SCORE * 2)
    assert graph.finish(state) == 0  # nothing in progress at a phrase's end
    # "abc" completes, and with it "bc" (its suffix: reached through the output links).
    state, total, names = walk(graph, [a, b, c])
    assert sorted(names) == ["abc", "bc"]
    assert total == pytest.approx((2 + 2 + 1) * SCORE + 2 * SCORE)
    # Unfinished, then given back at the end.
    state, total, names = walk(graph, [a, b])
    assert names == [] and total + graph.finish(state) == pytest.approx(0.0)
    # Broken off by another token: the fail link keeps only the suffix in progress ("b" of "bc").
    state, total, names = walk(graph, [a, b, a])
    assert names == [] and total == pytest.approx(2 * SCORE) and total + graph.finish(state) == pytest.approx(0)
    state, total, names = walk(graph, [a, b, b, c])
    assert names == ["bc"] and total + graph.finish(state) == pytest.approx(2 * SCORE)


def test_a_phrase_inside_another_matches_on_its_own():
    a, b = 101, 102
    graph = ContextGraph([((a,), 1.0, "a"), ((a, b), 1.0, "ab")], SCORE)
    assert walk(graph, [a, b])[2] == ["a", "ab"]
    state, total, _ = walk(graph, [a])
    assert total + graph.finish(state) == pytest.approx(SCORE)  # "a" is complete: it keeps its bonus


# ---------------------------------------------------------------- phrases
def test_phrase_syntax_and_limits():
    assert parse_phrase("Kitchen Light", "x") == ("Kitchen Light", 1.0)
    assert parse_phrase("  Kitchen   Light:2.5 ", "x") == ("Kitchen Light", 2.5)
    assert parse_phrase("Re: Zero", "x") == ("Re: Zero", 1.0)
    for bad, message in [("lamp:0", r"x: weight 0 of 'lamp' is not a number in \(0, 10\]"),
                         ("lamp:11", "weight 11"), ("lamp:nan", "weight nan"), (":2", "empty phrase"),
                         ("  ", "empty phrase"), ("a" * 201, "201 characters; at most 200")]:
        with pytest.raises(HotwordError, match=message):
            parse_phrase(bad, "x")
    with pytest.raises(HotwordError, match=f"x: {MAX_PHRASES + 1} phrases; at most {MAX_PHRASES}"):
        parse_phrases(["a"] * (MAX_PHRASES + 1), "x")
    assert merge((("a", 1.0), ("b", 2.0)), (("a", 3.0),)) == (("a", 3.0), ("b", 2.0))


def test_phrase_file(tmp_path):
    path = tmp_path / "hotwords.txt"
    path.write_text("\ufeff# names\nKitchen Light:2\n\n  dimmer\n", encoding="utf-8")
    assert read_phrase_file(path) == (("Kitchen Light", 2.0), ("dimmer", 1.0))
    path.write_text("ok\nlamp:-1\n", encoding="utf-8")
    with pytest.raises(HotwordError, match=f"{path}:2: weight -1"):
        read_phrase_file(path)
    with pytest.raises(HotwordError, match="no such hotwords file"):
        read_phrase_file(tmp_path / "none.txt")
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(HotwordError, match="cannot read the hotwords file"):
        read_phrase_file(path)


def test_spelling_in_the_vocabulary_pieces():
    speller = PhraseSpeller(PIECES, VOCAB.is_special)
    assert speller.spell("kitchen light") == (tid("\u2581kitchen"), tid("\u2581light"))
    # Case variants: typed capitalised, spelled as the model writes it.
    assert speller.spellings("Kitchen Light") == [(tid("\u2581kitchen"), tid("\u2581light"))]
    assert speller.spell("厨房 灯") == (tid("厨"), tid("房"), tid("灯"))  # Han: no boundary, spaces dropped
    # Fewest pieces when there is no piece for the whole word.
    no_kitchen = [p if p != "\u2581kitchen" else "<|x|>" for p in PIECES]
    speller = PhraseSpeller(no_kitchen, [p.startswith("<|") for p in no_kitchen])
    assert speller.spell("kitchen") == (tid("\u2581kit"), tid("chen"))
    # Byte pieces stand in for a character with none, when the vocabulary has all of them.
    with_bytes = list(PIECES) + [f"<0x{b:02X}>" for b in range(0x80, 0x100) if f"<0x{b:02X}>" not in PIECES]
    speller = PhraseSpeller(with_bytes, [p.startswith("<|") for p in with_bytes])
    assert [with_bytes[i] for i in speller.spell("佢")] == ["<0xE4>", "<0xBD>", "<0xA2>"]
    assert PhraseSpeller(PIECES, VOCAB.is_special).spellings("佢") == []


def test_spelling_with_the_bpe_model(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("turn on the kitchen light\nthe kitchen lamp\n你好 世界\n" * 50, encoding="utf-8")
    tags = [f"<|{t}|>" for t in tm.LANGS + tm.EMOTIONS + tm.EVENTS]
    sentencepiece.SentencePieceTrainer.Train(
        input=str(corpus), model_prefix=str(tmp_path / "bpe"), vocab_size=80, model_type="bpe",
        user_defined_symbols=tags, character_coverage=1.0, minloglevel=2)
    vocab = load_bpe_model(tmp_path / "bpe.model")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "bpe.model"))
    speller = PhraseSpeller(vocab.pieces, vocab.is_special, encode=vocab.encode)
    assert speller.spell("kitchen lamp") == tuple(processor.EncodeAsIds("kitchen lamp"))


def test_spelling_check_names_the_phrase():
    search = DECODER.hotwords
    search.check((("kitchen", 1.0), ("厨房", 1.0)), "recognizer.hotwords")
    with pytest.raises(HotwordError, match=r"recognizer.hotwords: hotword '佢' has characters this model's "
                                           r"vocabulary \(test\) cannot spell"):
        search.check((("kitchen", 1.0), ("佢", 1.0)), "recognizer.hotwords")
    with pytest.raises(HotwordError, match="is 70 tokens long; at most 64"):
        search.check((("厨" * 70, 1.0),), "recognizer.hotwords")
    with pytest.raises(HotwordError, match="at most 2000"):
        search.graph(tuple((f"p{i}", 1.0) for i in range(2001)), SCORE)


# ---------------------------------------------------------------- results
def test_hotwords_matched_in_the_event_schemas():
    result = decode(SPOKEN, "kitchen light")
    out = result.to_dict()
    assert out["hotwords_matched"] == ["kitchen light"]
    for name in ("final", "partial"):
        schema = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
        prop = schema["properties"]["hotwords_matched"]
        jsonschema.validate(out["hotwords_matched"], prop)
        assert "hotwords_matched" not in schema.get("required", [])
