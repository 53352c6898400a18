"""OpenAI's realtime transcription WebSocket: `GET /v1/realtime?intent=transcription`, as LiveKit, Pipecat and
the `openai` package's realtime client speak it, on the shared recognizer (one more stream per connection).

    session.update (GA: session.type "transcription", audio.input.format / transcription / turn_detection)
    transcription_session.update (beta: input_audio_format, input_audio_transcription, turn_detection)
                                                -> session.updated / transcription_session.updated
    input_audio_buffer.append (base64 PCM16 at the session's rate, 24 kHz unless set; or G.711 at 8 kHz)
    (server_vad, the default: our VAD and segmenter)
                                                -> input_audio_buffer.speech_started / speech_stopped,
                                                   input_audio_buffer.committed, conversation.item.created
    (partials)                                  -> conversation.item.input_audio_transcription.delta (new text)
    (the final)                                 -> conversation.item.input_audio_transcription.completed
    input_audio_buffer.commit                   -> the open turn ends now (turn_detection null: the buffer)
    input_audio_buffer.clear                    -> input_audio_buffer.cleared

`completed` carries OpenAI's fields plus ours (language, language_scores, emotion, emotion_scores, event,
event_scores, confidence, timing); clients ignore keys they do not know. The same utterances reach MQTT
under the session's device id. Errors are OpenAI's `error` events ({"type", "code", "message", "param"}).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import secrets
from http import HTTPStatus
from typing import TYPE_CHECKING, Optional

import numpy as np
from aiohttp import WSMsgType, web

from agent.audio.format import ALAW, RATE, ULAW, Resampler, g711_to_float, pcm_to_float
from agent.events import Stamped
from agent.pipeline.listener import Listener
from agent.server import auth
from agent.server.ingest import RETRY_AFTER_S, peer_of, token_of
from agent.server.stream import SESSION_LIMIT_CODE, EventRelay, NetworkStream, SessionLimit

if TYPE_CHECKING:
    from agent.server.loop import NetworkLoop

log = logging.getLogger(__name__)
PATH = "/v1/realtime"
DEFAULT_RATE = 24000  # OpenAI's pcm16 is 24 kHz unless the session says otherwise
G711_RATE = 8000
FORMATS = {"pcm16": None, "audio/pcm": None, "g711_ulaw": ULAW, "audio/pcmu": ULAW, "g711_alaw": ALAW,
           "audio/pcma": ALAW}
# The language codes OpenAI clients send, and the model's for each (ISO 639-1, plus what SenseVoice calls yue).
LANGUAGES = {"zh": "zh", "en": "en", "ja": "ja", "ko": "ko", "yue": "yue"}


class RealtimeError(ValueError):
    def __init__(self, code: str, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


class Realtime:
    def __init__(self, net: "NetworkLoop", tokens):
        self.net = net
        self.tokens = tokens
        self.sessions = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        net = self.net
        peer = peer_of(request)
        device_id = request.query.get("device_id") or ""
        if device_id:
            problem = auth.device_problem(device_id)
            if problem:
                return net.refuse(HTTPStatus.BAD_REQUEST, "bad_device", peer, device_id[:64],
                                  f"the device id {problem}")
        if self.tokens is not None:
            verdict = self.tokens.check(device_id or "realtime", token_of(request))
            if verdict != auth.OK:
                status = HTTPStatus.FORBIDDEN if verdict == auth.OTHER_DEVICE else HTTPStatus.UNAUTHORIZED
                return net.refuse(status, "unauthorized" if status == HTTPStatus.UNAUTHORIZED else "forbidden", peer,
                                  device_id, "a valid API key is needed (Authorization: Bearer KEY, a token of "
                                             "server.tokens_file)", headers={"WWW-Authenticate": 'Bearer realm="stt-agent"'})
        intent = request.query.get("intent", "transcription")
        if intent != "transcription":
            return net.refuse(HTTPStatus.BAD_REQUEST, "bad_intent", peer, device_id,
                              f"intent {intent[:40]!r}: this server transcribes only (?intent=transcription)")
        if net.stopping:
            return net.refuse(HTTPStatus.SERVICE_UNAVAILABLE, "stopping", peer, device_id, "the server is stopping",
                              headers={"Retry-After": RETRY_AFTER_S})
        admission = net.registry.admit(device_id or None)
        if admission is None:
            return net.refuse(HTTPStatus.SERVICE_UNAVAILABLE, "full", peer, device_id,
                              f"the server takes {net.s.max_streams} streams at once; try again later",
                              headers={"Retry-After": RETRY_AFTER_S})
        try:
            ws = web.WebSocketResponse(max_msg_size=max(net.s.max_frame_bytes * 2, 1 << 20), timeout=3.0)
            await ws.prepare(request)
            if device_id:
                claim = await net.registry.claim(device_id)
            else:
                claim = await net.registry.claim_free("realtime-" + "".join(
                    c if c.isalnum() else "-" for c in peer.rsplit(":", 1)[0]))
            self.sessions += 1
            session = _Session(self, ws, claim, peer, beta="realtime=v1" in request.headers.get("OpenAI-Beta", ""))
            net.connections[claim] = asyncio.current_task()
            try:
                await session.run()
            finally:
                net.connections.pop(claim, None)
            return ws
        finally:
            admission.release()


class _Session:
    """One realtime connection: its format, its turns, and the events it owes the client."""

    def __init__(self, realtime: Realtime, ws: web.WebSocketResponse, claim, peer: str, beta: bool):
        self.realtime = realtime
        self.net = realtime.net
        self.ws = ws
        self.claim = claim
        self.peer = peer
        self.beta = beta  # answer in the beta dialect until the client speaks GA
        self.id = "sess_" + secrets.token_hex(8)
        self.format = "pcm16"
        self.rate = DEFAULT_RATE
        self.language: Optional[str] = None
        self.prompt: Optional[str] = None
        self.model = "whisper-1"
        self.turn_detection: Optional[dict] = {"type": "server_vad"}
        self.stream: Optional[NetworkStream] = None
        self._resample = Resampler(self.rate)
        self._loop = asyncio.get_running_loop()
        self._relay = EventRelay(self._loop, ("speech_start", "speech_end", "partial", "final", "error"),
                                 self._on_event, "realtime")  # the streams' events, in seq order
        self._event_ids = itertools.count(1)
        self._items: dict = {}  # utterance id -> item id
        self._previous_item: Optional[str] = None
        self._streamed: dict = {}  # item id -> transcript text sent as deltas
        self._manual: list = []  # turn_detection null: audio since the last commit
        self._manual_start = 0  # stream position of the buffer's first sample
        self._position = 0

    # ------------------------------------------------------------------ the connection
    async def run(self) -> None:
        claim, net = self.claim, self.net
        code, reason = 1000, "the client closed the connection"
        try:
            if not claim.ended.is_set():
                claim.emitter.attach(self._relay)  # every stream of this session speaks through the device's
                self._open_stream(claim.first_utterance_id)
                await self._send(("transcription_session.created" if self.beta else "session.created"),
                                 session=self._session_object())
                code, reason = await self._until_ended()
            else:
                code, reason = claim.end_code, claim.end_reason
        finally:
            if self.stream is not None:
                s = net.settings
                await self.stream.finish(max(s.pipeline.drain_timeout_s, s.server.idle_timeout_s) + 1)
                await self._relay.settled()  # the last final is sent
                claim.emitter.detach(self._relay)
                if code == SESSION_LIMIT_CODE:  # OpenAI's own error for a session past its maximum duration
                    with contextlib.suppress(ConnectionError):  # the client left meanwhile
                        await self._error("session_expired", reason)
            await self._relay.stop()
            await self.ws.close(code=code, message=reason[:120].encode())
            net.registry.release(claim, self.stream.next_utterance_id if self.stream else claim.first_utterance_id)

    async def _until_ended(self):
        reader = asyncio.ensure_future(self._read())
        ended = asyncio.ensure_future(self.claim.ended.wait())
        try:
            done, _ = await asyncio.wait({reader, ended}, return_when=asyncio.FIRST_COMPLETED)
            return reader.result() if reader in done else (self.claim.end_code, self.claim.end_reason)
        finally:
            reader.cancel()
            ended.cancel()
            await asyncio.gather(reader, ended, return_exceptions=True)

    async def _read(self):
        idle = self.net.s.idle_timeout_s
        limit = SessionLimit(self.net.s.max_session_s, self.net.settings.segmenter.max_utterance_s)
        while True:
            if limit.due() and (await self._at_rest() or limit.overdue()):
                return SESSION_LIMIT_CODE, limit.reason  # session_expired is sent after the last final
            try:
                msg = await self.ws.receive(timeout=idle)
            except asyncio.TimeoutError:
                return 1000, f"no data for server.idle_timeout_s ({idle:g} s)"
            if msg.type == WSMsgType.TEXT:
                try:
                    await self._handle(msg.data)
                except RealtimeError as exc:
                    await self._error(exc.code, exc.message, exc.param)
            elif msg.type == WSMsgType.BINARY:
                await self._error("invalid_request_error", "send JSON text frames (input_audio_buffer.append carries "
                                                           "base64 audio)")
            elif msg.type == WSMsgType.ERROR:
                return self.ws.close_code or 1002, f"the connection failed: {msg.data}"
            else:
                return 1000, "the client closed the connection"

    async def _at_rest(self) -> bool:
        """Between turns: no uncommitted audio (turn_detection null), or the segmenter between utterances."""
        if self.turn_detection is None:
            return not self._manual
        return await self.stream.at_rest()

    def _open_stream(self, first_utterance_id: int) -> None:
        net, claim = self.net, self.claim
        segmenter = net.settings.segmenter
        silence = (self.turn_detection or {}).get("silence_duration_ms")
        if isinstance(silence, int) and not isinstance(silence, bool) and 64 <= silence <= 5000:
            import dataclasses

            segmenter = dataclasses.replace(segmenter, endpoint_silence_ms=silence,
                                            tail_pad_ms=min(segmenter.tail_pad_ms, silence))
        options = net.options(LANGUAGES.get(self.language or "", "auto"),
                              hotwords=[(p, 1.0) for p in _phrases(self.prompt)])
        listener = Listener(net.segmenter(first_utterance_id, segmenter), claim.emitter, net.settings.pipeline,
                            decoder=net.decoder, options=options)
        self.stream = claim.stream = NetworkStream(claim.device_id, self.peer, listener)
        net.stream_opened(self.stream, "OpenAI realtime transcription")

    # ------------------------------------------------------------------ client events
    async def _handle(self, text: str) -> None:
        try:
            event = json.loads(text)
        except (ValueError, RecursionError):
            raise RealtimeError("invalid_request_error", "a client event must be a JSON object") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise RealtimeError("invalid_request_error", "a client event must be a JSON object with a string type")
        kind = event["type"]
        if kind == "input_audio_buffer.append":
            await self._append(event.get("audio"))
        elif kind in ("session.update", "transcription_session.update"):
            await self._update(kind, event.get("session"))
        elif kind == "input_audio_buffer.commit":
            await self._commit()
        elif kind == "input_audio_buffer.clear":
            self._manual, self._manual_start = [], self._position
            self.stream.command({"command": "clear"})
            await self._send("input_audio_buffer.cleared")
        else:
            raise RealtimeError("invalid_request_error", f"{kind[:60]!r} is not served here: this is a transcription "
                                                         "session (session.update, input_audio_buffer.append, commit, "
                                                         "clear)", "type")

    async def _append(self, audio) -> None:
        if not isinstance(audio, str):
            raise RealtimeError("invalid_request_error", "input_audio_buffer.append: audio must be base64", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("invalid_request_error", "input_audio_buffer.append: audio is not base64",
                                "audio") from None
        table = FORMATS[self.format]
        if table is None:
            data = data[: len(data) - len(data) % 2]
            samples = pcm_to_float(data, 2)
        else:
            samples = g711_to_float(data, table)
        samples = self._resample(samples)
        if self.turn_detection is None:
            self._manual.append(samples)
            self._position += len(samples)
            if sum(len(a) for a in self._manual) > self.net.settings.segmenter.max_utterance_s * RATE:
                await self._commit()  # a turn is at most an utterance long: the model's own limit
            return
        self._position += len(samples)
        await self.stream.push(samples)

    async def _commit(self) -> None:
        if self.turn_detection is not None:
            self.stream.command({"command": "end_utterance"})  # committed and transcribed as its turn ends
            return
        if not self._manual:
            raise RealtimeError("input_audio_buffer_commit_empty", "the input audio buffer is empty")
        audio = np.concatenate(self._manual)
        start, self._manual = self._manual_start, []
        self._manual_start = self._position
        utterance = self.stream.listener.take_turn(audio, start)  # decoded as one utterance, no VAD
        item = self._item(utterance)
        await self._committed(item)

    async def _update(self, kind: str, session) -> None:
        if not isinstance(session, dict):
            raise RealtimeError("invalid_request_error", f"{kind}: session must be an object", "session")
        beta = kind == "transcription_session.update"
        if beta:
            fmt = session.get("input_audio_format", self.format)
            rate = DEFAULT_RATE if FORMATS.get(fmt) is None else G711_RATE
            transcription = session.get("input_audio_transcription") or {}
            turn = session["turn_detection"] if "turn_detection" in session else self.turn_detection
        else:
            if session.get("type", "transcription") != "transcription":
                raise RealtimeError("invalid_request_error", "session.type must be \"transcription\" here",
                                    "session.type")
            audio_in = (session.get("audio") or {}).get("input") or {}
            f = audio_in.get("format") or {}
            if not isinstance(f, dict):
                raise RealtimeError("invalid_request_error", "audio.input.format must be an object", "format")
            fmt = f.get("type", self.format)
            rate = f.get("rate", DEFAULT_RATE if FORMATS.get(fmt) is None else G711_RATE)
            transcription = audio_in.get("transcription") or {}
            turn = audio_in["turn_detection"] if "turn_detection" in audio_in else self.turn_detection
        if fmt not in FORMATS:
            raise RealtimeError("invalid_request_error", f"audio format {str(fmt)[:40]!r} is not one of "
                                                         f"{', '.join(FORMATS)}", "format")
        if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 192000:
            raise RealtimeError("invalid_request_error", f"rate {str(rate)[:20]} is not 8000-192000 Hz", "rate")
        if turn is not None and (not isinstance(turn, dict) or turn.get("type", "server_vad") not in
                                 ("server_vad", "semantic_vad")):
            raise RealtimeError("invalid_request_error", "turn_detection is null, or {\"type\": \"server_vad\"}",
                                "turn_detection")
        if not isinstance(transcription, dict):
            raise RealtimeError("invalid_request_error", "transcription must be an object", "transcription")
        language, prompt = transcription.get("language"), transcription.get("prompt")
        if language not in (None, "") and (not isinstance(language, str) or language.lower() not in LANGUAGES):
            raise RealtimeError("invalid_request_error", f"language {str(language)[:20]!r}: the model has "
                                                         f"{', '.join(LANGUAGES)} (or none: detected)", "language")
        if prompt is not None and not isinstance(prompt, str):
            raise RealtimeError("invalid_request_error", "prompt must be a string", "prompt")
        self.beta = beta
        self.format, self.rate, self.turn_detection = fmt, rate, turn
        self.language, self.prompt = (language or "").lower() or None, prompt
        self.model = str(transcription.get("model") or self.model)[:64]
        self._resample = Resampler(rate)
        # The new language, phrases and endpoint apply from here on: a new stream for what follows (what the
        # old one heard is finished and delivered first)
        old, self.stream = self.stream, None
        await old.finish(self.net.settings.pipeline.drain_timeout_s)
        self._open_stream(old.next_utterance_id)
        await self._send("transcription_session.updated" if beta else "session.updated",
                         session=self._session_object())

    def _session_object(self) -> dict:
        transcription = {"model": self.model, "language": self.language, "prompt": self.prompt}
        if self.beta:
            return {"id": self.id, "object": "realtime.transcription_session", "input_audio_format": self.format,
                    "input_audio_transcription": transcription, "turn_detection": self.turn_detection,
                    "modalities": ["text"]}
        fmt = {"type": self.format} if FORMATS[self.format] is not None else {"type": "audio/pcm", "rate": self.rate}
        return {"id": self.id, "object": "realtime.transcription_session", "type": "transcription",
                "audio": {"input": {"format": fmt, "transcription": transcription,
                                    "turn_detection": self.turn_detection}}}

    # ------------------------------------------------------------------ the stream's events (on the loop)
    async def _on_event(self, stamped: Stamped) -> None:
        event = stamped.event
        kind = event.type
        if kind == "speech_start":
            await self._send("input_audio_buffer.speech_started", audio_start_ms=round(event.at * 1000),
                             item_id=self._item(event.utterance_id))
        elif kind == "speech_end":
            item = self._item(event.utterance_id)
            await self._send("input_audio_buffer.speech_stopped", audio_end_ms=round(event.at * 1000), item_id=item)
            await self._committed(item)
        elif kind == "partial":
            item = self._item(event.utterance_id)
            text, sent = event.result.text, self._streamed.get(item, "")
            if text.startswith(sent) and len(text) > len(sent):
                self._streamed[item] = text
                await self._send("conversation.item.input_audio_transcription.delta", item_id=item, content_index=0,
                                 delta=text[len(sent):])
        elif kind == "final":
            await self._completed(event)
        elif kind == "error" and event.utterance_id is not None:
            await self._send("conversation.item.input_audio_transcription.failed",
                             item_id=self._item(event.utterance_id), content_index=0,
                             error={"type": "transcription_error", "code": event.code, "message": event.message})

    async def _committed(self, item: str) -> None:
        await self._send("input_audio_buffer.committed", item_id=item, previous_item_id=self._previous_item)
        self._previous_item = item
        await self._send("conversation.item.created", previous_item_id=None,
                         item={"id": item, "object": "realtime.item", "type": "message", "status": "completed",
                               "role": "user", "content": [{"type": "input_audio", "transcript": None}]})

    async def _completed(self, final) -> None:
        item = self._item(final.utterance_id)
        r = final.result
        sent = self._streamed.pop(item, "")
        if r.text.startswith(sent) and len(r.text) > len(sent):
            await self._send("conversation.item.input_audio_transcription.delta", item_id=item, content_index=0,
                             delta=r.text[len(sent):])
        await self._send(
            "conversation.item.input_audio_transcription.completed", item_id=item, content_index=0,
            transcript=r.text, usage={"type": "duration", "seconds": round(final.audio_end - final.audio_start, 3)},
            language=r.language, language_scores=_rounded(r.language_scores), emotion=r.emotion,
            emotion_scores=_rounded(r.emotion_scores), audio_event=r.event, event_scores=_rounded(r.event_scores),
            confidence=round(r.confidence, 4), utterance_id=final.utterance_id, device_id=self.claim.device_id,
            audio_start=round(final.audio_start, 3), audio_end=round(final.audio_end, 3),
            timing={k: round(v, 1) for k, v in (("decode_ms", final.decode_ms), ("queue_ms", final.queue_ms),
                                               ("endpoint_delay_ms", final.endpoint_delay_ms)) if v is not None},
            **({"hotwords_matched": list(r.hotwords_matched)} if r.hotwords_matched else {}))
        self._items.pop(final.utterance_id, None)

    def _item(self, utterance_id: int) -> str:
        item = self._items.get(utterance_id)
        if item is None:
            item = self._items[utterance_id] = f"item_{self.id[5:]}_{utterance_id}"
        return item

    # ------------------------------------------------------------------ writing
    async def _send(self, kind: str, **fields) -> None:
        await self.ws.send_str(json.dumps({"type": kind, "event_id": f"event_{next(self._event_ids)}", **fields},
                                          ensure_ascii=False))

    async def _error(self, code: str, message: str, param: Optional[str] = None) -> None:
        await self._send("error", error={"type": "invalid_request_error", "code": code, "message": message,
                                         "param": param, "event_id": None})


def _phrases(prompt: Optional[str]) -> list:
    """A prompt's comma- or line-separated phrases (kept with the turn's options for contextual biasing)."""
    if not prompt:
        return []
    parts = [p.strip() for chunk in prompt.splitlines() for p in chunk.split(",")]
    return [p[:200] for p in parts if p][:1000]


def _rounded(scores: dict) -> dict:
    return {k: round(v, 4) for k, v in scores.items()}

