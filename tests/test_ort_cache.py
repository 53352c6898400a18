"""The CPU-optimized model copy: built once by `model optimize`, looked up by the loader, never trusted blindly."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import tiny_models as tm
from helpers import run, write_wav

from agent.errors import ModelError
from agent.recognizer import load_recognizer, ort_cache
from agent.recognizer.runtime import EP_NAMES, _optimized_copy
from agent.recognizer.settings import RecognizerSettings


def settings_for(model_dir, cache) -> RecognizerSettings:
    settings = RecognizerSettings(model_dir=str(model_dir), warmup=False)
    settings.cpu.optimized_cache_dir = str(cache)
    return settings


def noise(seed=0):
    return (np.random.default_rng(seed).standard_normal(tm.ONE_PATTERN_SAMPLES) * 1000).astype(np.float32)


@pytest.fixture(params=["sherpa-onnx", "funasr"])
def model_dir(request, tmp_path):
    write = tm.write_sherpa if request.param == "sherpa-onnx" else tm.write_funasr
    return write(tmp_path / "model")


def model_file(model_dir) -> Path:
    return next(model_dir.glob("*.onnx"))


def test_loader_uses_the_copy_and_answers_the_same(model_dir, tmp_path):
    settings = settings_for(model_dir, tmp_path / "cache")
    plain = load_recognizer(settings)
    assert plain.info["optimized_copy"] is None
    done = ort_cache.build(model_file(model_dir), settings.cpu.optimized_cache_dir)
    copy = Path(done["optimized"])
    assert copy.is_file() and copy.parent == tmp_path / "cache" and done["bytes"] == copy.stat().st_size
    assert not list(copy.parent.glob(".*.partial"))
    optimized = load_recognizer(settings)
    assert optimized.info["optimized_copy"] == str(copy)
    for seed in range(3):
        assert optimized.recognize(noise(seed)).to_dict(tokens=True) == plain.recognize(noise(seed)).to_dict(tokens=True)
    assert optimized.recognize(noise()).text == tm.PATTERN_TEXT


def test_a_replaced_model_file_misses_and_a_rebuild_drops_the_stale_copy(model_dir, tmp_path):
    settings = settings_for(model_dir, tmp_path / "cache")
    onnx = model_file(model_dir)
    first = Path(ort_cache.build(onnx, settings.cpu.optimized_cache_dir)["optimized"])
    stat = onnx.stat()
    os.utime(onnx, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # as a new download would
    assert load_recognizer(settings).info["optimized_copy"] is None
    second = ort_cache.build(onnx, settings.cpu.optimized_cache_dir)
    assert second["removed"] == [str(first)] and not first.exists()
    assert load_recognizer(settings).info["optimized_copy"] == second["optimized"]


def test_an_unusable_copy_is_removed_and_the_original_loads(model_dir, tmp_path, caplog):
    settings = settings_for(model_dir, tmp_path / "cache")
    copy = Path(ort_cache.build(model_file(model_dir), settings.cpu.optimized_cache_dir)["optimized"])
    copy.write_bytes(copy.read_bytes()[:1000])  # e.g. a disk that filled up under someone's copy tool
    with caplog.at_level(logging.WARNING):
        recognizer = load_recognizer(settings)
    assert recognizer.info["optimized_copy"] is None
    assert recognizer.recognize(noise()).text == tm.PATTERN_TEXT
    assert not copy.exists()
    assert any(str(copy) in r.getMessage() and "unusable" in r.getMessage() for r in caplog.records)


def test_the_copy_is_only_for_a_cpu_only_provider_chain(model_dir, tmp_path):
    settings = settings_for(model_dir, tmp_path / "cache")
    onnx = model_file(model_dir)
    copy = Path(ort_cache.build(onnx, settings.cpu.optimized_cache_dir)["optimized"])
    import onnxruntime

    version = onnxruntime.__version__
    cpu = (EP_NAMES["cpu"], {})
    assert _optimized_copy(onnx, settings, [cpu], version) == copy
    assert _optimized_copy(onnx, settings, [(EP_NAMES["cuda"], {}), cpu], version) is None
    assert _optimized_copy(onnx, settings, [(EP_NAMES["tensorrt"], {}), cpu], version) is None
    assert _optimized_copy(onnx, settings, [cpu], "0.0.1") is None  # another runtime version
    settings.cpu.optimized_cache_dir = ""
    assert _optimized_copy(onnx, settings, [cpu], version) is None


def test_cache_dir_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert ort_cache.cache_dir("") is None
    assert ort_cache.cache_dir("~/opt") == tmp_path / "home" / "opt"
    assert ort_cache.cache_dir("auto") == tmp_path / "home" / ".cache" / "stt-agent" / "onnxruntime"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ort_cache.cache_dir("auto") == tmp_path / "xdg" / "stt-agent" / "onnxruntime"
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/stt-agent:/var/cache/other")  # systemd's CacheDirectory=
    assert ort_cache.cache_dir("auto") == Path("/var/cache/stt-agent/onnxruntime")


def test_build_with_the_cache_disabled_says_which_setting(model_dir):
    with pytest.raises(ModelError, match="recognizer.cpu.optimized_cache_dir is empty"):
        ort_cache.build(model_file(model_dir), "")


def test_build_into_an_unwritable_place_names_it(model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ModelError, match=f"cannot use the optimized-model cache {blocker}/sub"):
        ort_cache.build(model_file(model_dir), str(blocker / "sub"))


def without_time(json_line):
    return {k: v for k, v in json.loads(json_line).items() if k != "decode_ms"}


def test_cli_model_optimize_then_transcribe(tmp_path):
    model = tm.write_sherpa(tmp_path / "model")
    cache = tmp_path / "cache"
    env = {"CACHE_DIRECTORY": str(cache)}  # what the systemd unit's CacheDirectory= sets
    wav = write_wav(tmp_path / "a.wav", np.random.default_rng(0).integers(-3000, 3000, tm.ONE_PATTERN_SAMPLES))
    before = run("transcribe", str(wav), "--model", str(model), "--json", env=env)
    done = run("model", "optimize", "--model", str(model), env=env)
    assert done.returncode == 0, done.stderr
    copy = Path(done.stdout.strip())
    assert copy.parent == cache / "onnxruntime" and copy.is_file()
    assert f"optimized copy of {model / 'model.int8.onnx'} written" in done.stderr
    again = run("model", "optimize", "--model", str(model), env=env)
    assert again.returncode == 0 and again.stdout.strip() == str(copy) and "up to date" in again.stderr
    mtime = copy.stat().st_mtime_ns
    forced = run("model", "optimize", "--model", str(model), "--force", env=env)
    assert forced.returncode == 0 and "written" in forced.stderr and copy.stat().st_mtime_ns != mtime
    after = run("-v", "transcribe", str(wav), "--model", str(model), "--json", env=env)
    assert after.returncode == 0, after.stderr
    assert "optimized copy) loaded on cpu" in after.stderr
    assert without_time(after.stdout) == without_time(before.stdout)


def test_cli_model_optimize_errors(tmp_path):
    missing = run("model", "optimize", "--model", str(tmp_path / "nowhere"))
    assert missing.returncode == 66 and missing.stderr.strip().startswith("error: model directory")
    model = tm.write_sherpa(tmp_path / "model")
    disabled = run("model", "optimize", "--model", str(model),
                   env={"STT_AGENT_RECOGNIZER__CPU__OPTIMIZED_CACHE_DIR": ""})
    assert disabled.returncode == 66, disabled.stderr
    assert disabled.stderr.strip() == ("error: recognizer.cpu.optimized_cache_dir is empty (optimized copies are "
                                       "disabled); set it to a directory or to auto")
