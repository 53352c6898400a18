"""The network ingest server: devices stream audio to /ws/stt/{device_id} over WebSocket and get their
events back (the documented JSON, docs/EVENTS.md); every stream shares the one recognizer.

Runs an asyncio event loop on a thread of its own ("ws-server"); each connection's pipeline (VAD,
segmenter, partial and final requests) runs on a thread of its own; decoding happens on the shared
decode worker. Refusals happen before the upgrade, with an HTTP status: 401 (no or wrong token),
403 (a token bound to another device), 404 (another path), 400 (an unusable device id), 503 (full,
or the model is at capacity).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
import urllib.parse
from http import HTTPStatus
from typing import Dict, Optional

from agent.errors import AgentError, ConfigError
from agent.events import Emitter, Problem
from agent.mqtt.health import LatencyWindow, RateLimitedLog
from agent.server import auth
from agent.server.loop import close_loop
from agent.server.protocol import AudioDecoder, ProtocolError, StreamFormat, parse_text
from agent.server.stream import NetworkStream, SocketSink

log = logging.getLogger(__name__)
PATH_PREFIX = "/ws/stt/"


class StreamServer:
    """`start()` listens (errors such as a taken port are ConfigErrors); `stop()` finishes every stream."""

    def __init__(self, settings, recognizer, decoder, session: str, *, sinks: list = (), device_status=None,
                 progress=None):
        self.settings = settings  # the whole Settings: server, audio, vad, segmenter, pipeline
        self.s = settings.server
        self.recognizer = recognizer
        self.decoder = decoder
        self.session = session
        self.sinks = list(sinks)  # every stream's events also go here (MQTT)
        self._device_status = device_status  # (device_id, "online" | "offline"), e.g. MQTT's retained status
        self.progress = progress
        self.tokens = auth.Tokens.load(self.s.tokens_file) if self.s.auth == "token" else None
        self.streams: Dict[str, NetworkStream] = {}
        self._endings: Dict[str, _Ending] = {}  # device -> how to end its connection from outside
        self._devices: Dict[str, tuple] = {}  # device -> (last seq, next utterance id) across reconnects
        self.accepted = 0
        self.refused: Dict[str, int] = {}
        self.latency_ms = LatencyWindow(500)
        self._refusal_log = RateLimitedLog(log, 10.0)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server = None
        self._ready = threading.Event()
        self._start_error: Optional[BaseException] = None
        self._stopping = False
        self._thread = threading.Thread(target=self._thread_main, name="ws-server", daemon=True)
        self._keepalive_task = None
        # websockets' own lines ("connection open", "connection closed") repeat ours: warnings only.
        logging.getLogger("agent.server.websockets").setLevel(logging.WARNING)

    # ------------------------------------------------------------------ life cycle (caller's thread)
    def start(self):
        if self.s.auth == "none":
            log.warning("server.auth is none: anyone who reaches %s:%d can stream audio to this box",
                        self.s.host, self.s.port, extra={"EVENT": "server_no_auth"})
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error
        scheme = "wss" if self.s.tls.cert_file else "ws"
        log.info("accepting streams at %s://%s:%d%s<device_id>", scheme, self.s.host, self.s.port, PATH_PREFIX,
                 extra={"EVENT": "server_ready"})

    def stop(self, timeout: float) -> bool:
        """Stop accepting, finish every open utterance and deliver its final (bounded); True if all were."""
        if self._loop is None or not self._thread.is_alive():
            return True
        self._stopping = True
        done = asyncio.run_coroutine_threadsafe(self._shutdown(timeout), self._loop)
        try:
            drained = done.result(timeout + 5)
        except Exception:  # noqa: BLE001 - a shutdown that fails is reported, not raised at exit
            log.exception("stopping the stream server failed")
            drained = False
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        return drained

    def _thread_main(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._listen())
        except BaseException as exc:  # reported to start()
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        self._keepalive_task = self._loop.create_task(self._keepalive())
        self._loop.run_forever()
        close_loop(self._loop)

    async def _listen(self):
        from websockets.asyncio.server import serve

        context = None
        if self.s.tls.cert_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(self.s.tls.cert_file, self.s.tls.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"server.tls.cert_file: cannot load {self.s.tls.cert_file} / "
                                  f"{self.s.tls.key_file}: {exc}") from None
        try:
            self._server = await serve(self._handle, self.s.host, self.s.port, process_request=self._admit,
                                       ssl=context, max_size=self.s.max_frame_bytes, max_queue=4,
                                       close_timeout=5, logger=logging.getLogger("agent.server.websockets"))
        except OSError as exc:
            raise ConfigError(f"server.port: cannot listen on {self.s.host}:{self.s.port}: "
                              f"{exc.strerror or exc}") from None

    async def _keepalive(self):
        """The server waiting for devices is not a stalled pipeline: tell the watchdog it lives."""
        while True:
            if self.progress is not None:
                self.progress.waiting_for_audio()
            await asyncio.sleep(1.0)

    async def _shutdown(self, timeout: float) -> bool:
        """Every connection ends as if its client had sent stop: its final is decoded and sent, then 1001."""
        self._server.close(close_connections=False)
        streams = list(self.streams.values())
        for ending in list(self._endings.values()):
            ending.end(1001, "the server is stopping")
        deadline = time.monotonic() + timeout
        drained = all([await stream.wait(max(0.0, deadline - time.monotonic())) for stream in streams])
        deadline = time.monotonic() + 5
        while self.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._server.close(close_connections=True)
        await self._server.wait_closed()
        self._keepalive_task.cancel()
        return drained

    # ------------------------------------------------------------------ before the upgrade
    def _admit(self, connection, request):
        peer = _peer(connection)
        path = urllib.parse.urlsplit(request.path)
        if not path.path.startswith(PATH_PREFIX) or "/" in path.path[len(PATH_PREFIX):]:
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "bad_path", peer, "",
                                f"not found: streams go to {PATH_PREFIX}<device_id>")
        device_id = urllib.parse.unquote(path.path[len(PATH_PREFIX):])
        problem = auth.device_problem(device_id)
        if problem:
            return self._refuse(connection, HTTPStatus.BAD_REQUEST, "bad_device", peer, device_id[:64],
                                f"the device id {problem}")
        if self.tokens is not None:
            token = _token(request, path.query)
            verdict = self.tokens.check(device_id, token)
            if verdict in (auth.MISSING, auth.WRONG):
                response = self._refuse(connection, HTTPStatus.UNAUTHORIZED, "unauthorized", peer, device_id,
                                        "a token is needed (Authorization: Bearer TOKEN, or ?token=TOKEN)"
                                        if verdict == auth.MISSING else "the token is not valid")
                response.headers["WWW-Authenticate"] = 'Bearer realm="stt-agent"'
                return response
            if verdict == auth.OTHER_DEVICE:
                return self._refuse(connection, HTTPStatus.FORBIDDEN, "forbidden", peer, device_id,
                                    "this token belongs to another device")
        if self._stopping:
            return self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE, "stopping", peer, device_id,
                                "the server is stopping")
        replacing = device_id in self.streams
        if len(self.streams) - replacing >= self.s.max_streams:
            return self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE, "full", peer, device_id,
                                f"the server takes {self.s.max_streams} streams at once; try again later")
        load = self.decoder.load()["finals"]
        if load > self.s.admission_load and not replacing:
            response = self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE, "busy", peer, device_id,
                                    f"the recognizer is at capacity ({load:.0%} of the last minute on finals); "
                                    "one more stream would slow every stream down")
            response.headers["Retry-After"] = "30"
            return response
        return None

    def _refuse(self, connection, status: HTTPStatus, reason: str, peer: str, device_id: str, text: str):
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self._refusal_log(logging.WARNING, "refused a stream from %s for device %r: %d %s (%s)", peer, device_id,
                          status.value, status.phrase, text)
        return connection.respond(status, text + "\n")

    # ------------------------------------------------------------------ a connection
    async def _handle(self, connection):
        peer = _peer(connection)
        device_id = urllib.parse.unquote(urllib.parse.urlsplit(connection.request.path).path[len(PATH_PREFIX):])
        await self._replace(device_id, peer)
        loop = asyncio.get_running_loop()
        sink = SocketSink(loop)
        sender = loop.create_task(sink.send_all(connection))
        last_seq, next_uid = self._devices.get(device_id, (0, 1))
        emitter = Emitter(device_id, self.session, [sink, *self.sinks], last_seq=last_seq)
        stream, close_code, reason = None, 1000, "the client closed the connection"
        try:
            fmt, first = await self._opening(connection)
            if fmt is None:
                return
            decoder = AudioDecoder(fmt)
            stream = NetworkStream(device_id, peer, self.settings, self.recognizer, self.decoder, emitter,
                                   options=self._options(fmt), first_utterance_id=next_uid)
            ending = _Ending(loop)
            self.streams[device_id] = stream
            self._endings[device_id] = ending
            self.accepted += 1
            if self._device_status is not None:
                self._device_status(device_id, "online")
            log.info("stream from %s for device %s: %s %d Hz", peer, device_id, fmt.format, fmt.sample_rate,
                     extra={"EVENT": "stream_open", "DEVICE_ID": device_id, "PEER": peer})
            stream.start()
            reader = loop.create_task(self._read(connection, stream, decoder, first, sink))
            ended = loop.create_task(ending.wait())
            done, _ = await asyncio.wait({reader, ended}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                close_code, reason = reader.result()
            else:
                close_code, reason = ending.code, ending.reason
            reader.cancel()
            ended.cancel()
        except ProtocolError as exc:  # a bad start: nothing was streamed
            emitter.emit(Problem("stream", exc.code, exc.message))
            close_code, reason = 1008, f"protocol error: {exc.code}"
        except AgentError as exc:  # a start asking for a language the model does not know
            emitter.emit(Problem("stream", "bad_start", str(exc)))
            close_code, reason = 1008, "bad_start"
        finally:
            drained = True
            if stream is not None:
                stream.finish()  # the open utterance ends; its final is decoded and sent before the close
                drained = await stream.wait((self.settings.pipeline.drain_timeout_s if self._stopping
                                             else stream.drain_timeout_s) + 1)
            await asyncio.sleep(0)  # the events the pipeline thread handed over last
            sink.close()
            try:
                await asyncio.wait_for(sender, 2.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - a client that does not read
                sender.cancel()
            try:
                await connection.close(close_code, reason[:120])
            except Exception:  # noqa: BLE001 - already gone
                pass
            self._devices[device_id] = (emitter.last_seq, stream.next_utterance_id if stream else next_uid)
            if stream is not None:
                self._forget(stream, drained, reason)

    async def _replace(self, device_id: str, peer: str):
        """The device connected again before its old connection timed out: finish the old one first."""
        ending = self._endings.get(device_id)
        if ending is None:
            return
        log.info("device %s connected again from %s: its previous connection is finished", device_id, peer)
        ending.end(4000, "replaced by a new connection of the same device")
        deadline = time.monotonic() + self.settings.pipeline.drain_timeout_s + 5
        while device_id in self.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def _opening(self, connection):
        """(format, first audio bytes or None) from the first message; (None, None) if it stopped or left."""
        first = await self._receive(connection)
        if first is None:
            return None, None
        if isinstance(first, bytes):
            return StreamFormat(), first
        kind, value = parse_text(first)
        if kind == "start":
            return value, None
        if kind == "audio":
            return StreamFormat(), value
        return None, None  # stop before anything

    async def _read(self, connection, stream: NetworkStream, decoder: AudioDecoder, first, sink: SocketSink):
        """Read the client until it stops, goes quiet or away, or its session ends: (close code, why)."""
        hex_decoder = AudioDecoder(StreamFormat())  # the seed's {"audio": hex}: always s16le 16 kHz
        if first is not None:
            await self._feed(stream, decoder, first)
        limit = self.s.max_session_s
        while True:
            if limit and time.monotonic() - stream.started > limit:
                return 1000, f"the session reached server.max_session_s ({limit:g} s)"
            if sink.overflowed:
                return 1008, "the client does not read its events"
            await self._pace(stream)
            message = await self._receive(connection)
            if message is None:
                if connection.close_code is not None:
                    return 1000, "the client closed the connection"
                return 1000, f"no data for server.idle_timeout_s ({self.s.idle_timeout_s:g} s)"
            try:
                if isinstance(message, bytes):
                    await self._feed(stream, decoder, message)
                    continue
                kind, value = parse_text(message)
                if kind == "stop":
                    return 1000, "the client sent stop"
                if kind == "audio":
                    await self._feed(stream, hex_decoder, value)
                else:
                    raise ProtocolError("bad_message", "start must be the first message", fatal=False)
            except ProtocolError as exc:
                stream.emitter.emit(Problem("stream", exc.code, exc.message))
                if exc.fatal:
                    return 1008, f"protocol error: {exc.code}"

    async def _receive(self, connection):
        """The next message, or None at the idle limit or when the connection closes."""
        try:
            return await asyncio.wait_for(connection.recv(), self.s.idle_timeout_s)
        except asyncio.TimeoutError:
            return None
        except Exception as exc:  # noqa: BLE001
            if _closed(exc):
                return None
            raise

    async def _feed(self, stream: NetworkStream, decoder: AudioDecoder, data: bytes):
        samples = decoder.decode(data)
        while stream.source.room() < len(samples):  # the pipeline is behind: hold the socket unread
            await asyncio.sleep(0.01)
        stream.push(samples)

    async def _pace(self, stream: NetworkStream):
        """A client sending faster than real time waits: its socket is not read meanwhile (TCP flow control)."""
        ahead = stream.seconds_pushed() - (time.monotonic() - stream.started) - self.s.max_ahead_s
        if ahead > 0:
            await asyncio.sleep(ahead)

    def _options(self, fmt: StreamFormat):
        if fmt.language == "auto" and not fmt.allowed_languages:
            return None
        return self.recognizer.options(language=fmt.language, allowed_languages=fmt.allowed_languages)

    def _forget(self, stream: NetworkStream, drained: bool, reason: str):
        if self.streams.get(stream.device_id) is stream:
            del self.streams[stream.device_id]
            self._endings.pop(stream.device_id, None)
            if self._device_status is not None:
                self._device_status(stream.device_id, "offline")
        for value in stream.latency_ms.values():
            self.latency_ms.add(value)
        log.info("stream of device %s closed (%s): %d final(s)%s", stream.device_id, reason, stream.finals,
                 "" if drained else ", some not decoded in time",
                 extra={"EVENT": "stream_close", "DEVICE_ID": stream.device_id, "PEER": stream.peer})

    # ------------------------------------------------------------------ health
    def stats(self) -> dict:
        load = self.decoder.load()
        windows = [s.latency_ms for s in list(self.streams.values())]
        live = LatencyWindow(2000)
        for w in windows + [self.latency_ms]:
            for value in w.values():
                live.add(value)
        return {"streams": len(self.streams), "accepted": self.accepted, "refused": dict(self.refused),
                "latency_ms": live.summary(),
                "devices": {d: {"utterances": s.finals, "latency_ms": s.latency_ms.summary(),
                                "buffered_s": round(s.buffered_seconds(), 2)}
                            for d, s in list(self.streams.items())},
                "decoder": {"queued_finals": self.decoder.queued_finals(),
                            "load": {k: round(v, 3) for k, v in load.items()},
                            "batches": {str(k): v for k, v in sorted(self.decoder.batches.items())},
                            "model_seconds": {k: round(v, 1) for k, v in self.decoder.model_seconds.items()},
                            "cancelled_runs": dict(self.decoder.cancelled),
                            "speculation": dict(self.decoder.speculation)}}


class _Ending:
    """Ends a connection from outside its handler (shutdown, a newer connection of the same device)."""

    def __init__(self, loop):
        self._event = asyncio.Event()
        self.code, self.reason = 1000, ""

    def end(self, code: int, reason: str):
        self.code, self.reason = code, reason
        self._event.set()

    async def wait(self):
        await self._event.wait()


def _peer(connection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"


def _token(request, query: str) -> Optional[str]:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    values = urllib.parse.parse_qs(query).get("token")
    return values[0] if values else None


def _closed(exc: BaseException) -> bool:
    from websockets.exceptions import ConnectionClosed

    return isinstance(exc, (ConnectionClosed, ConnectionResetError, BrokenPipeError))
