"""OpenAI's audio API, driven by the official `openai` package (what Open WebUI, n8n and Pipecat use): every
response_format, stream=true, models, translations, and the multipart edge cases with their statuses."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest

import tiny_models as tm
from helpers import start_serve, write_wav
from mosquitto_fixture import free_port

openai = pytest.importorskip("openai")

TOKEN = "0123456789abcdef0123456789abcdef"
RATE = 16000


def talk(seed=0, turns=2):
    rng = np.random.default_rng(seed)
    parts = [np.zeros(int(0.3 * RATE))]
    for _ in range(turns):
        parts += [rng.standard_normal(RATE) * 6000, np.zeros(int(1.2 * RATE))]
    return np.concatenate(parts)


class Serve:
    def __init__(self, tmp, model, **http):
        self.port = free_port()
        tokens = tmp / "tokens"
        tokens.write_text(f"{TOKEN}\n", encoding="utf-8")
        options = {"max_upload_bytes": 4 * 1024 * 1024, "max_upload_s": 600, **http}
        config = tmp / "serve.yaml"
        config.write_text(f"recognizer:\n  model_dir: {model}\nvad:\n  kind: energy\nserver:\n  host: 127.0.0.1\n"
                          f"  port: {self.port}\n  tokens_file: {tokens}\n  http:\n"
                          + "".join(f"    {k}: {v}\n" for k, v in options.items()), encoding="utf-8")
        self.proc = start_serve(config, self.port)

    def client(self, key=TOKEN):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, max_retries=0)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()[1]


@pytest.fixture(scope="module")
def serve(tmp_path_factory, model):
    server = Serve(tmp_path_factory.mktemp("openai"), model)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("clip") / "two.wav", talk(1))


def test_json_carries_the_text_and_our_labels(serve, clip):
    with open(clip, "rb") as f:
        result = serve.client().audio.transcriptions.create(model="whisper-1", file=f)
    assert result.text.startswith(tm.PATTERN_TEXT)
    extra = result.model_extra
    assert extra["emotion"] == "happy" and "emotion_scores" in extra and "language_scores" in extra


def test_verbose_json_has_segments_and_words_with_our_fields(serve, clip):
    with open(clip, "rb") as f:
        result = serve.client().audio.transcriptions.create(model="gpt-4o-transcribe", file=f,
                                                            response_format="verbose_json",
                                                            timestamp_granularities=["segment", "word"])
    assert result.language and result.duration == pytest.approx(len(talk(1)) / RATE, abs=0.01)
    assert len(result.segments) == 2  # cut at the pause
    first = result.segments[0]
    assert first.start < first.end <= result.segments[1].start and first.text.startswith(tm.PATTERN_TEXT)
    assert first.model_extra["emotion"] == "happy"
    assert result.words and all(w.start <= w.end for w in result.words)


@pytest.mark.parametrize("fmt, check", [
    ("text", lambda body: body.strip().startswith(tm.PATTERN_TEXT)),
    ("srt", lambda body: body.startswith("1\n00:00:00,") and "\n2\n" in body),
    ("vtt", lambda body: body.startswith("WEBVTT\n\n00:00:00.")),
])
def test_text_and_subtitle_formats(serve, clip, fmt, check):
    with open(clip, "rb") as f:
        body = serve.client().audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)
    assert check(body), body


def test_stream_true_sends_deltas_then_done(serve, clip):
    with open(clip, "rb") as f:
        events = list(serve.client().audio.transcriptions.create(model="gpt-4o-transcribe", file=f, stream=True))
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and kinds.count("transcript.text.delta") == 2
    done = events[-1]
    assert done.text == "".join(e.delta for e in events[:-1]) and done.text.startswith(tm.PATTERN_TEXT)


def test_flac_and_a_language_and_keywords(serve, tmp_path):
    import soundfile

    path = tmp_path / "a.flac"
    soundfile.write(path, np.clip(talk(2, 1), -32768, 32767).astype(np.int16), RATE, format="FLAC")
    with open(path, "rb") as f:
        result = serve.client().audio.transcriptions.create(model="whisper-1", file=f, language="en",
                                                            prompt="Kitchen Light, dimmer")
    assert result.text.startswith(tm.PATTERN_TEXT) and result.model_extra["language"] == "en"


def test_models_lists_what_is_served_and_translations_are_refused(serve, clip):
    client = serve.client()
    ids = {m.id for m in client.models.list()}
    assert {"sensevoice-small", "whisper-1"} <= ids
    with open(clip, "rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.audio.translations.create(model="whisper-1", file=f)
    assert "translat" in str(info.value)


def post(port, body: bytes, content_type: str, token=TOKEN):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/audio/transcriptions", data=body, method="POST",
                                     headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def multipart(fields: dict, file: bytes = None, filename="a.wav") -> tuple:
    boundary = "xYzZY"
    out = b""
    for name, value in fields.items():
        out += f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode()
    if file is not None:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + file + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("case, status, code", [
    ("no file", 400, "missing_file"),
    ("empty file", 400, "empty_file"),
    ("not audio", 415, "unsupported_format"),
    ("too large", 413, "file_too_large"),
    ("bad format", 400, "invalid_value"),
    ("bad language", 400, "unsupported_language"),
    ("wrong key", 401, "invalid_api_key"),
])
def test_edge_cases_get_the_right_status_and_openais_error_shape(serve, clip, case, status, code):
    wav = clip.read_bytes()
    body, content_type = {
        "no file": lambda: multipart({"model": "whisper-1"}),
        "empty file": lambda: multipart({"model": "whisper-1"}, b""),
        "not audio": lambda: multipart({"model": "whisper-1"}, b"%PDF-1.4 not audio at all" * 100, "a.pdf"),
        "too large": lambda: multipart({"model": "whisper-1"}, b"\0" * (5 * 1024 * 1024)),
        "bad format": lambda: multipart({"model": "whisper-1", "response_format": "mp3"}, wav),
        "bad language": lambda: multipart({"model": "whisper-1", "language": "fr"}, wav),
        "wrong key": lambda: multipart({"model": "whisper-1"}, wav),
    }[case]()
    got_status, answer = post(serve.port, body, content_type, token="not-the-key-000000000" if case == "wrong key"
                              else TOKEN)
    assert got_status == status and answer["error"]["code"] == code and answer["error"]["message"], answer


def test_a_two_hour_upload_is_refused_by_its_length_with_one_log_line(tmp_path, model):
    """4 MB of 8 kHz 8-bit mono WAV holds over 2 hours when the header says so: the duration bound answers."""
    server = Serve(tmp_path, model, max_upload_s=3600, max_upload_bytes=64 * 1024 * 1024)
    path = tmp_path / "long.wav"
    import soundfile

    soundfile.write(path, np.zeros(2 * 3600 * 8000 + 8000, np.int16), 8000, subtype="PCM_U8")
    try:
        status, answer = post(server.port, *multipart({"model": "whisper-1"}, path.read_bytes()))
    finally:
        err = server.stop()
    assert status == 413 and answer["error"]["code"] == "audio_too_long" and "3600" in answer["error"]["message"]
    assert sum("refused an API request" in line for line in err.splitlines()) == 1
