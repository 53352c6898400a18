"""A model directory that is missing a file, corrupt or mismatched gives one clear line naming it."""

from __future__ import annotations

import shutil

import onnx
import pytest

import tiny_models as tm
from agent.errors import EXIT_NOINPUT, ModelError
from agent.recognizer import load_recognizer
from agent.recognizer.model_dir import locate
from agent.recognizer.settings import RecognizerSettings


def load(directory, **kwargs):
    return load_recognizer(RecognizerSettings(model_dir=str(directory), warmup=False, **kwargs))


def error_of(directory, **kwargs) -> str:
    with pytest.raises(ModelError) as info:
        load(directory, **kwargs)
    assert info.value.exit_code == EXIT_NOINPUT
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_directory(tmp_path):
    message = error_of(tmp_path / "nope")
    assert "nope does not exist" in message and "stt-agent model fetch" in message


def test_empty_directory_lists_what_either_export_needs(tmp_path):
    message = error_of(tmp_path)
    assert "not a SenseVoice model directory" in message
    assert "tokens.txt" in message and "am.mvn" in message


def test_sherpa_without_model_file(tmp_path):
    tm.write_sherpa(tmp_path)
    (tmp_path / "model.int8.onnx").unlink()
    assert "missing model.int8.onnx or model.onnx" in error_of(tmp_path)


@pytest.mark.parametrize("name", ["am.mvn", "config.yaml"])
def test_funasr_missing_side_file(tmp_path, name):
    tm.write_funasr(tmp_path)
    (tmp_path / name).unlink()
    assert f"missing {name}" in error_of(tmp_path)


def test_funasr_missing_vocabulary(tmp_path):
    tm.write_funasr(tmp_path)
    (tmp_path / "tokens.json").unlink()
    assert "missing tokens.json or chn_jpn_yue_eng_ko_spectok.bpe.model" in error_of(tmp_path)


def test_requested_precision_missing(tmp_path):
    tm.write_sherpa(tmp_path)
    assert "missing model.fp16.onnx (precision fp16" in error_of(tmp_path, precision="fp16")


def test_auto_precision_prefers_int8_on_cpu_and_floats_on_gpu(tmp_path):
    tm.write_sherpa(tmp_path)
    shutil.copy(tmp_path / "model.int8.onnx", tmp_path / "model.onnx")
    assert locate(tmp_path, "auto", "cpu").onnx.name == "model.int8.onnx"
    assert locate(tmp_path, "auto", "gpu").onnx.name == "model.onnx"
    assert load(tmp_path, precision="fp32").info["model_file"] == "model.onnx"


@pytest.mark.parametrize("keep", [0, 100, 5000])
def test_truncated_model(tmp_path, keep):
    tm.write_sherpa(tmp_path)
    path = tmp_path / "model.int8.onnx"
    path.write_bytes(path.read_bytes()[:keep])
    message = error_of(tmp_path)
    assert str(path) in message and "cannot load the ONNX model" in message and f"({keep} bytes" in message


def test_model_of_the_other_export(tmp_path):
    tm.write_funasr(tmp_path)
    tm.write_sherpa(tmp_path / "s")
    shutil.copy(tmp_path / "s" / "model.int8.onnx", tmp_path / "model_quant.onnx")
    message = error_of(tmp_path)
    assert "do not match the funasr SenseVoice export" in message and "speech_lengths" in message


def test_sherpa_metadata_missing_a_key(tmp_path):
    tm.write_sherpa(tmp_path)
    path = tmp_path / "model.int8.onnx"
    model = onnx.load(path)
    kept = [p for p in model.metadata_props if p.key != "neg_mean"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, path)
    assert "ONNX metadata has no 'neg_mean'" in error_of(tmp_path)


def test_tokens_and_model_disagree(tmp_path):
    tm.write_sherpa(tmp_path)
    lines = (tmp_path / "tokens.txt").read_text(encoding="utf-8").splitlines()
    (tmp_path / "tokens.txt").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    assert "different exports" in error_of(tmp_path)


def test_malformed_tokens_line(tmp_path):
    tm.write_sherpa(tmp_path)
    with open(tmp_path / "tokens.txt", "a", encoding="utf-8") as f:
        f.write("oops\n")
    assert "tokens.txt:" in error_of(tmp_path) and "expected 'piece id'" in error_of(tmp_path)


