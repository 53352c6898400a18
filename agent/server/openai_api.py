"""OpenAI's audio API on the network loop: what Open WebUI, n8n, Pipecat and the `openai` package send.

    POST /v1/audio/transcriptions   multipart: file, model, language, prompt, response_format
                                    (json | text | srt | vtt | verbose_json), timestamp_granularities[],
                                    temperature (ignored), stream, and ours: keywords
    POST /v1/audio/translations     400: SenseVoice transcribes, it does not translate
    GET  /v1/models                 what is served (any model name is accepted: whisper-1 included)

An upload is written to a temporary file as it arrives (bounded by server.http.max_upload_bytes), read
by the same reader as `transcribe` (WAV, FLAC, Ogg, MP3, ...; other containers through ffmpeg when it is
on PATH), cut into utterances by the VAD and segmenter a second at a time (bounded memory at any length),
and decoded on the shared decoder below every live stream (agent/pipeline/scheduler.py: uploads).
Errors are OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
from http import HTTPStatus
from typing import TYPE_CHECKING, Dict, List, Optional

from aiohttp import web

from agent.audio.format import RATE
from agent.errors import AgentError
from agent.server import auth
from agent.server.ingest import RETRY_AFTER_S, peer_of, token_of

if TYPE_CHECKING:
    from agent.server.loop import NetworkLoop

log = logging.getLogger(__name__)
MODEL_ID = "sensevoice-small"
ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
LANGUAGES = ("zh", "en", "ja", "ko", "yue")
MAX_FIELD_BYTES = 64 * 1024
# Utterances decoding at once per request: each at most segmenter.max_utterance_s (20 s, 1.3 MB as float32),
# so a 2-hour upload holds a few MB, and the segmenter runs while the model decodes.
IN_FLIGHT = 8
# Containers libsndfile does not read, converted by ffmpeg when it is installed.
FFMPEG_TIMEOUT_S = 600


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str, code: str, param: Optional[str] = None,
                 kind: str = "invalid_request_error", headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind, self.headers = (status, message, code, param,
                                                                                     kind, headers)

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status.value, headers=self.headers)


class OpenAiApi:
    def __init__(self, net: "NetworkLoop", tokens):
        self.net = net
        self.tokens = tokens
        self.requests: Dict[str, int] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/audio/transcriptions", self.transcriptions)
        app.router.add_post("/v1/audio/translations", self.translations)
        app.router.add_get("/v1/models", self.models)

    # ------------------------------------------------------------------ routes
    async def models(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
        except ApiError as exc:
            return exc.response()
        created = int(self.net.started_at)
        data = [{"id": name, "object": "model", "created": created, "owned_by": "stt-agent"}
                for name in (MODEL_ID, *ALIASES)]
        return web.json_response({"object": "list", "data": data})

    async def translations(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
            raise ApiError(HTTPStatus.BAD_REQUEST, "translations are not served: SenseVoiceSmall transcribes in the "
                                                   "language spoken; use /v1/audio/transcriptions", "unsupported")
        except ApiError as exc:
            return exc.response()

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        admission, path = None, None
        try:
            self._authorize(request)
            admission = self.net.registry.admit()
            if admission is None:
                raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"the server takes {self.net.s.max_streams} streams "
                               "and requests at once; try again later", "server_busy", kind="server_error",
                               headers={"Retry-After": RETRY_AFTER_S})
            fields, path = await self._receive(request)
            form = _Form(fields)
            if form.stream:
                return await self._stream(request, form, path)
            parts, duration = await self._transcribe(path, form)
            return self._answer(form, parts, duration)
        except ApiError as exc:
            self.net.http_refused(exc.code, peer_of(request), exc.message)
            return exc.response()
        finally:
            if admission is not None:
                admission.release()
            if path is not None:
                _remove(path)

    # ------------------------------------------------------------------ the request
    def _authorize(self, request: web.Request) -> None:
        if self.tokens is None:
            return
        verdict = self.tokens.check("openai", token_of(request))
        if verdict != auth.OK:
            raise ApiError(HTTPStatus.UNAUTHORIZED, "a valid API key is needed (Authorization: Bearer KEY, a token "
                                                    "of server.tokens_file)", "invalid_api_key",
                           headers={"WWW-Authenticate": 'Bearer realm="stt-agent"'})

    async def _receive(self, request: web.Request):
        """(fields, path of the uploaded file): the file streamed to disk, at most max_upload_bytes."""
        limit = self.net.s.http.max_upload_bytes
        if request.content_length is not None and request.content_length > limit + MAX_FIELD_BYTES * 16:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the upload is {request.content_length} bytes; "
                           f"this server takes at most {limit} (server.http.max_upload_bytes)", "file_too_large", "file")
        if not request.content_type.startswith("multipart/"):
            raise ApiError(HTTPStatus.BAD_REQUEST, "send multipart/form-data with a `file` field", "invalid_request",
                           "file")
        fields: Dict[str, List[str]] = {}
        path, size = None, 0
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                name = part.name or ""
                if name == "file":
                    if path is not None:
                        raise ApiError(HTTPStatus.BAD_REQUEST, "one `file` per request", "invalid_request", "file")
                    fd, path = tempfile.mkstemp(prefix="stt-agent-upload-", suffix=_suffix(part.filename))
                    with os.fdopen(fd, "wb") as out:
                        while chunk := await part.read_chunk(1 << 16):
                            size += len(chunk)
                            if size > limit:
                                raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the file is over {limit} bytes "
                                               "(server.http.max_upload_bytes)", "file_too_large", "file")
                            out.write(chunk)
                else:
                    value = await part.read(decode=True)
                    if len(value) > MAX_FIELD_BYTES:
                        raise ApiError(HTTPStatus.BAD_REQUEST, f"field {name[:40]!r} is over {MAX_FIELD_BYTES} bytes",
                                       "invalid_request", name[:40])
                    fields.setdefault(name, []).append(value.decode("utf-8", "replace"))
        except ApiError:
            if path is not None:
                _remove(path)
            raise
        except (ValueError, AssertionError, UnicodeDecodeError) as exc:  # a malformed multipart body
            if path is not None:
                _remove(path)
            raise ApiError(HTTPStatus.BAD_REQUEST, f"the multipart body cannot be read: {exc}"[:300],
                           "invalid_request") from None
        if path is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, "no `file` field: send the audio as the multipart field `file`",
                           "missing_file", "file")
        if size == 0:
            _remove(path)
            raise ApiError(HTTPStatus.BAD_REQUEST, "the file is empty", "empty_file", "file")
        return fields, path

    async def _transcribe(self, path: str, form: "_Form", on_part=None):
        """The upload's timed parts, decoded on the shared decoder; (parts, duration in seconds)."""
        loop = asyncio.get_running_loop()
        audio = await loop.run_in_executor(None, self._open, path)
        try:
            duration = audio.duration
            limit = self.net.s.http.max_upload_s
            if duration > limit:
                raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the audio is {duration:.0f} s long; this server "
                               f"takes at most {limit:g} s (server.http.max_upload_s)", "audio_too_long", "file")
            options = self._options(form)
            return await self._decode(audio, options, on_part), duration
        finally:
            audio.close()

    def _open(self, path: str):
        """The upload as an audio file (AudioFile: WAV, FLAC, Ogg, MP3, ...), or converted by ffmpeg."""
        from agent.audio_file import AudioFile, AudioFileError, accepted_formats

        try:
            return AudioFile(path)
        except AudioFileError as first:
            ffmpeg = shutil.which("ffmpeg")
            if ffmpeg is None:
                raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"the file is not audio this server reads "
                               f"({str(first).split(': ', 1)[-1].split(';')[0]}); accepted: {accepted_formats()}; "
                               "other containers (webm, m4a, mp4) need ffmpeg on the server", "unsupported_format",
                               "file") from None
            converted = path + ".wav"
            import subprocess

            done = subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", path, "-ar", str(RATE),
                                   "-ac", "1", converted], capture_output=True, timeout=FFMPEG_TIMEOUT_S)
            if done.returncode != 0:
                _remove(converted)
                raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "the file is not audio ffmpeg can read: "
                               f"{done.stderr.decode('utf-8', 'replace').strip()[-200:]}", "unsupported_format",
                               "file") from None
            os.replace(converted, path)
            try:
                return AudioFile(path)
            except AudioFileError as exc:
                raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, str(exc), "unsupported_format", "file") from None

    def _options(self, form: "_Form"):
        language = form.language or "auto"
        try:
            return self.net.options(language, form.languages, hotwords=[(p, 1.0) for p in form.phrases])
        except AgentError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(exc), "unsupported_language", "language") from None

    async def _decode(self, audio, options, on_part) -> list:
        """Segments as the VAD cuts them (on a thread), each decoded as an upload; at most IN_FLIGHT at once."""
        from agent.offline.segments import segments_of
        from agent.offline.transcript import TimedText

        loop = asyncio.get_running_loop()
        segments = iter(segments_of(audio, self.net.segmenter(1, self.net.settings.segmenter)))
        pending, parts = [], []

        def next_segment():
            return next(segments, None)

        exhausted = False
        while not exhausted or pending:
            while not exhausted and len(pending) < IN_FLIGHT:
                try:
                    segment = await loop.run_in_executor(None, next_segment)
                except AgentError as exc:  # the file turned out unreadable part way
                    raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc), "unreadable_audio", "file") from None
                if segment is None:
                    exhausted = True
                    break
                future = asyncio.wrap_future(self.net.decoder.upload(segment.audio, options, segment.start))
                pending.append((segment, future))
            if pending:
                segment, future = pending.pop(0)
                try:
                    result = await future
                except RuntimeError as exc:  # the decoder is stopping
                    raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc), "server_stopping",
                                   kind="server_error") from None
                part = TimedText(segment.start / RATE, segment.end / RATE, result)
                parts.append(part)
                if on_part is not None:
                    await on_part(part)
        return parts

    # ------------------------------------------------------------------ answers
    def _answer(self, form: "_Form", parts: list, duration: float) -> web.Response:
        from agent.offline import transcript

        whole = transcript.whole(parts, duration)
        fmt = form.response_format
        if fmt == "text":
            return web.Response(text=whole.text + "\n", content_type="text/plain")
        if fmt in ("srt", "vtt"):
            body = (transcript.srt if fmt == "srt" else transcript.vtt)(parts)
            return web.Response(text=body, content_type="text/plain" if fmt == "srt" else "text/vtt")
        body = {"text": whole.text, **_ours(whole)}
        if fmt == "verbose_json":
            body = {"task": "transcribe", "language": whole.language, "duration": round(duration, 3), **body}
            if "segment" in form.granularities or not form.granularities:
                body["segments"] = [_segment(i, p) for i, p in enumerate(parts)]
            if "word" in form.granularities:
                body["words"] = [{"word": t.text.strip(), "start": round(t.start, 3), "end": round(t.end, 3)}
                                 for p in parts for t in p.result.tokens if t.text.strip()]
        body["usage"] = {"type": "duration", "seconds": round(duration, 3)}
        return web.json_response(body, dumps=lambda o: json.dumps(o, ensure_ascii=False))

    async def _stream(self, request: web.Request, form: "_Form", path: str) -> web.StreamResponse:
        """stream=true: server-sent events, a transcript.text.delta per utterance, then transcript.text.done."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        started = False
        sent: List[str] = []

        async def event(body: dict):
            nonlocal started
            if not started:
                started = True
                await response.prepare(request)
            await response.write(f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode())

        async def on_part(part):
            from agent.offline.transcript import join_texts

            if part.result.text.strip():
                text = join_texts([*sent, part.result.text])
                delta = text[len(join_texts(sent)):]
                sent.append(part.result.text)
                await event({"type": "transcript.text.delta", "delta": delta})

        try:
            parts, duration = await self._transcribe(path, form, on_part)
        except ApiError as exc:
            if not started:
                raise
            await event({"type": "error", "error": {"message": exc.message, "type": exc.kind, "code": exc.code}})
            await response.write_eof()
            return response
        from agent.offline import transcript

        whole = transcript.whole(parts, duration)
        await event({"type": "transcript.text.done", "text": whole.text, **_ours(whole),
                     "usage": {"type": "duration", "seconds": round(duration, 3)}})
        await response.write_eof()
        return response


class _Form:
    """The multipart fields, checked: OpenAI's names and types, a clear 400 for each that is wrong."""

    def __init__(self, fields: Dict[str, List[str]]):
        one = {k: v[-1].strip() for k, v in fields.items()}
        self.model = one.get("model") or MODEL_ID  # any name is accepted: it names this server's one model
        self.response_format = one.get("response_format") or "json"
        if self.response_format not in RESPONSE_FORMATS:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"response_format {self.response_format[:40]!r} is not one of "
                                                   f"{', '.join(RESPONSE_FORMATS)}", "invalid_value", "response_format")
        self.language = _language(one.get("language"), "language")
        listed = fields.get("languages[]", []) + fields.get("languages", [])
        self.languages = tuple(dict.fromkeys(_language(x, "languages") for v in listed for x in _split(v)))
        granularities = fields.get("timestamp_granularities[]", []) + fields.get("timestamp_granularities", [])
        self.granularities = {g.strip() for v in granularities for g in _split(v)}
        bad = self.granularities - {"segment", "word"}
        if bad:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"timestamp_granularities: {sorted(bad)[0][:20]!r} is not segment "
                                                   "or word", "invalid_value", "timestamp_granularities")
        stream = one.get("stream", "false").lower()
        if stream not in ("true", "false", "1", "0", ""):
            raise ApiError(HTTPStatus.BAD_REQUEST, "stream is true or false", "invalid_value", "stream")
        self.stream = stream in ("true", "1")
        if self.stream and self.response_format not in ("json", "text"):
            raise ApiError(HTTPStatus.BAD_REQUEST, "stream=true gives transcript.text events: use response_format "
                                                   "json or text", "invalid_value", "stream")
        temperature = one.get("temperature")
        if temperature:
            try:
                float(temperature)  # accepted and ignored: the decode is greedy
            except ValueError:
                raise ApiError(HTTPStatus.BAD_REQUEST, "temperature is a number", "invalid_value",
                               "temperature") from None
        keywords = fields.get("keywords[]", []) + fields.get("keywords", [])
        self.phrases = [p for v in keywords + [one.get("prompt", "")] for p in _split(v)][:1000]


