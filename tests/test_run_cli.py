"""`stt-agent run --input FILE.wav` end to end: file source -> VAD -> segmenter -> tiny model -> JSON events."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import tiny_models as tm
from helpers import ROOT, run, write_wav

RATE = 16000


def burst(seconds, level=6000.0, seed=0):
    return np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * level


def silence(seconds):
    return np.zeros(int(seconds * RATE))


SCHEMAS = ROOT / "docs" / "schemas"
SCHEMA_OF = {"final": "final.json", "partial": "partial.json", "emotion": "emotion.json", "language": "language.json",
             "speech_start": "vad.json", "speech_end": "vad.json", "error": "error.json"}


def events_of(proc):
    """The JSON lines of a run, each checked against the schema MQTT subscribers get (one form for every sink)."""
    import jsonschema

    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    for event in events:
        schema = json.loads((SCHEMAS / SCHEMA_OF[event["type"]]).read_text())
        jsonschema.validate(event, schema)
        assert not set(event) - set(schema["properties"]), event
    return events


def test_two_utterances_with_partials_and_finals(model, tmp_path):
    audio = np.concatenate([silence(0.5), burst(1.5), silence(1.0), burst(1.0, seed=1), silence(1.0)])
    wav = write_wav(tmp_path / "conv.wav", audio)
    proc = run("run", "--input", str(wav), "--model", str(model), "--vad", "energy", "--fast")
    events = events_of(proc)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len({(e["session"], e["device_id"]) for e in events}) == 1
    per_utterance = {}
    for e in events:
        per_utterance.setdefault(e["utterance_id"], []).append(e["type"])
    assert sorted(per_utterance) == [1, 2]
    for types in per_utterance.values():
        assert [t for t in types if t != "partial"] == ["speech_start", "speech_end", "final", "emotion", "language"]
        assert "partial" not in types[types.index("speech_end"):]  # the documented order, always
    starts = [e for e in events if e["type"] == "speech_start"]
    ends = [e for e in events if e["type"] == "speech_end"]
    # Boundaries within a VAD frame (32 ms) plus the segmenter's padding of the known bursts.
    assert starts[0]["at"] == pytest.approx(0.5, abs=0.07) and starts[1]["at"] == pytest.approx(3.0, abs=0.07)
    assert ends[0]["at"] == pytest.approx(2.0 + 0.2, abs=0.1) and ends[1]["at"] == pytest.approx(4.0 + 0.2, abs=0.1)
    finals = [e for e in events if e["type"] == "final"]
    # Operators query the journal by these fields; the speech text stays out (log_text is off).
    logged = [line for line in proc.stderr.splitlines() if "EVENT=final" in line]
    assert len(logged) == 2 and "UTTERANCE_ID=1" in logged[0] and "LATENCY_MS=" in logged[0]
    assert tm.PATTERN_TEXT not in proc.stderr
    for final in finals:
        assert final["text"].startswith(tm.PATTERN_TEXT)
        assert final["tokens"][0]["start"] >= final["audio_start"]
        for key in ("language_scores", "emotion_scores", "event_scores", "confidence", "audio_start", "audio_end",
                    "audio_start_wall", "speculative"):
            assert key in final, key
        # --fast decodes faster than real time: no wall clock, no latency that would mean nothing
        assert final["audio_start_wall"] is None and set(final["timing"]) == {"queue_ms", "decode_ms"}


def test_speech_until_the_end_of_the_file_is_still_finalised(model, tmp_path):
    wav = write_wav(tmp_path / "cut.wav", np.concatenate([silence(0.3), burst(1.0)]))
    events = events_of(run("run", "--input", str(wav), "--model", str(model), "--vad", "energy", "--fast"))
    assert [e["type"] for e in events if e["type"] != "partial"] == ["speech_start", "speech_end", "final", "emotion",
                                                                     "language"]
    assert [e for e in events if e["type"] == "speech_end"][0]["reason"] == "flush"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (Debian package) makes the test speech")
def test_silero_on_synthesized_speech(model, tmp_path):
    parts = []
    for i, sentence in enumerate(["Turn on the kitchen lights.", "What time is it?", "Thank you very much."]):
        path = tmp_path / f"s{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), sentence], check=True)
        from agent.audio_file import load_audio

        parts += [silence(0.8), load_audio(path)]
    wav = write_wav(tmp_path / "speech.wav", np.clip(np.concatenate(parts + [silence(1.0)]), -32768, 32767))
    events = events_of(run("run", "--input", str(wav), "--model", str(model), "--vad", "silero", "--fast"))
    assert sum(e["type"] == "final" for e in events) == 3


def test_bad_input_file_is_one_line(model, tmp_path):
    proc = run("run", "--input", str(tmp_path / "nope.wav"), "--model", str(model), "--vad", "energy")
    assert proc.returncode == 66
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope.wav'}: no such file"


def test_sigterm_mid_utterance_still_emits_the_final(model, tmp_path):
    import os
    import signal
    import sys
    import time


    wav = write_wav(tmp_path / "long.wav", np.concatenate([silence(0.3), burst(8.0)]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--input", str(wav), "--model", str(model),
                             "--vad", "energy"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)
    first = json.loads(proc.stdout.readline())  # real-time pace: speech has started, far from its end
    assert first["type"] == "speech_start"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert time.monotonic() - sent < 5.0 + 2.0  # pipeline.drain_timeout_s plus start-up slack
    types = [json.loads(line)["type"] for line in out.splitlines()]
    assert types[-4:] == ["speech_end", "final", "emotion", "language"]


def test_sighup_reloads_the_log_level_and_keeps_running(model, tmp_path):
    import os
    import signal
    import sys
    import time


    config = tmp_path / "c.yaml"
    config.write_text(f"recognizer:\n  model_dir: {model}\nvad:\n  kind: energy\nlogging:\n  level: warning\n",
                      encoding="utf-8")
    wav = write_wav(tmp_path / "long.wav", np.concatenate([silence(0.3), burst(3.0), silence(3.0)]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--input", str(wav)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert json.loads(proc.stdout.readline())["type"] == "speech_start"
    config.write_text(config.read_text(encoding="utf-8").replace("warning", "info").replace(
        "kind: energy", "kind: energy\n  threshold: 0.6"), encoding="utf-8")
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "reload: log level applied; changes to vad need a restart" in err
    assert json.loads(out.splitlines()[-1])["type"] == "language"


def test_pipeline_keeps_no_state_per_finished_utterance(model):
    """A daemon runs for months: bookkeeping for ended utterances must not accumulate."""
    import threading

    from agent.audio import FileSource
    from agent.events import Emitter
    from agent.listening import EnergyVad, Segmenter
    from agent.pipeline.live import LivePipeline
    from agent.pipeline.settings import PipelineSettings
    from agent.recognizer import load_recognizer
    from agent.recognizer.settings import RecognizerSettings

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        parts = [silence(0.3)]
        for i in range(4):
            parts += [burst(0.8, seed=i), silence(0.8)]
        wav = write_wav(Path(tmp) / "four.wav", np.concatenate(parts))
        events = []

        class Collect:
            publish, close = staticmethod(events.append), staticmethod(lambda: None)

        pipeline = LivePipeline(FileSource(str(wav), realtime=False), Segmenter(EnergyVad()),
                                load_recognizer(RecognizerSettings(model_dir=str(model), warmup=False)),
                                Emitter("dev", "00000000", [Collect]), PipelineSettings())
        assert pipeline.run(threading.Event())
    assert sum(e.event.type == "final" for e in events) == 4
    assert pipeline.listener._silence_at == {} and not pipeline.listener.pending_finals()


def test_each_log_record_is_written_once(model, tmp_path):
    wav = write_wav(tmp_path / "a.wav", np.concatenate([silence(0.3), burst(1.0), silence(1.0)]))
    proc = run("run", "--input", str(wav), "--model", str(model), "--vad", "energy", "--fast")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    for marker in ("configuration: ", "listening on ", "EVENT=final"):
        assert sum(marker in line for line in lines) == 1, (marker, proc.stderr)
    assert f"configuration: {ROOT / 'config.yaml'}" not in proc.stderr  # the relative path it found
    assert any(line.startswith("INFO agent.app: configuration: config.yaml") for line in lines), proc.stderr


def test_events_stay_out_of_the_journal(model, tmp_path):
    """Under systemd stdout is the journal: events (speech text) are not written there unless asked."""
    import os
    import sys

    wav = write_wav(tmp_path / "a.wav", np.concatenate([silence(0.3), burst(1.0), silence(1.0)]))
    out_path = tmp_path / "stdout"
    with open(out_path, "w") as out:
        st = os.fstat(out.fileno())
        env = {**os.environ, "PYTHONPATH": str(ROOT), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        env.pop("STT_AGENT_CONFIG", None)
        args = [sys.executable, "-m", "agent", "run", "--input", str(wav), "--model", str(model), "--vad",
                "energy", "--fast"]
        proc = subprocess.run(args, stdout=out, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert out_path.read_text() == ""
        assert "events go nowhere: mqtt.enabled is false" in proc.stderr
        forced = subprocess.run(args + ["--events", "-"], stdout=out, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env=env, timeout=60)
    assert forced.returncode == 0, forced.stderr
    assert "final" in [json.loads(line)["type"] for line in out_path.read_text().splitlines()]


def test_events_mqtt_without_mqtt_is_refused_before_the_model_loads(tmp_path):
    proc = run("run", "--input", str(tmp_path / "a.wav"), "--model", str(tmp_path / "no-model"), "--events", "mqtt")
    assert proc.returncode == 78
    assert proc.stderr.strip() == ("error: --events mqtt: mqtt.enabled is false; set it to true (and mqtt.host) "
                                   "in the config")
    assert run("run", "--events", "stdout").returncode == 2


def test_closed_stdin_is_one_line(model):
    import os
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "agent", "run", "--input", "-", "--model", str(model), "--vad",
                           "energy"], stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=60, preexec_fn=lambda: os.close(0))
    assert proc.returncode == 66, proc.stderr
    assert proc.stderr.splitlines()[-1] == ("error: stdin: standard input is closed (--input - reads raw PCM or a "
                                            "WAV stream from it)")
    assert "Traceback" not in proc.stderr


def test_a_wav_piped_into_stdin_keeps_its_rate(model, tmp_path):
    """`arecord -f S16_LE -r 8000 | stt-agent run --input -`: the header says 8 kHz; times must not stretch."""
    import os
    import sys

    audio = np.concatenate([silence(0.5), burst(1.0), silence(1.0)])
    wav = write_wav(tmp_path / "a.wav", audio[::2], rate=8000)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(wav, "rb") as stdin:
        proc = subprocess.run([sys.executable, "-m", "agent", "run", "--input", "-", "--model", str(model), "--vad",
                               "energy"], stdin=stdin, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    events = events_of(proc)
    end = next(e for e in events if e["type"] == "speech_end")
    assert end["at"] == pytest.approx(1.5 + 0.2, abs=0.1)


def run_on_fifo(model, tmp_path):
    """(the named pipe, `stt-agent run` reading it): a mic-less box's input."""
    import os
    import sys

    fifo = tmp_path / "audio"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--input", str(fifo), "--model", str(model),
                             "--vad", "energy"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return fifo, proc


