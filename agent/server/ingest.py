"""/ws/stt/{device_id}: a device streams audio in over WebSocket and gets its events back (docs/STREAMING.md).

Refusals come before the upgrade, with an HTTP status: 400 (an unusable device id), 401 (no or wrong
token), 403 (a token bound to another device), 503 with Retry-After (full, the model at capacity, or
stopping). After it, the connection owns its device id (agent/server/devices.py) and feeds a Listener
through a bounded inbox (agent/server/stream.py). Close codes: 1000 (stop, idle),
1001 (the server stops), 1008 (a protocol error, a client that reads none of its events), 1009 (a
message over server.max_frame_bytes), 4000 (replaced by a newer connection of the same device), 4001
(server.max_session_s: reconnect, perhaps to another replica; closed between two utterances).
"""

from __future__ import annotations

import asyncio
import logging
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Optional, Tuple

from aiohttp import WSMsgType, web

from agent.errors import AgentError
from agent.events import Problem
from agent.pipeline.listener import Listener
from agent.server import auth
from agent.server.protocol import AudioDecoder, ProtocolError, StreamFormat, parse_text
from agent.server.stream import SESSION_LIMIT_CODE, NetworkStream, SessionLimit, SocketSink

if TYPE_CHECKING:
    from agent.server.loop import NetworkLoop

log = logging.getLogger(__name__)
PATH_PREFIX = "/ws/stt/"
RETRY_AFTER_S = "30"