def _split(value: str) -> List[str]:
    """A field's comma- or line-separated items (a JSON list is taken too, as some clients send it)."""
    value = value.strip()
    if value.startswith("["):
        try:
            items = json.loads(value)
            if isinstance(items, list):
                return [str(x).strip()[:200] for x in items if str(x).strip()]
        except ValueError:
            pass
    return [p.strip()[:200] for line in value.splitlines() for p in line.split(",") if p.strip()]


def _language(value: Optional[str], param: str) -> Optional[str]:
    if not value:
        return None
    code = value.lower().replace("_", "-").split("-")[0]
    if code == "auto":
        return None
    if code not in LANGUAGES:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{param}: {value[:20]!r} is not a language SenseVoiceSmall knows "
                                               f"({', '.join(LANGUAGES)}; or none: detected)", "unsupported_language",
                       param)
    return code


def _ours(r) -> dict:
    """What OpenAI's response does not have and this model gives: labels and their scores."""
    return {"language": r.language, "language_scores": _rounded(r.language_scores), "emotion": r.emotion,
            "emotion_scores": _rounded(r.emotion_scores), "event": r.event, "event_scores": _rounded(r.event_scores),
            "confidence": round(r.confidence, 4),
            **({"hotwords_matched": list(r.hotwords_matched)} if r.hotwords_matched else {})}


def _segment(i: int, part) -> dict:
    r = part.result
    return {"id": i, "seek": int(part.start * 100), "start": round(part.start, 3), "end": round(part.end, 3),
            "text": r.text, "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 1.0,
            "no_speech_prob": round(r.language_scores.get("nospeech", 0.0), 4), **_ours(r)}


def _rounded(scores: dict) -> dict:
    return {k: round(v, 4) for k, v in scores.items()}


def _suffix(filename: Optional[str]) -> str:
    ext = os.path.splitext(filename or "")[1].lower()
    return ext if ext.isascii() and 1 < len(ext) <= 6 and ext[1:].isalnum() else ""


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