def test_a_named_pipe_feeds_the_service_across_writers(model, tmp_path):
    """A mic-less box: audio.input is a FIFO; each writer's speech gets its final; SIGTERM ends it."""
    import signal
    import time

    fifo, proc = run_on_fifo(model, tmp_path)
    try:
        for seed in (0, 1):
            pcm = np.concatenate([silence(0.3), burst(1.0, seed=seed), silence(0.8)]).astype("<i2").tobytes()
            with open(fifo, "wb") as out:  # blocks until the agent opens the pipe
                out.write(pcm)
            time.sleep(0.5)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    finals = [json.loads(line) for line in out.splitlines() if json.loads(line)["type"] == "final"]
    assert len(finals) == 2 and all(f["text"].startswith(tm.PATTERN_TEXT) for f in finals)


def test_a_final_that_cannot_be_decoded_is_reported_not_lost(model, tmp_path):
    """Before: speech_start and speech_end, then silence: no final and no error."""
    import threading

    from agent.audio import FileSource
    from agent.events import Emitter
    from agent.listening import EnergyVad, Segmenter
    from agent.pipeline.live import LivePipeline
    from agent.pipeline.settings import PipelineSettings
    from agent.recognizer import load_recognizer
    from agent.recognizer.settings import RecognizerSettings

    recognizer = load_recognizer(RecognizerSettings(model_dir=str(model), warmup=False))

    class BreaksOnTheFirstUtterance:
        def __init__(self):
            self.calls = 0

        def __getattr__(self, name):
            return getattr(recognizer, name)

        def recognize_batch(self, audios, options=None, offsets=None, cancel=None):
            self.calls += 1
            if len(audios[0]) < 16000 * 1.2:  # the first, shorter utterance
                raise RuntimeError("the runtime failed")
            return recognizer.recognize_batch(audios, options, offsets, cancel=cancel)

    wav = write_wav(tmp_path / "two.wav", np.concatenate([silence(0.3), burst(0.6), silence(1.0), burst(1.5, seed=1),
                                                          silence(1.0)]))
    got = []

    class Collect:
        publish, close = staticmethod(got.append), staticmethod(lambda: None)

    pipeline = LivePipeline(FileSource(str(wav), realtime=False), Segmenter(EnergyVad()), BreaksOnTheFirstUtterance(),
                            Emitter("dev", "00000000", [Collect]), PipelineSettings(speculative_final=False))
    assert pipeline.run(threading.Event())
    by_type = [(s.event.type, getattr(s.event, "utterance_id", None)) for s in got if s.event.type != "partial"]
    assert ("error", 1) in by_type and ("final", 2) in by_type and ("final", 1) not in by_type
    problem = next(s.event for s in got if s.event.type == "error")
    assert (problem.source, problem.code) == ("pipeline", "decode_failed") and "the runtime failed" in problem.message