class Ingest:
    def __init__(self, net: "NetworkLoop"):
        self.net = net
        self.s = net.settings.server
        self.tokens = auth.Tokens.load(self.s.tokens_file) if self.s.auth == "token" else None

    # ------------------------------------------------------------------ before the upgrade
    async def handle(self, request: web.Request) -> web.StreamResponse:
        net = self.net
        peer = peer_of(request)
        device_id = request.match_info["device_id"]
        problem = auth.device_problem(device_id)
        if problem:
            return net.refuse(HTTPStatus.BAD_REQUEST, "bad_device", peer, device_id[:64], f"the device id {problem}")
        if self.tokens is not None:
            verdict = self.tokens.check(device_id, token_of(request))
            if verdict in (auth.MISSING, auth.WRONG):
                return net.refuse(HTTPStatus.UNAUTHORIZED, "unauthorized", peer, device_id,
                                  "a token is needed (Authorization: Bearer TOKEN, or ?token=TOKEN)"
                                  if verdict == auth.MISSING else "the token is not valid",
                                  headers={"WWW-Authenticate": 'Bearer realm="stt-agent"'})
            if verdict == auth.OTHER_DEVICE:
                return net.refuse(HTTPStatus.FORBIDDEN, "forbidden", peer, device_id,
                                  "this token belongs to another device")
        if net.stopping:
            return net.refuse(HTTPStatus.SERVICE_UNAVAILABLE, "stopping", peer, device_id, "the server is stopping",
                              headers={"Retry-After": RETRY_AFTER_S})
        replacing = net.registry.owner(device_id) is not None
        admission = net.registry.admit(device_id)
        if admission is None:
            return net.refuse(HTTPStatus.SERVICE_UNAVAILABLE, "full", peer, device_id,
                              f"the server takes {self.s.max_streams} streams at once; try again later",
                              headers={"Retry-After": RETRY_AFTER_S})
        try:
            load = net.decoder.load()["finals"]
            if load > self.s.admission_load and not replacing:
                return net.refuse(HTTPStatus.SERVICE_UNAVAILABLE, "busy", peer, device_id,
                                  f"the recognizer is at capacity ({load:.0%} of the last minute on finals); "
                                  "one more stream would slow every stream down",
                                  headers={"Retry-After": RETRY_AFTER_S})
            # timeout: how long a close waits for the client's close frame (aiohttp's default: 10 s)
            ws = web.WebSocketResponse(max_msg_size=self.s.max_frame_bytes, timeout=3.0)
            await ws.prepare(request)
            await self._serve(ws, device_id, peer)
            return ws
        finally:
            admission.release()

    # ------------------------------------------------------------------ a connection
    async def _serve(self, ws: web.WebSocketResponse, device_id: str, peer: str) -> None:
        net = self.net
        claim = await net.registry.claim(device_id)
        if net.stopping:
            claim.end(1001, "the server is stopping")  # it waited for the device's old connection meanwhile
        loop = asyncio.get_running_loop()
        sink = SocketSink(loop)
        sender = loop.create_task(sink.send_all(ws))
        claim.emitter.attach(sink)
        net.connections[claim] = asyncio.current_task()
        stream: Optional[NetworkStream] = None
        code, reason = claim.end_code, claim.end_reason
        try:
            if claim.ended.is_set():
                return
            code, reason = await self._until_ended(claim, self._opening(ws, claim, peer, sink))
        except ProtocolError as exc:  # a bad start: nothing was streamed
            claim.emitter.emit(Problem("stream", exc.code, exc.message))
            code, reason = 1008, f"protocol error: {exc.code}"
        except AgentError as exc:  # a start asking for a language the model does not know
            claim.emitter.emit(Problem("stream", "bad_start", str(exc)))
            code, reason = 1008, "bad_start"
        finally:
            stream = claim.stream
            drained = True
            if stream is not None:
                # The open utterance ends; its final is decoded and sent before the close. A client that
                # sent stop waits up to idle_timeout_s: with the model behind, that can be longer than a
                # shutdown's drain_timeout_s.
                wait = net.settings.pipeline.drain_timeout_s if net.stopping else max(
                    net.settings.pipeline.drain_timeout_s, self.s.idle_timeout_s)
                drained = await stream.finish(wait + 1)
            await asyncio.sleep(0)  # the events handed to the loop last (an error just emitted) are queued
            sink.close()
            try:
                await asyncio.wait_for(sender, 2.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - a client that does not read
                sender.cancel()
            claim.emitter.detach(sink)
            await ws.close(code=code, message=reason[:120].encode())
            net.connections.pop(claim, None)
            net.registry.release(claim, stream.next_utterance_id if stream else claim.first_utterance_id)
            if stream is not None:
                net.stream_closed(stream, drained, reason)

    async def _until_ended(self, claim, reading) -> Tuple[int, str]:
        """Read until the client is done, or until the connection is ended from outside (shutdown, a newer
        connection of the device)."""
        reader = asyncio.ensure_future(reading)
        ended = asyncio.ensure_future(claim.ended.wait())
        try:
            done, _ = await asyncio.wait({reader, ended}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                return reader.result()
            return claim.end_code, claim.end_reason
        finally:
            reader.cancel()
            ended.cancel()
            await asyncio.gather(reader, ended, return_exceptions=True)

    async def _opening(self, ws, claim, peer: str, sink: SocketSink) -> Tuple[int, str]:
        """The first message sets the format (a start, or audio in the default one); then the stream."""
        first = await self._receive(ws)
        if isinstance(first, tuple):
            return first  # closed or idle before anything
        audio = None
        if isinstance(first, bytes):
            fmt, audio = StreamFormat(), first
        else:
            kind, value = parse_text(first)
            if kind == "stop":
                return 1000, "the client sent stop"
            fmt, audio = (value, None) if kind == "start" else (StreamFormat(), value)
        decoder = AudioDecoder(fmt)
        net = self.net
        listener = Listener(net.segmenter(claim.first_utterance_id), claim.emitter, net.settings.pipeline, decoder=net.decoder,
                            options=net.options(fmt.language, fmt.allowed_languages, fmt.hotwords))
        stream = claim.stream = NetworkStream(claim.device_id, peer, listener)
        net.stream_opened(stream, f"{fmt.format} {fmt.sample_rate} Hz")
        try:
            return await self._read(ws, stream, decoder, audio, sink)
        finally:
            tail = decoder.flush()
            if len(tail):
                await stream.push(tail)

    async def _read(self, ws, stream: NetworkStream, decoder: AudioDecoder, first, sink: SocketSink):
        """Read the client until it stops, goes quiet or away, or its session ends: (close code, why)."""
        hex_decoder = AudioDecoder(StreamFormat())  # {"audio": hex}: always s16le 16 kHz
        if first is not None:
            await stream.push(decoder.decode(first))
        limit = SessionLimit(self.s.max_session_s, self.net.settings.segmenter.max_utterance_s)
        while True:
            # Between utterances only: the device reconnects with nothing cut, at most one utterance late.
            if limit.due() and (await stream.at_rest() or limit.overdue()):
                return SESSION_LIMIT_CODE, limit.reason
            if sink.overflowed:
                return 1008, "the client does not read its events"
            if stream.failed is not None:
                return 1011, "the stream failed"
            ahead = stream.seconds_in() - (time.monotonic() - stream.started) - self.s.max_ahead_s
            if ahead > 0:  # faster than real time: its socket is not read meanwhile (TCP flow control)
                await asyncio.sleep(ahead)
            message = await self._receive(ws)
            if isinstance(message, tuple):
                return message
            try:
                if isinstance(message, bytes):
                    await stream.push(decoder.decode(message))
                    continue
                kind, value = parse_text(message)
                if kind == "stop":
                    return 1000, "the client sent stop"
                if kind == "audio":
                    await stream.push(hex_decoder.decode(value))
                else:
                    raise ProtocolError("bad_message", "start must be the first message", fatal=False)
            except ProtocolError as exc:
                stream.listener.emitter.emit(Problem("stream", exc.code, exc.message))
                if exc.fatal:
                    return 1008, f"protocol error: {exc.code}"

    async def _receive(self, ws):
        """The next message's bytes or text, or (close code, why) when the connection ends or idles."""
        try:
            msg = await ws.receive(timeout=self.s.idle_timeout_s)
        except asyncio.TimeoutError:
            return 1000, f"no data for server.idle_timeout_s ({self.s.idle_timeout_s:g} s)"
        if msg.type == WSMsgType.BINARY:
            return msg.data
        if msg.type == WSMsgType.TEXT:
            return msg.data
        if msg.type == WSMsgType.ERROR:  # aiohttp has closed it already (1009 for a message too large)
            return ws.close_code or 1002, f"the connection failed: {msg.data}"
        return 1000, "the client closed the connection"


def peer_of(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"


def token_of(request: web.Request) -> Optional[str]:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query.get("token")
