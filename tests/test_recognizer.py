"""The recognizer end to end on tiny models whose logits are known: text, tags, scores, times."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import tiny_models as tm
from agent.errors import ModelError
from agent.recognizer import load_recognizer
from agent.recognizer.frontend import Frontend, FrontendConfig
from agent.recognizer.settings import RecognizerSettings

FLAVOURS = {"sherpa-onnx": tm.write_sherpa, "funasr": tm.write_funasr}


def softmax(values):
    e = np.exp(np.asarray(values, np.float64) - max(values))
    return e / e.sum()


def noise(samples, seed=0):
    return (np.random.default_rng(seed).standard_normal(samples) * 1000).astype(np.float32)


@pytest.fixture(scope="module", params=sorted(FLAVOURS))
def model_dir(request, tmp_path_factory):
    return FLAVOURS[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def recognizer(model_dir):
    return load_recognizer(RecognizerSettings(model_dir=str(model_dir)))


def test_text_tokens_and_times(recognizer):
    result = recognizer.recognize(noise(tm.ONE_PATTERN_SAMPLES))
    assert result.text == tm.PATTERN_TEXT
    # Pattern frames: hello 1-2, world 4, 你 6, 好 7-8; one frame is 60 ms.
    expected = [(" hello", 0.06, 0.18, 4.0), (" world", 0.24, 0.30, 2.0), ("你", 0.36, 0.42, 5.0),
                ("好", 0.42, 0.54, 2.5)]
    assert [t.text for t in result.tokens] == [e[0] for e in expected]
    for token, (_, start, end, peak) in zip(result.tokens, expected):
        assert token.start == pytest.approx(start, abs=1e-9)
        assert token.end == pytest.approx(end, abs=1e-9)
        assert token.prob == pytest.approx(tm.text_prob(peak), rel=1e-6)  # the run's best frame
    assert result.confidence == pytest.approx(np.mean([tm.text_prob(e[3]) for e in expected]), rel=1e-6)
    assert result.duration == pytest.approx(tm.ONE_PATTERN_SAMPLES / 16000)


def test_tag_probabilities_are_softmaxes_at_their_frames(recognizer):
    result = recognizer.recognize(noise(tm.ONE_PATTERN_SAMPLES))
    langs = list(tm.AUTO_LANGUAGE)
    assert result.language == "en"
    assert list(result.language_scores) == langs
    np.testing.assert_allclose([result.language_scores[k] for k in langs],
                               softmax([tm.AUTO_LANGUAGE[k] for k in langs]), rtol=1e-6)
    real = [e for e in tm.EMOTIONS if e != "EMO_UNKNOWN"]  # EMO_UNKNOWN is banned by default
    assert result.emotion == "happy"
    assert list(result.emotion_scores) == [e.lower() for e in real]
    np.testing.assert_allclose(list(result.emotion_scores.values()), softmax([tm.EMOTION[e] for e in real]),
                               rtol=1e-6)
    assert result.event == "speech"
    np.testing.assert_allclose(list(result.event_scores.values()),
                               softmax([tm.EVENT.get(e, 0.0) for e in tm.EVENTS]), rtol=1e-6)


def test_emo_unknown_when_allowed(recognizer):
    result = recognizer.recognize(noise(tm.ONE_PATTERN_SAMPLES), recognizer.options(allow_emo_unknown=True))
    assert result.emotion == "emo_unknown"
    assert result.emotion_scores["emo_unknown"] == pytest.approx(
        softmax(list(tm.EMOTION.values()))[-1], rel=1e-6)


def test_emotion_map_sums_scores_into_avatar_classes(recognizer):
    mapping = {"happy": "happy", "sad": "sad", "angry": "angry", "neutral": "neutral", "surprised": "surprised",
               "fearful": "surprised", "disgusted": "angry"}
    result = recognizer.recognize(noise(tm.ONE_PATTERN_SAMPLES), recognizer.options(emotion_map=mapping))
    raw = recognizer.recognize(noise(tm.ONE_PATTERN_SAMPLES)).emotion_scores
    assert set(result.emotion_scores) == {"happy", "sad", "angry", "neutral", "surprised"}
    assert result.emotion_scores["surprised"] == pytest.approx(raw["surprised"] + raw["fearful"])
    assert result.emotion_scores["angry"] == pytest.approx(raw["angry"] + raw["disgusted"])
    assert sum(result.emotion_scores.values()) == pytest.approx(1.0)
    assert result.emotion == "happy"


def test_allowed_languages_restrict_the_argmax(recognizer):
    result = recognizer.recognize(noise(tm.ONE_PATTERN_SAMPLES), recognizer.options(allowed_languages=("zh", "ja")))
    assert result.language == "zh"  # en would win unrestricted
    assert list(result.language_scores) == ["zh", "ja", "nospeech"]
    np.testing.assert_allclose(list(result.language_scores.values()), softmax([1.0, 0.0, -1.0]), rtol=1e-6)


def test_fixed_language_is_sent_as_the_prompt(recognizer):
    result = recognizer.recognize(noise(tm.ONE_PATTERN_SAMPLES), recognizer.options(language="ja"))
    assert result.language == "ja"
    # The tiny graph answers the fixed-language prompt row (ja at 5): proof the prompt id reached it.
    expected = softmax([tm.FIXED_LANGUAGE if k == "ja" else 0.0 for k in tm.LANGS])
    np.testing.assert_allclose(list(result.language_scores.values()), expected, rtol=1e-6)


@pytest.mark.parametrize("use_itn, tag", [(True, "<|withitn|>"), (False, "<|woitn|>")])
def test_itn_prompt(recognizer, use_itn, tag):
    logits, _ = recognizer.logits([noise(4000)], recognizer.options(use_itn=use_itn))
    assert logits[0, 3].argmax() == tm.token_id(tag)


def test_unknown_language_is_a_clear_error(recognizer):
    with pytest.raises(ModelError, match="'fr' is not one this model knows"):
        recognizer.options(language="fr")


def test_batch_gives_the_same_results_as_one_at_a_time(recognizer):
    # 12, 24, 5 and 40 model frames: different lengths, padded together.
    segments = [noise(n, seed=i) for i, n in enumerate([tm.ONE_PATTERN_SAMPLES, 22480, 4000, 38000])]
    offsets = [0.0, 1.5, 3.0, 10.0]
    batch = recognizer.recognize_batch(segments, offsets=offsets)
    single = [recognizer.recognize(s, offset=o) for s, o in zip(segments, offsets)]
    assert [b.to_dict() for b in batch] == [s.to_dict() for s in single]
    assert batch[1].text == f"{tm.PATTERN_TEXT} {tm.PATTERN_TEXT}"
    assert batch[1].tokens[0].start == pytest.approx(1.5 + 0.06)


def test_each_item_of_a_batch_keeps_its_own_language_and_itn(recognizer):
    """Streams with different settings share one model run (sherpa-onnx's batch cannot do this)."""
    segments = [noise(tm.ONE_PATTERN_SAMPLES, seed=i) for i in range(3)]
    options = [recognizer.options(language="ja"), None, recognizer.options(use_itn=False)]
    batch = recognizer.recognize_batch(segments, options)
    single = [recognizer.recognize(s, o) for s, o in zip(segments, options)]
    assert [b.to_dict() for b in batch] == [s.to_dict() for s in single]
    assert [b.language for b in batch] == ["ja", "en", "en"]
    logits, _ = recognizer.logits(segments, options)
    assert [logits[i, 3].argmax() for i in range(3)] == [tm.token_id("<|withitn|>")] * 2 + [tm.token_id("<|woitn|>")]
    with pytest.raises(ValueError, match="2 options for 3 segments"):
        recognizer.recognize_batch(segments, options[:2])


def test_short_audio_still_decodes(recognizer):
    for n in (0, 1, 399, 400):
        result = recognizer.recognize(np.zeros(n, np.float32))
        assert result.text == ""
        assert result.tokens == []
        assert 0.0 < result.confidence <= 1.0


def test_features_reach_the_model_unchanged(model_dir, tmp_path):
    """An echo model returns its input: what it got must be the frontend's features, CMVN from the files."""
    echo_dir = FLAVOURS["sherpa-onnx" if (model_dir / "tokens.txt").exists() else "funasr"](tmp_path, echo=True)
    recognizer = load_recognizer(RecognizerSettings(model_dir=str(echo_dir), warmup=False))
    audio = noise(16000)
    logits, lengths = recognizer.logits([audio], recognizer.defaults)
    neg_mean, inv_stddev = tm.cmvn()
    expected = Frontend(FrontendConfig(neg_mean=neg_mean, inv_stddev=inv_stddev)).features(audio)
    assert lengths[0] == expected.shape[0] + 4
    np.testing.assert_allclose(logits[0, 4:], expected[:, : len(tm.VOCAB)], rtol=1e-5, atol=1e-4)


def test_info_reports_what_is_in_use(recognizer, model_dir):
    info = recognizer.info
    assert info["provider"] == "cpu"
    assert info["precision"] == "int8"
    assert info["runtime"].startswith("onnxruntime")
    assert info["load_ms"] > 0 and info["warmup_ms"] > 0
    assert info["random_init"] is False


def test_unavailable_provider_is_logged_and_the_next_used(model_dir, caplog):
    with caplog.at_level(logging.WARNING):
        rec = load_recognizer(RecognizerSettings(model_dir=str(model_dir), providers=["cuda", "cpu"], warmup=False))
    assert rec.info["provider"] == "cpu"
    warnings = [r.getMessage() for r in caplog.records if "cuda" in r.getMessage()]
    assert len(warnings) == 1 and "trying the next one" in warnings[0]


def test_no_usable_provider_is_a_configuration_error(model_dir):
    """A configuration problem (78), not a corrupt model (66, which systemd would restart 5 times)."""
    from agent.errors import EXIT_CONFIG, ConfigError

    with pytest.raises(ConfigError, match="recognizer.providers: none of tensorrt, cuda is available in") as info:
        load_recognizer(RecognizerSettings(model_dir=str(model_dir), providers=["tensorrt", "cuda"]))
    assert info.value.exit_code == EXIT_CONFIG


def test_a_cancelled_decode_raises_and_an_uncancelled_one_is_unaffected(recognizer):
    from agent.recognizer import CancelToken, DecodeCancelled

    token = CancelToken()
    assert recognizer.recognize(noise(tm.ONE_PATTERN_SAMPLES), cancel=token).text == tm.PATTERN_TEXT
    token.cancel()
    with pytest.raises(DecodeCancelled):
        recognizer.recognize(noise(tm.ONE_PATTERN_SAMPLES), cancel=token)


def test_installed_runtimes_are_read_from_dist_info_and_two_are_warned_about(tmp_path, monkeypatch, caplog):
    import onnxruntime  # noqa: F401  (before sys.path is replaced below)

    from agent.recognizer import runtime

    for name in ("onnxruntime_gpu-1.20.1.dist-info", "onnxruntime-1.19.2.dist-info", "numpy-2.1.0.dist-info",
                 "onnxruntime_extensions-0.12.0.dist-info"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr("sys.path", [str(tmp_path / "missing"), str(tmp_path)])
    assert runtime.installed_runtimes() == ["onnxruntime 1.19.2", "onnxruntime-gpu 1.20.1"]
    with caplog.at_level(logging.WARNING):
        runtime.import_onnxruntime()
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in caplog.text


def test_this_environment_has_exactly_one_runtime():
    from agent.recognizer import runtime

    assert len(runtime.installed_runtimes()) == 1, runtime.installed_runtimes()


def test_session_keeps_no_per_length_memory_pattern(recognizer):
    # Each utterance length would otherwise cache its own memory plan: RSS that grows for hours.
    assert recognizer._session.get_session_options().enable_mem_pattern is False