def test_a_reader_that_goes_away_stops_the_run_quietly(model, tmp_path):
    """`stt-agent run | head -3`: exit 141 like any command in a pipeline, no traceback, no endless listening."""
    import os
    import sys

    wav = write_wav(tmp_path / "a.wav", np.concatenate([silence(0.3), burst(1.0), silence(1.0)] * 3))
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "agent", "run", "--input", str(wav), "--model", str(model), "--vad",
                           "energy"], stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                          timeout=60)
    os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr


def test_sigterm_while_stdin_stays_open_exits_cleanly(model):
    """A daemon thread blocked in sys.stdin.buffer's read aborted the interpreter at exit (SIGABRT, 6 of 10)."""
    import os
    import signal
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--input", "-", "--model", str(model), "--vad",
                                 "energy"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                cwd=ROOT, env=env)
        try:
            proc.stdin.write(silence(1.0).astype("<i2").tobytes())
            proc.stdin.flush()
            time.sleep(1.5)  # loaded, reading stdin, which stays open
            proc.send_signal(signal.SIGTERM)
            err = proc.communicate(timeout=20)[1].decode()
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err[-500:]
        assert "Fatal Python error" not in err


def test_a_pipe_writer_that_leaves_ends_its_utterance_at_once(model, tmp_path):
    """The writer closes mid-speech: its final comes now, not glued onto the next writer's audio."""
    import signal
    import time

    fifo, proc = run_on_fifo(model, tmp_path)
    try:
        with open(fifo, "wb") as out:
            out.write(np.concatenate([silence(0.3), burst(1.0)]).astype("<i2").tobytes())  # no silence after
        lines = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any('"final"' in line for line in lines):
            lines.append(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    events = [json.loads(line) for line in lines + out.splitlines() if line.strip()]
    end = next(e for e in events if e["type"] == "speech_end")
    assert end["reason"] == "gap" and any(e["type"] == "final" for e in events)


@pytest.mark.parametrize("shared, expected", [(False, [1, 1]), (True, [1])])
def test_a_pause_between_words_gets_no_speculative_decode_on_a_shared_model(model, tmp_path, shared, expected):
    """A 96 ms pause inside an utterance: alone on the model a stream speculates at every silence; sharing
    it, only a silence longer than speculative_after_ms (the real end) does."""
    import threading

    from agent.audio.file_source import FileSource
    from agent.events import Emitter
    from agent.listening.segmenter import Segmenter
    from agent.listening.vad import EnergyVad
    from agent.pipeline.live import LivePipeline
    from agent.pipeline.scheduler import DecodeScheduler
    from agent.pipeline.settings import PipelineSettings
    from agent.recognizer import load_recognizer
    from agent.recognizer.settings import RecognizerSettings

    wav = write_wav(tmp_path / "pause.wav", np.concatenate([silence(0.3), burst(0.8), silence(0.096),
                                                            burst(0.8, seed=1), silence(1.0)]))

    class Collect:
        publish, close = staticmethod(lambda event: None), staticmethod(lambda: None)

    recognizer = load_recognizer(RecognizerSettings(model_dir=str(model), warmup=False))
    decoder = DecodeScheduler(lambda audios, options, offsets, cancel: [recognizer.recognize(a, o, t, cancel=cancel)
                                                                        for a, o, t in zip(audios, options, offsets)])
    if shared:
        decoder.lane(lambda done: None)  # another stream, silent
    decoder.start()
    pipeline = LivePipeline(FileSource(str(wav), realtime=False), Segmenter(EnergyVad()), recognizer,
                            Emitter("dev", "00000000", [Collect]), PipelineSettings(speculative_after_ms=160),
                            scheduler=decoder)
    requested = []
    lane = pipeline.listener.lane
    real = lane.request_speculative
    lane.request_speculative = lambda utterance, *rest: (requested.append(utterance), real(utterance, *rest))[1]
    try:
        assert pipeline.run(threading.Event())
    finally:
        decoder.stop(5.0)
    assert requested == expected
