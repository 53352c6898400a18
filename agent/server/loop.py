"""The one network loop: one thread, one asyncio loop, every network protocol on it.

    NetworkLoop(settings, ...).start()
        registry                  agent/server/devices.py: device ids, numbering, admission
        http                      aiohttp on server.host:server.port: /ws/stt/{device_id} (server.enabled)
        wyoming                   Home Assistant's Wyoming on server.wyoming.uri (server.wyoming.enabled)
        heartbeat                 the watchdog sees the loop turn (Progress.beat("network"))
    .stop(timeout)                every connection finished with its final, then 1001; bounded

Both listening sockets go through a Gate (agent/server/gate.py): connections that have not said who
they are are bounded in number and time. Commands from MQTT reach a device's stream through its inbox
(`command`), from the MQTT thread, never by writing the stream's attributes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import ssl
import threading
import time
from http import HTTPStatus
from typing import Dict, Optional

from agent.errors import ConfigError
from agent.mqtt.health import LatencyWindow, RateLimitedLog
from agent.server.devices import DeviceRegistry

log = logging.getLogger(__name__)
HEARTBEAT_S = 1.0
# Descriptors besides the sockets: the model, logs, the broker, the journal, pipes (~60 seen at start).
FD_RESERVE = 256


class NotConnected(LookupError):
    """A command for a device that has no stream now."""


class NetworkLoop:
    """`start()` binds every socket (a taken port is a ConfigError) and returns; `stop()` finishes it all."""

    def __init__(self, settings, recognizer, decoder, session: str, *, sinks: list = (), device_status=None,
                 progress=None, publisher=None):
        from agent.server.metrics import metrics_for

        self.settings = settings
        self.s = settings.server
        self.recognizer = recognizer
        self.decoder = decoder
        self.progress = progress
        self.metrics = metrics_for(self, publisher)  # /metrics; its sink sees every device's events
        sinks = list(sinks) + ([self.metrics.events] if self.metrics is not None else [])
        self.registry = DeviceRegistry(session, sinks, max_streams=self.s.max_streams, device_status=device_status)
        self.connections: Dict[object, asyncio.Task] = {}  # WebSocket connections: claim -> handler task
        self.stopping = False
        self.accepted = 0
        self.refused: dict = {}
        self.latency_ms = LatencyWindow(500)
        self.accept_failures = 0
        self.ingest = self.wyoming = self.realtime = self.openai = None
        self.started_at = time.time()
        self._http_gate = self._runner = self._http_server = None
        self._refusal_log = RateLimitedLog(log, 10.0)
        self._accept_log = RateLimitedLog(log, 10.0)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._ready = threading.Event()
        self._start_error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._main, name="network", daemon=True)

    # ------------------------------------------------------------------ life cycle (caller's thread)
    def start(self) -> None:
        self._raise_fd_limit()
        if self.s.enabled and self.s.auth == "none":
            log.warning("server.auth is none: anyone who reaches %s:%d can stream audio to this box",
                        self.s.host, self.s.port, extra={"EVENT": "server_no_auth"})
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error
        if self.s.enabled:
            scheme = "wss" if self.s.tls.cert_file else "ws"
            log.info("accepting streams at %s://%s:%d/ws/stt/<device_id>", scheme, self.s.host, self.s.port,
                     extra={"EVENT": "server_ready"})

    def stop(self, timeout: float) -> bool:
        """Stop accepting, finish every connection in every state (finals delivered, bounded); True if all were."""
        if self._loop is None or not self._thread.is_alive():
            return True
        future = asyncio.run_coroutine_threadsafe(self._shutdown(timeout), self._loop)
        try:
            drained = future.result(timeout + 10)
        except Exception as exc:  # noqa: BLE001 - the process is stopping: say why, once, and go on
            log.error("stopping the network loop failed: %s: %s", type(exc).__name__, exc)
            drained = False
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        return drained

    def command(self, device_id: str, command: dict) -> None:
        """From any thread: queue `command` on the device's stream; NotConnected if it has none, or
        BufferError if its inbox is full right now."""
        if self._loop is None:
            raise NotConnected(device_id)
        future = asyncio.run_coroutine_threadsafe(self._command(device_id, command), self._loop)
        future.result(5)

    async def _command(self, device_id: str, command: dict) -> None:
        claim = self.registry.owner(device_id)  # WebSocket and Wyoming streams alike
        stream = claim.stream if claim is not None else None
        if stream is None:
            raise NotConnected(device_id)
        if not stream.command(command):
            raise BufferError(device_id)

    # ------------------------------------------------------------------ the loop's thread
    def _main(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._loop_exception)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._start_error = exc
            self._ready.set()
            _close(loop)
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            _close(loop)

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        if self.s.enabled:
            await self._listen_http(loop)
        if self.s.wyoming.enabled:
            from agent.server.wyoming import WyomingServer

            self.wyoming = WyomingServer(self)
            await self.wyoming.start()
        self._heartbeat = loop.create_task(self._beat())

    async def _listen_http(self, loop) -> None:
        from aiohttp import web

        from agent.server.gate import Gate
        from agent.server.ingest import Ingest
        from agent.server.probes import Probes

        self.ingest = Ingest(self)
        middlewares = [self._started_middleware()]
        if self.metrics is not None:
            middlewares.insert(0, self.metrics.middleware)  # outermost: it sees every answer, 404s too
        app = web.Application(middlewares=middlewares)
        app.router.add_get("/ws/stt/{device_id}", self.ingest.handle)
        Probes(self).add_routes(app)  # no token, like /metrics: kubelet and Prometheus present none
        if self.metrics is not None:
            app.router.add_get("/metrics", self.metrics.handle)
        from agent.server.realtime import PATH, Realtime

        self.realtime = Realtime(self, self.ingest.tokens)
        app.router.add_get(PATH, self.realtime.handle)  # OpenAI's realtime transcription, same tokens
        from agent.server.openai_api import OpenAiApi

        self.openai = OpenAiApi(self, self.ingest.tokens)
        self.openai.add_routes(app)  # OpenAI's audio API: uploads, models
        # A kept-alive HTTP connection between requests: 15 s, not aiohttp's 75 (the pending bound
        # covers only the wait for a first request).
        # shutdown_timeout: what is left once every connection was finished (aiohttp's default waits 60 s).
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, keepalive_timeout=15.0,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        self._http_gate = Gate("HTTP", self._runner.server, max_pending=self.s.max_pending,
                               timeout_s=self.s.handshake_timeout_s)
        try:
            self._http_server = await loop.create_server(self._http_gate, self.s.host, self.s.port,
                                                         ssl=self._tls(), reuse_address=True, backlog=512)
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(f"server.port: cannot listen on {self.s.host}:{self.s.port}: "
                              f"{exc.strerror or exc}") from None

    def _tls(self) -> Optional[ssl.SSLContext]:
        tls = self.s.tls
        if not tls.cert_file:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"server.tls: cannot load {tls.cert_file} / {tls.key_file}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        return context

    def _started_middleware(self):
        from aiohttp import web

        from agent.server.ingest import peer_of

        net = self

        @web.middleware
        async def started(request, handler):
            net._http_gate.started(request.transport)  # headers arrived: no longer pending
            try:
                return await handler(request)
            except web.HTTPNotFound:
                return net.refuse(HTTPStatus.NOT_FOUND, "bad_path", peer_of(request), "",
                                  "not found: streams go to /ws/stt/<device_id>")
            except web.HTTPMethodNotAllowed:
                return net.refuse(HTTPStatus.METHOD_NOT_ALLOWED, "bad_method", peer_of(request), "",
                                  f"{request.method[:16]} is not allowed here")
        return started

    async def _beat(self) -> None:
        """The loop turns: the watchdog's proof that the network side lives, whatever devices do."""
        while True:
            if self.progress is not None:
                self.progress.beat("network")
            await asyncio.sleep(HEARTBEAT_S)

    def _loop_exception(self, loop, context: dict) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            # asyncio retries the accept a second later; one line per 10 s with a count, not a traceback each
            self.accept_failures += 1
            self._accept_log(logging.ERROR, "cannot accept connections: %s (%d accept(s) failed so far; raise "
                                            "LimitNOFILE or lower server.max_streams)", exc.strerror,
                             self.accept_failures)
            return
        if isinstance(exc, (ConnectionError, ssl.SSLError)):
            log.debug("network: %s", context.get("message"))  # a client that left mid-handshake
            return
        loop.default_exception_handler(context)

    async def _shutdown(self, timeout: float) -> bool:
        self.stopping = True
        deadline = time.monotonic() + timeout
        if self._http_server is not None:
            self._http_server.close()
        for claim in list(self.connections):
            claim.end(1001, "the server is stopping")
        drained = True
        if self.wyoming is not None:
            drained = await self.wyoming.stop(max(0.0, deadline - time.monotonic())) and drained
        if self.connections:  # the handlers deliver their finals and close with 1001
            await asyncio.wait(list(self.connections.values()), timeout=max(0.0, deadline - time.monotonic()) + 2)
        drained = drained and not self.connections
        if self._http_gate is not None:
            self._http_gate.close_all()  # pending handshakes and idle keep-alives
        if self._runner is not None:
            await self._runner.cleanup()
        self._heartbeat.cancel()
        return drained

    # ------------------------------------------------------------------ for the handlers
    def refuse(self, status: HTTPStatus, reason: str, peer: str, device_id: str, text: str, headers=None):
        from aiohttp import web

        self.refused[reason] = self.refused.get(reason, 0) + 1
        self._refusal_log(logging.WARNING, "refused a stream from %s for device %r: %d %s (%s)", peer, device_id,
                          status.value, status.phrase, text)
        return web.Response(status=status.value, text=text + "\n", headers=headers)

    def http_refused(self, reason: str, peer: str, text: str) -> None:
        """An HTTP API request refused (OpenAI's error shape): counted by reason, logged at most once per 10 s."""
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self._refusal_log(logging.WARNING, "refused an API request from %s: %s (%s)", peer, reason, text[:200])

    def segmenter(self, first_utterance_id: int, settings=None):
        """A stream's segmenter: its utterance ids go on from `first_utterance_id` (the device's numbering)."""
        from agent.listening import Segmenter, load_vad

        s = self.settings
        return Segmenter.from_settings(load_vad(s.vad), settings or s.segmenter, s.vad,
                                       first_utterance_id=first_utterance_id)

    def options(self, language: str = "auto", allowed_languages=(), hotwords=()):
        """A stream's DecodeOptions (None: the recognizer's defaults); AgentError for a language it lacks."""
        if language == "auto" and not allowed_languages and not hotwords:
            return None
        return self.recognizer.options(language=language, allowed_languages=tuple(allowed_languages),
                                       hotwords=tuple(hotwords))

    def stream_opened(self, stream, what: str) -> None:
        self.accepted += 1
        log.info("stream from %s for device %s: %s", stream.peer, stream.device_id, what,
                 extra={"EVENT": "stream_open", "DEVICE_ID": stream.device_id, "PEER": stream.peer})

    def stream_closed(self, stream, drained: bool, reason: str) -> None:
        for value in stream.latency_ms.values():
            self.latency_ms.add(value)
        log.info("stream of device %s closed (%s): %d final(s)%s", stream.device_id, reason, stream.finals,
                 "" if drained else ", some not delivered in time",
                 extra={"EVENT": "stream_close", "DEVICE_ID": stream.device_id, "PEER": stream.peer})

    # ------------------------------------------------------------------ health
    def stats(self) -> dict:
        load = self.decoder.load()
        streams = {d: c.stream for d, c in self.registry.owners().items() if c.stream is not None}
        live = LatencyWindow(2000)
        for window in [s.latency_ms for s in streams.values()] + [self.latency_ms]:
            for value in window.values():
                live.add(value)
        stats = {"streams": len(streams), "admitted": self.registry.admitted, "accepted": self.accepted,
                 "refused": dict(self.refused), "latency_ms": live.summary(),
                 "devices": {d: {"utterances": s.finals, "latency_ms": s.latency_ms.summary()}
                             for d, s in streams.items()},
                 "decoder": {"queued_finals": self.decoder.queued_finals(),
                             "load": {k: round(v, 3) for k, v in load.items()},
                             "batches": {str(k): v for k, v in sorted(self.decoder.batches.items())},
                             "model_seconds": {k: round(v, 1) for k, v in self.decoder.model_seconds.items()},
                             "cancelled_runs": dict(self.decoder.cancelled),
                             "speculation": dict(self.decoder.speculation)}}
        if self._http_gate is not None:
            stats["pending"] = {"now": self._http_gate.pending, "evicted": self._http_gate.evicted,
                                "expired": self._http_gate.expired, "accept_failures": self.accept_failures}
        return stats

    # ------------------------------------------------------------------ descriptors
    def _raise_fd_limit(self) -> None:
        """Every stream holds a socket, every pending connection one more: ask for what max_streams needs."""
        need = 4 * self.s.max_streams + 2 * self.s.max_pending + FD_RESERVE
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft >= need:
            return
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
        if target < need:
            log.warning("open files are limited to %d; server.max_streams %d wants %d (raise LimitNOFILE)", target,
                        self.s.max_streams, need, extra={"EVENT": "fd_limit"})


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what still runs on the stopped loop and let it unwind, then close the loop: a task left
    pending would otherwise be torn down by the garbage collector on a closed loop, with an "Event loop
    is closed" traceback on stderr."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()
