"""`transcribe` at any length: segmented by the pipeline's VAD and segmenter, batched, bounded memory,
subtitle formats, streamed segments, progress; and `run --fast` on the same machinery."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tiny_models as tm
from helpers import ROOT, run, write_wav

RATE = 16000


def burst(seconds, seed):
    return np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 6000


def silence(seconds):
    return np.zeros(int(seconds * RATE))


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    """12 utterances of 1-2 s with 1 s pauses: 31 s, longer than the 8 s cap the config below sets."""
    d = tmp_path_factory.mktemp("long")
    parts, spans, t = [silence(0.5)], [], 0.5
    for i in range(12):
        length = 1.0 + (i % 3) * 0.5
        parts += [burst(length, i), silence(1.0)]
        spans.append((t, t + length))
        t += length + 1.0
    return write_wav(d / "talk.wav", np.concatenate(parts)), spans


@pytest.fixture(scope="module")
def config(tmp_path_factory, model):
    """The energy VAD (deterministic on noise bursts) and an 8 s utterance cap, so a 31 s file is long."""
    path = tmp_path_factory.mktemp("config") / "c.yaml"
    path.write_text(f"recognizer:\n  model_dir: {model}\nvad:\n  kind: energy\nsegmenter:\n  max_utterance_s: 8\n",
                    encoding="utf-8")
    return path


def test_a_short_file_gives_exactly_the_one_pass_result(model, config, tmp_path):
    """Up to max_utterance_s a file is decoded whole, as before: the same fields, values and tokens."""
    from agent.audio_file import load_audio
    from agent.recognizer import load_recognizer
    from agent.recognizer.settings import RecognizerSettings

    wav = write_wav(tmp_path / "short.wav", np.concatenate([silence(0.3), burst(2.0, 1), silence(0.5)]))
    proc = run("transcribe", str(wav), "--config", str(config), "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    expected = load_recognizer(RecognizerSettings(model_dir=str(model), warmup=False)).recognize(load_audio(wav))
    for key, value in expected.to_dict(tokens=True).items():
        assert got[key] == value, key
    assert got["segments"] == [{"start": 0.0, "end": 2.8, **{k: v for k, v in expected.to_dict(tokens=False).items()
                                                             if k != "duration"}}]


def test_a_short_file_is_cut_at_its_pauses_for_subtitles_and_segments(model, tmp_path):
    """9.7 s with two 1.5 s pauses, under the default 20 s cap: three cues, not one of 9.7 s; JSON and
    plain text still come from the one pass."""
    config = tmp_path / "c.yaml"
    config.write_text(f"recognizer:\n  model_dir: {model}\nvad:\n  kind: energy\n", encoding="utf-8")
    wav = write_wav(tmp_path / "short.wav", np.concatenate(
        [silence(0.2), burst(2.5, 1), silence(1.5), burst(2.5, 2), silence(1.5), burst(1.5, 3)]))
    srt = run("transcribe", str(wav), "--config", str(config), "--format", "srt")
    assert srt.returncode == 0, srt.stderr
    cues = srt.stdout.strip().split("\n\n")
    assert len(cues) == 3, srt.stdout
    start, end = cues[0].splitlines()[1].split(" --> ")
    assert start == "00:00:00,000" and end.startswith("00:00:02,9")  # pre-roll clipped at 0; a 200 ms tail
    for fmt, count in (("vtt", 3), ("tsv", 4), ("txt", 3)):
        assert len(run("transcribe", str(wav), "--config", str(config), "--format", fmt).stdout.strip()
                   .replace("WEBVTT\n\n", "").split("\n\n" if fmt == "vtt" else "\n")) == count, fmt
    assert len(run("transcribe", str(wav), "--config", str(config), "--segments").stdout.splitlines()) == 3
    record = json.loads(run("transcribe", str(wav), "--config", str(config), "--json").stdout)
    assert [(s["start"], s["end"]) for s in record["segments"]] == [(0.0, 9.7)]


def test_a_long_file_is_cut_where_the_speech_is_and_joined_back(config, long_wav):
    wav, spans = long_wav
    proc = run("transcribe", str(wav), "--config", str(config), "--json", "--tokens")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    segments = record["segments"]
    assert len(segments) == len(spans)
    for segment, (start, end) in zip(segments, spans):
        # pre-roll 300 ms (never before the last utterance's end), tail pad 200 ms
        assert segment["start"] == pytest.approx(start - 0.3, abs=0.07)
        assert segment["end"] == pytest.approx(end + 0.2, abs=0.07)
        assert segment["text"].startswith(tm.PATTERN_TEXT)
        assert segment["tokens"] and segment["start"] <= segment["tokens"][0]["start"] < segment["end"]
    # joined with a space between Latin words, none where Chinese meets anything
    assert record["text"].replace(" ", "") == "".join(s["text"] for s in segments).replace(" ", "")
    assert "world hello" in record["text"] and "你好hello" in record["text"]
    assert record["language"] == "en" and record["emotion"] == "happy" and record["event"] == "speech"
    assert record["duration"] == pytest.approx(spans[-1][1] + 1.0, abs=0.01)
    assert len(record["tokens"]) == sum(len(s["tokens"]) for s in segments)


def test_no_segment_is_longer_than_the_cap_whatever_the_audio(config, tmp_path):
    syllable = np.concatenate([burst(0.2, 7), silence(0.05)])  # pauses far shorter than the endpoint
    wav = write_wav(tmp_path / "nonstop.wav", np.tile(syllable, 120))  # 30 s that never stops for breath
    proc = run("transcribe", str(wav), "--config", str(config), "--json")
    assert proc.returncode == 0, proc.stderr
    segments = json.loads(proc.stdout)["segments"]
    assert len(segments) >= 4 and all(s["end"] - s["start"] <= 8.0 + 1e-6 for s in segments)
    assert segments[-1]["end"] == pytest.approx(30.0, abs=0.05)


def test_batches_give_the_results_of_one_at_a_time(config, long_wav):
    wav = long_wav[0]
    one = json.loads(run("transcribe", str(wav), "--config", str(config), "--json", "--batch-size", "1").stdout)
    four = json.loads(run("transcribe", str(wav), "--config", str(config), "--json", "--batch-size", "5").stdout)
    assert [s["text"] for s in four["segments"]] == [s["text"] for s in one["segments"]]
    for a, b in zip(one["segments"], four["segments"]):
        assert (a["start"], a["end"], a["language"]) == (b["start"], b["end"], b["language"])
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-3)


def _clock(seconds, sep):
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def _expected(fmt, segments):
    """The format as whisper.cpp and faster-whisper users know it, from the JSON segments."""
    if fmt == "srt":
        return "".join(f"{i}\n{_clock(s['start'], ',')} --> {_clock(s['end'], ',')}\n{s['text']}\n\n"
                       for i, s in enumerate(segments, 1))
    if fmt == "vtt":
        return "WEBVTT\n\n" + "".join(f"{_clock(s['start'], '.')} --> {_clock(s['end'], '.')}\n{s['text']}\n\n"
                                      for s in segments)
    if fmt == "tsv":
        return "start\tend\ttext\n" + "".join(f"{round(s['start'] * 1000)}\t{round(s['end'] * 1000)}\t{s['text']}\n"
                                             for s in segments)
    return "".join(f"{s['text']}\n" for s in segments)


@pytest.mark.parametrize("fmt", ["srt", "vtt", "tsv", "txt"])
def test_subtitle_and_transcript_formats_to_stdout_and_to_files(config, long_wav, tmp_path, fmt):
    wav = long_wav[0]
    segments = json.loads(run("transcribe", str(wav), "--config", str(config), "--json").stdout)["segments"]
    proc = run("transcribe", str(wav), "--config", str(config), "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == _expected(fmt, segments)
    out = tmp_path / "out"
    out.mkdir()
    proc = run("transcribe", str(wav), "--config", str(config), "--format", fmt, "--output-dir", str(out))
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert (out / f"talk.{fmt}").read_text(encoding="utf-8") == _expected(fmt, segments)


def test_segments_stream_as_they_are_decoded_and_a_bad_file_stays_its_own(config, long_wav, tmp_path):
    wav = long_wav[0]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x24\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x01\0\0\0\x02\0\0\0\x02\0\x10\0data\0\0\0\0")
    proc = run("transcribe", str(bad), str(wav), "--config", str(config), "--segments")
    assert proc.returncode == 1
    records = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout: JSON lines, nothing else
    assert records[0] == {"file": str(bad), "error": f"{bad}: header says sample rate 1 Hz (expected 8000 to "
                                                     "768000 Hz; speech needs at least 8000 Hz)"}
    streamed = records[1:]
    assert len(streamed) == 12 and all(s["file"] == str(wav) and "text" in s for s in streamed)
    assert f"error: {bad}: header says sample rate 1 Hz" in proc.stderr and "Traceback" not in proc.stderr


def _json_lines(text):
    """What `| python -c 'for l in sys.stdin: json.loads(l)'` does: every line parses on its own."""
    return [json.loads(line) for line in text.splitlines()]


def test_each_stream_carries_one_format_with_segments(config, long_wav):
    wav = long_wav[0]
    plain_srt = run("transcribe", str(wav), "--config", str(config), "--format", "srt").stdout
    # --segments alone: the segment lines are stdout, without the per-file text line
    lines = _json_lines(run("transcribe", str(wav), "--config", str(config), "--segments").stdout)
    assert len(lines) == 12 and all(set(line) >= {"file", "start", "end", "text"} for line in lines)
    # --segments --json: the segment lines, then the file's record, all JSON
    lines = _json_lines(run("transcribe", str(wav), "--config", str(config), "--segments", "--json").stdout)
    assert len(lines) == 13 and lines[-1]["segments"] == [{k: v for k, v in s.items() if k != "file"}
                                                          for s in lines[:-1]]
    # --segments --format srt: the cues alone on stdout, the segment lines on stderr
    proc = run("transcribe", str(wav), "--config", str(config), "--segments", "--format", "srt")
    assert proc.returncode == 0 and proc.stdout == plain_srt
    assert len(_json_lines(proc.stderr)) == 12


def test_segments_go_to_stdout_when_the_format_goes_to_files(config, long_wav, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = run("transcribe", str(long_wav[0]), "--config", str(config), "--segments", "--format", "vtt",
               "--output-dir", str(out))
    assert proc.returncode == 0 and len(_json_lines(proc.stdout)) == 12 and proc.stderr == ""
    assert (out / "talk.vtt").read_text(encoding="utf-8").startswith("WEBVTT\n\n00:00:00.")


def test_progress_only_on_a_terminal_or_when_asked(config, long_wav):
    wav = long_wav[0]
    assert "real time" not in run("transcribe", str(wav), "--config", str(config), "--json").stderr
    proc = run("transcribe", str(wav), "--config", str(config), "--json", "--progress")
    assert proc.returncode == 0
    lines = proc.stderr.splitlines()  # not a terminal: whole lines, the last one at 100%
    assert lines[-1].startswith("talk.wav: 100% 30/30 s of audio, ") and "x real time" in lines[-1]


def test_memory_does_not_grow_with_the_length_of_the_file(config, tmp_path):
    """A 2-minute and a 40-minute file (77 MB of float32 if read whole) peak within a few MB."""
    rng = np.random.default_rng(3)
    piece = np.concatenate([silence(2.0), rng.standard_normal(RATE) * 6000, silence(2.0)]).astype("<i2").tobytes()

    def write(name, minutes):
        import wave

        path = tmp_path / name
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            for _ in range(int(minutes * 60 / 5)):
                w.writeframes(piece)
        return path

    def peak_mib(path):
        proc = subprocess.Popen([sys.executable, "-m", "agent", "transcribe", str(path), "--config", str(config),
                                 "--format", "txt"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, err
        return usage.ru_maxrss / 1024

    short, long_ = peak_mib(write("two.wav", 2)), peak_mib(write("forty.wav", 40))
    assert long_ - short < 20, (short, long_)


def test_run_fast_on_a_file_uses_the_same_segments_and_batches(config, long_wav):
    """run --fast: the utterances transcribe finds, as events; no partials, no wall clock."""
    wav = long_wav[0]
    transcript = json.loads(run("transcribe", str(wav), "--config", str(config), "--json").stdout)
    proc = run("run", "--input", str(wav), "--config", str(config), "--fast")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    finals = [e for e in events if e["type"] == "final"]
    assert "partial" not in {e["type"] for e in events}
    assert [(f["audio_start"], f["audio_end"], f["text"]) for f in finals] == [
        (s["start"], s["end"], s["text"]) for s in transcript["segments"]]
    assert all(f["audio_start_wall"] is None and "endpoint_delay_ms" not in f["timing"] for f in finals)
    per_utterance = {}
    for e in events:
        per_utterance.setdefault(e["utterance_id"], []).append(e["type"])
    assert all(types == ["speech_start", "speech_end", "final", "emotion", "language"]
               for types in per_utterance.values())


def test_run_fast_and_transcribe_read_flac_as_they_read_wav(config, long_wav, tmp_path):
    import soundfile

    wav = long_wav[0]
    flac = tmp_path / "talk.flac"
    samples, rate = soundfile.read(wav, dtype="int16")
    soundfile.write(flac, samples, rate)
    want = json.loads(run("transcribe", str(wav), "--config", str(config), "--json").stdout)["segments"]
    got = json.loads(run("transcribe", str(flac), "--config", str(config), "--json").stdout)["segments"]
    assert got == want
    proc = run("run", "--input", str(flac), "--config", str(config), "--fast")
    assert proc.returncode == 0, proc.stderr
    finals = [e for e in map(json.loads, proc.stdout.splitlines()) if e["type"] == "final"]
    assert [(f["audio_start"], f["audio_end"], f["text"]) for f in finals] == [
        (s["start"], s["end"], s["text"]) for s in want]
