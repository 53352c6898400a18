"""The decoder on hand-made logits: greedy CTC, detokenisation, token times, scores."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import tiny_models as tm
from agent.recognizer.decoding import Decoder, DecodeOptions
from agent.recognizer.vocab import Vocabulary

VOCAB = Vocabulary(list(tm.VOCAB), "test")
DECODER = Decoder(VOCAB, seconds_per_frame=0.06)
TEXT_IDS = [tm.token_id(p) for p in tm.WORDS]
SPECIAL_IDS = [i for i, p in enumerate(tm.VOCAB) if p.startswith("<|")]


def logits_for(frame_tokens, peak=5.0):
    """Prompt frames then one text frame per token id (0 = blank)."""
    rows = np.zeros((4 + len(frame_tokens), len(tm.VOCAB)), np.float32)
    rows[0, tm.token_id("<|en|>")] = 2.0
    for t, token in enumerate(frame_tokens):
        rows[4 + t, token] = peak
    return rows


def reference_greedy(frame_tokens):
    """Plain-loop CTC: collapse repeats, then drop blanks and tags."""
    out, previous = [], None
    for token in frame_tokens:
        if token != previous and token != 0 and token not in SPECIAL_IDS:
            out.append(token)
        previous = token
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0] + TEXT_IDS + SPECIAL_IDS[:3]), max_size=60))
def test_greedy_ctc_matches_the_reference(frame_tokens):
    result = DECODER.decode(logits_for(frame_tokens), DecodeOptions(), duration=1.0)
    assert [t.id for t in result.tokens] == reference_greedy(frame_tokens)
    for token in result.tokens:
        assert 0 <= token.start < token.end <= len(frame_tokens) * 0.06 + 1e-9
        assert 0 < token.prob <= 1


def test_repeats_separated_by_blank_are_two_tokens():
    hello = tm.token_id("\u2581hello")
    result = DECODER.decode(logits_for([hello, hello, 0, hello]), DecodeOptions(), duration=1.0)
    assert result.text == "hello hello"
    assert [(round(t.start, 3), round(t.end, 3)) for t in result.tokens] == [(0.0, 0.12), (0.18, 0.24)]


def test_cjk_joins_without_spaces_and_byte_pieces_decode_as_utf8():
    ids = [tm.token_id(p) for p in ["\u2581ok", "你", "<0xE4>", "<0xBD>", "<0xA0>", "好", "\u2581world"]]
    frames = [x for i in ids for x in (i, 0)]
    assert DECODER.decode(logits_for(frames), DecodeOptions(), duration=1.0).text == "ok你你好 world"


def test_tags_inside_the_text_frames_are_dropped():
    frames = [tm.token_id("<|HAPPY|>"), tm.token_id("\u2581ok"), tm.token_id("<|Laughter|>")]
    result = DECODER.decode(logits_for(frames), DecodeOptions(), duration=1.0)
    assert result.text == "ok" and len(result.tokens) == 1


def test_empty_text_confidence_is_how_sure_the_model_is_of_silence():
    confident = DECODER.decode(logits_for([0] * 10, peak=20.0), DecodeOptions(), duration=1.0)
    unsure = DECODER.decode(logits_for([0] * 10, peak=0.5), DecodeOptions(), duration=1.0)
    assert confident.text == unsure.text == ""
    assert confident.confidence > 0.99 > 0.1 > unsure.confidence


def test_offset_shifts_token_times():
    result = DECODER.decode(logits_for([0, tm.token_id("\u2581ok")]), DecodeOptions(), duration=1.0, offset=2.0)
    assert (round(result.tokens[0].start, 3), round(result.tokens[0].end, 3)) == (2.06, 2.12)


def test_scores_sum_to_one():
    result = DECODER.decode(logits_for([0]), DecodeOptions(allow_emo_unknown=True), duration=1.0)
    for scores in (result.language_scores, result.emotion_scores, result.event_scores):
        assert abs(sum(scores.values()) - 1.0) < 1e-9
    assert result.language == "en"


def test_words_are_never_in_the_language_nospeech():
    """allowed_languages [zh, ja] on speech where nospeech outscores both: the text is still in a language."""
    hello = tm.token_id("\u2581hello")
    rows = logits_for([hello, 0])
    rows[0, :] = 0.0
    rows[0, tm.token_id("<|nospeech|>")] = 3.0
    rows[0, tm.token_id("<|ja|>")] = 1.0
    options = DecodeOptions(allowed_languages=("zh", "ja"))
    result = DECODER.decode(rows, options, duration=1.0)
    assert result.text == "hello" and result.language == "ja"
    assert max(result.language_scores, key=result.language_scores.get) == "nospeech"  # the scores stay as they are
    rows[4:] = 0.0
    rows[4:, 0] = 5.0  # blank frames: no words
    silent = DECODER.decode(rows, options, duration=1.0)
    assert silent.text == "" and silent.language == "nospeech"  # no words: nospeech is the honest answer