def test_am_mvn_of_the_wrong_size(tmp_path):
    tm.write_funasr(tmp_path)
    (tmp_path / "am.mvn").write_text("<AddShift> 2 2\n<LearnRateCoef> 0 [ 1 2 ]\n<Rescale> 2 2\n"
                                     "<LearnRateCoef> 0 [ 1 2 ]\n", encoding="utf-8")
    assert "<AddShift> has 2 values, expected 560" in error_of(tmp_path)


def test_vocabulary_without_sensevoice_tags(tmp_path):
    tm.write_sherpa(tmp_path)
    text = (tmp_path / "tokens.txt").read_text(encoding="utf-8").replace("<|en|>", "<|xx|>")
    (tmp_path / "tokens.txt").write_text(text, encoding="utf-8")
    assert "no language tag <|en|>" in error_of(tmp_path)


def test_the_model_file_itself_names_the_directory_and_the_file(tmp_path):
    """--model dir/model.onnx as sherpa-onnx's tools take it: that file, not the one auto would pick."""
    tm.write_sherpa(tmp_path)
    shutil.copy(tmp_path / "model.int8.onnx", tmp_path / "model.onnx")
    files = locate(tmp_path / "model.onnx", "auto", "cpu")
    assert (files.directory, files.onnx, files.precision) == (tmp_path, tmp_path / "model.onnx", "fp32")
    assert files.tokens == tmp_path / "tokens.txt"
    assert locate(tmp_path / "model.int8.onnx", "int8", "gpu").onnx.name == "model.int8.onnx"
    loaded = load(tmp_path / "model.onnx")
    assert (loaded.info["model_dir"], loaded.info["model_file"]) == (str(tmp_path), "model.onnx")
    tm.write_funasr(tmp_path / "funasr", model_name="model_quant.onnx")
    assert locate(tmp_path / "funasr" / "model_quant.onnx").precision == "int8"
    shutil.copy(tmp_path / "model.onnx", tmp_path / "my-export.fp16.onnx")
    assert locate(tmp_path / "my-export.fp16.onnx").precision == "fp16"  # a name of one's own: by its words


def test_the_model_file_and_another_precision(tmp_path):
    tm.write_sherpa(tmp_path)
    assert error_of(tmp_path / "model.int8.onnx", precision="fp32") == (
        f"{tmp_path / 'model.int8.onnx'} is the int8 model, but precision fp32 was asked for: give the fp32 model "
        "file, its directory, or precision auto")


def test_a_model_file_that_is_missing_or_not_onnx(tmp_path):
    tm.write_sherpa(tmp_path)
    missing = tmp_path / "model.fp16.onnx"
    assert error_of(missing).startswith(f"model file {missing} does not exist")
    assert error_of(tmp_path / "tokens.txt").startswith(
        f"{tmp_path / 'tokens.txt'} is a file, not a model directory or its .onnx model file")


def test_empty_tokens_file_says_it_is_empty(tmp_path):
    tm.write_sherpa(tmp_path)
    (tmp_path / "tokens.txt").write_text("", encoding="utf-8")
    assert error_of(tmp_path) == (f"{tmp_path / 'tokens.txt'}: the tokens file is empty (expected a 'piece id' line "
                                  "per token, as sherpa-onnx's export writes it: download it again)")
    tm.write_funasr(tmp_path / "funasr")
    (tmp_path / "funasr" / "tokens.json").write_text("[]", encoding="utf-8")
    assert "the tokens file is an empty list" in error_of(tmp_path / "funasr")


def test_a_gap_in_the_token_ids_is_named(tmp_path):
    tm.write_sherpa(tmp_path)
    lines = (tmp_path / "tokens.txt").read_text(encoding="utf-8").splitlines()
    (tmp_path / "tokens.txt").write_text("\n".join(lines[:5] + lines[6:]) + "\n", encoding="utf-8")
    message = error_of(tmp_path)
    assert f"token ids are not 0..{len(lines) - 2} without gaps (no id 5; the largest is {len(lines) - 1})" in message
