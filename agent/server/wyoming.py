"""Home Assistant's Wyoming speech-to-text protocol on the network loop: each utterance is one more stream
(a Listener on the shared decoder), like a WebSocket device.

    describe                        -> info: one ASR program, the languages HA asks for
    select-program (wyoming 1.10)   -> must name this program (stt-agent)
    transcribe (language, names)    -> the utterance's options (names and terms kept with them)
    audio-start, audio-chunk...     -> any rate / width / channels, converted to 16 kHz mono
    (our VAD hears the end)         -> transcript-start, transcript-chunk..., transcript-stop, transcript
    audio-stop                      -> (without endpointing, or before it) the same, from what was sent
    ping                            -> pong

With `server.wyoming.endpoint` the program says requires_external_vad false: Home Assistant then lets
this server decide when the command ended, and takes the transcript the moment it comes. Every
malformed event is answered with an `error` event (a code and a text); one that breaks the framing
also closes the connection, since nothing after it can be read reliably.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from typing import TYPE_CHECKING, Dict, Optional
from urllib.parse import urlparse

import numpy as np
from wyoming.event import Event, async_write_event

from agent import __version__
from agent.audio.format import Resampler, pcm_to_float
from agent.errors import AgentError, ConfigError
from agent.events import Stamped
from agent.mqtt.health import RateLimitedLog
from agent.pipeline.listener import Listener
from agent.server.gate import Gate
from agent.server.stream import EventRelay, NetworkStream

if TYPE_CHECKING:
    from agent.server.loop import NetworkLoop

log = logging.getLogger(__name__)

# What Home Assistant asks for, and the model's language for each. HA's intents use the regional
# Chinese codes; Hong Kong's spoken Chinese is Cantonese.
LANGUAGES = {"zh": "zh", "zh-cn": "zh", "zh-tw": "zh", "zh-hk": "yue", "yue": "yue", "en": "en", "ja": "ja",
             "ko": "ko"}
PROGRAM = "stt-agent"
MAX_HEADER_BYTES = 64 * 1024  # an event's JSON line; HA's are a few hundred bytes
MAX_DATA_BYTES = 64 * 1024
MAX_CHANNELS = 8
NAME_WEIGHT, TERM_WEIGHT = 2.0, 1.0  # transcript_names, transcript_terms
# Events that say who a connection is: until one comes it counts as pending (agent/server/gate.py), so
# connections that only ping cannot hold the places Home Assistant needs.
_REQUESTS = ("describe", "transcribe", "audio-start", "select-program")


def model_language(requested: Optional[str]) -> Optional[str]:
    """The model's language for what a client asked ('en-US', 'zh-HK', ...); "auto" for none; None for a
    language the model does not have."""
    if not requested:
        return "auto"
    code = requested.lower().replace("_", "-")
    return LANGUAGES.get(code) or LANGUAGES.get(code.split("-")[0])


class Malformed(Exception):
    """An event the server cannot take: answered with an error (code, text); `fatal`: the framing is lost."""

    def __init__(self, code: str, text: str, fatal: bool = False):
        super().__init__(text)
        self.code, self.text, self.fatal = code, text, fatal


async def read_event(reader: asyncio.StreamReader, max_payload: int) -> Optional[Event]:
    """The next event in Wyoming's framing (a JSON header line, then data_length bytes of JSON, then
    payload_length bytes), or None at the end. The wyoming package's own reader has no bounds (a 1 GB
    payload_length is read) and turns malformed input into the same None as the end of the stream,
    so the client would get a silent close instead of an answer."""
    try:
        line = await reader.readline()
    except (ValueError, asyncio.LimitOverrunError):
        raise Malformed("too_large", f"an event header is over {MAX_HEADER_BYTES} bytes", fatal=True) from None
    if not line:
        return None
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):
        raise Malformed("bad_event", "an event header must be one line of JSON", fatal=True) from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise Malformed("bad_event", "an event header must be a JSON object with a string type", fatal=True)
    kind = header["type"][:64]
    data = header.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise Malformed("bad_event", f"{kind}: data must be a JSON object", fatal=True)
    data_length = _length(header, "data_length", kind, MAX_DATA_BYTES)
    payload_length = _length(header, "payload_length", kind, max_payload)
    if data_length:
        try:
            more = json.loads(await reader.readexactly(data_length))
        except (ValueError, RecursionError):
            raise Malformed("bad_event", f"{kind}: its data is not a JSON object", fatal=True) from None
        if not isinstance(more, dict):
            raise Malformed("bad_event", f"{kind}: its data is not a JSON object", fatal=True)
        data = {**data, **more}
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=kind, data=data, payload=payload)


def _length(header: dict, key: str, kind: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Malformed("bad_event", f"{kind}: {key} must be a whole number of bytes, not {str(value)[:40]!r}",
                        fatal=True)
    if value > limit:
        raise Malformed("too_large", f"{kind}: {key} {value} is over the limit of {limit} bytes "
                                     f"({'server.max_frame_bytes' if key == 'payload_length' else 'event data'})",
                        fatal=True)
    return value


def _audio_format(data: dict, kind: str) -> tuple:
    """(rate, width, channels) of an audio-start or audio-chunk, checked."""
    values = []
    for key, low, high in (("rate", 8000, 192000), ("width", 1, 4), ("channels", 1, MAX_CHANNELS)):
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise Malformed("bad_audio", f"{kind}: {key} must be a whole number from {low} to {high}, not "
                                         f"{str(value)[:40]!r}")
        values.append(value)
    return tuple(values)


def _strings(data: dict, key: str, kind: str) -> tuple:
    value = data.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 1000:
        raise Malformed("bad_event", f"{kind}: {key} must be a list of at most 1000 strings")
    return tuple(v[:200] for v in value)


class WyomingServer:
    """Listens on server.wyoming.uri on the network loop; `stop()` finishes every utterance."""

    def __init__(self, net: "NetworkLoop"):
        self.net = net
        self.w = net.settings.server.wyoming
        self.connections: Dict[object, "WyomingConnection"] = {}  # handler task -> connection
        self.transcripts = 0
        self.refused = 0
        self.ignored_chunks = 0
        self.malformed: Dict[str, int] = {}
        self._unsupported_languages: set = set()
        self._server = None
        self._zeroconf = None
        self.gate: Optional[Gate] = None
        self.errors_log = RateLimitedLog(log, 10.0)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.net.settings.server
        self.gate = Gate("Wyoming", lambda: asyncio.StreamReaderProtocol(
            asyncio.StreamReader(limit=MAX_HEADER_BYTES, loop=loop), self._connected),
            max_pending=s.max_pending, timeout_s=s.handshake_timeout_s)
        parsed = urlparse(self.w.uri)
        try:
            if parsed.scheme == "unix":
                self._server = await loop.create_unix_server(self.gate, parsed.path)
            else:
                self._server = await loop.create_server(self.gate, parsed.hostname, parsed.port, reuse_address=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"server.wyoming.uri: cannot listen on {self.w.uri}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        if self.w.zeroconf and parsed.scheme == "tcp":
            await self._announce(parsed.port)
        log.info("Wyoming speech-to-text at %s%s", self.w.uri, " (announced by zeroconf)" if self._zeroconf else "",
                 extra={"EVENT": "wyoming_ready"})

    async def _announce(self, port: int) -> None:
        try:
            from wyoming.zeroconf import HomeAssistantZeroconf

            self._zeroconf = HomeAssistantZeroconf(port=port, name=f"stt-agent-{_host_name()}")
            await self._zeroconf.register_server()
        except Exception as exc:  # noqa: BLE001 - no multicast here: Home Assistant can be given host and port
            self._zeroconf = None
            log.warning("Wyoming: zeroconf announcement failed (%s); add the service in Home Assistant by host "
                        "and port, or set server.wyoming.zeroconf: false", exc, extra={"EVENT": "wyoming_zeroconf"})

    async def stop(self, timeout: float) -> bool:
        """Every connection's utterance ends with its final (and transcript, to a client still there)."""
        if self._zeroconf is not None:
            try:
                await self._zeroconf._aiozc.async_close()
            except Exception:  # noqa: BLE001 - multicast gone: nothing to withdraw
                pass
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections.values()):
            connection.stop()
        drained = True
        if self.connections:
            _, left = await asyncio.wait(list(self.connections), timeout=timeout + 2)
            drained = not left
        self.gate.close_all()
        return drained

    def _connected(self, reader, writer) -> None:
        connection = WyomingConnection(self, reader, writer)
        task = asyncio.get_running_loop().create_task(connection.run())
        self.connections[task] = connection
        task.add_done_callback(lambda t: self.connections.pop(t, None))

    def language_fallback(self, requested: str) -> None:
        """A language the model does not have: detected instead, said once per language."""
        if requested not in self._unsupported_languages:
            self._unsupported_languages.add(requested)
            log.warning("Wyoming: the model has no language %r; detecting the language instead (SenseVoiceSmall "
                        "knows %s)", requested[:40], ", ".join(sorted(LANGUAGES)), extra={"EVENT": "wyoming_language"})

    def stats(self) -> dict:
        """For health: connections open now, transcripts sent, refused and malformed events, chunks ignored."""
        return {"connections": len(self.connections), "transcripts": self.transcripts, "refused": self.refused,
                "malformed": dict(self.malformed), "ignored_chunks": self.ignored_chunks,
                "pending": self.gate.pending if self.gate else 0}

    def info(self):
        from wyoming.info import AsrModel, AsrProgram, Attribution, Info

        attribution = Attribution(name="FunAudioLLM SenseVoiceSmall, served by stt-agent",
                                  url="https://github.com/FunAudioLLM/SenseVoice")
        recognizer = self.net.recognizer
        model_name = recognizer.info["model_dir"].rstrip("/").rsplit("/", 1)[-1]
        model = AsrModel(name=model_name, attribution=attribution, installed=True,
                         description="SenseVoiceSmall: text, emotion, language and audio event from one pass",
                         version=recognizer.info.get("precision"), languages=list(LANGUAGES))
        program = AsrProgram(name=PROGRAM, attribution=attribution, installed=True,
                             description="Speech to text with emotion, language and event scores", version=__version__,
                             models=[model], supports_transcript_streaming=True,
                             requires_external_vad=not self.w.endpoint)
        return Info(asr=[program])

    def device_base(self, peer: str) -> str:
        if self.w.device_id:
            return self.w.device_id
        return "wyoming-" + "".join(c if c.isalnum() else "-" for c in peer.rsplit(":", 1)[0])


class WyomingConnection:
    """One Wyoming connection (Home Assistant opens one per utterance)."""

    def __init__(self, server: WyomingServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server = server
        self.net = server.net
        self.reader, self.writer = reader, writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "local"
        self.language: Optional[str] = None  # what the client asked for; None before transcribe
        self.names: tuple = ()  # transcribe's transcript_names and transcript_terms, kept with the utterance
        self.terms: tuple = ()
        self.claim = None
        self.admission = None
        self.stream: Optional[NetworkStream] = None
        self.format: Optional[tuple] = None  # (rate, width, channels) after audio-start
        self._resample: Optional[Resampler] = None
        self._answered = True  # no transcribe is open
        self._ignoring = False  # audio after the transcript: ignored until the next transcribe/audio-start
        self._finals: list = []  # this command's finals (without endpointing several may come)
        self._streamed = ""  # text sent so far as transcript-chunks
        self._started_streaming = False
        self._speech_heard = False
        self._no_speech: Optional[asyncio.TimerHandle] = None
        self._ending: Optional[asyncio.Task] = None
        self._relay: Optional[EventRelay] = None  # the streams' events, handled in order on the loop
        self._write_lock = asyncio.Lock()
        self._running = True
        self._command = 0  # +1 at every transcribe and audio-start: which command a stream belongs to
        self._reading: Optional[asyncio.Future] = None
        self._loop = asyncio.get_running_loop()

    # ------------------------------------------------------------------ the connection
    async def run(self) -> None:
        server, s = self.server, self.net.settings.server
        self._relay = EventRelay(self._loop, ("partial", "final", "speech_start"), self._on_event, "Wyoming")
        try:
            if server.gate.connections > 4 * s.max_streams:
                server.refused += 1
                await self._error("busy", "too many Wyoming connections; try again later")
                return
            while self._running:
                self._reading = asyncio.ensure_future(
                    asyncio.wait_for(read_event(self.reader, s.max_frame_bytes), s.idle_timeout_s))
                try:
                    event = await self._reading
                except asyncio.TimeoutError:
                    break  # idle: the whole event did not come in time (a header is never split from its payload)
                except asyncio.CancelledError:
                    if self._running:
                        raise
                    break  # stop(): the server is stopping
                except Malformed as exc:
                    await self._malformed(exc)
                    if exc.fatal:
                        break
                    continue
                if event is None:
                    break
                if event.type in _REQUESTS:
                    server.gate.started(self.writer.transport)
                try:
                    await self._handle(event)
                except Malformed as exc:
                    await self._malformed(exc)
                    if exc.fatal:
                        break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: its utterance still ends below
        finally:
            await self._end_stream("the connection ended")
            if self._ending is not None:
                await asyncio.gather(self._ending, return_exceptions=True)
            await self._relay.stop()
            self.writer.close()

    def stop(self) -> None:
        """Server stop: the open utterance ends (its transcript still goes to the client), then the close."""
        self._running = False
        if self._reading is not None:
            self._reading.cancel()

    async def _handle(self, event: Event) -> None:
        from wyoming.asr import Transcribe
        from wyoming.audio import AudioChunk, AudioStart, AudioStop
        from wyoming.info import Describe, SelectProgram
        from wyoming.ping import Ping, Pong

        kind, data = event.type, event.data
        if Describe.is_type(kind):
            await self._write(self.server.info().event())
        elif SelectProgram.is_type(kind):
            name = data.get("name")
            if name != PROGRAM:
                raise Malformed("unknown_program", f"select-program: no program {str(name)[:40]!r} here "
                                                   f"(this server has {PROGRAM!r})")
        elif Transcribe.is_type(kind):
            await self._transcribe(data)
        elif AudioStart.is_type(kind):
            if self.language is None:
                raise Malformed("no_transcribe", "send transcribe (with the language) before audio-start")
            await self._open(*_audio_format(data, kind))
        elif AudioChunk.is_type(kind):
            await self._chunk(data, event.payload)
        elif AudioStop.is_type(kind):
            if self.stream is not None:
                await self._end_stream("audio-stop")
            elif not self._answered:
                await self._send_transcript()  # a transcribe with no audio at all: nothing was said
            self._ignoring = False
        elif Ping.is_type(kind):
            await self._write(Pong(text=data.get("text") if isinstance(data.get("text"), str) else None).event())
        # anything else is meant for other programs: dropped, as the protocol asks

    async def _transcribe(self, data: dict) -> None:
        language = data.get("language")
        if language is not None and not isinstance(language, str):
            raise Malformed("bad_event", "transcribe: language must be a string")
        self.names, self.terms = _strings(data, "transcript_names", "transcribe"), _strings(
            data, "transcript_terms", "transcribe")
        if self.stream is not None:
            await self._end_stream("a new transcribe")
        self._command += 1
        self.language = language or "auto"
        if model_language(self.language) is None:
            self.server.language_fallback(self.language)
        self._answered, self._ignoring = False, False

    async def _open(self, rate: int, width: int, channels: int) -> None:
        if self.stream is not None:
            await self._end_stream("audio-start")  # a new utterance on the same connection
        net, w = self.net, self.server.w
        language = model_language(self.language) or "auto"
        # Names weigh more than terms, as Wyoming 1.10 defines them ("these take priority over terms").
        hotwords = [(name, NAME_WEIGHT) for name in self.names] + [(term, TERM_WEIGHT) for term in self.terms]
        try:
            options = net.options(language, hotwords=hotwords)
        except AgentError as exc:
            raise Malformed("bad_language", str(exc)) from None
        self.admission = net.registry.admit()
        if self.admission is None:
            self.server.refused += 1
            self._answered, self._ignoring = True, True  # its chunks are dropped quietly: one error is the answer
            raise Malformed("busy", f"the server takes {net.s.max_streams} streams at once; try again later")
        self._command += 1
        self.claim = await net.registry.claim_free(self.server.device_base(self.peer))
        segmenter = net.settings.segmenter
        if w.endpoint:
            segmenter = dataclasses.replace(segmenter, endpoint_silence_ms=w.endpoint_silence_ms,
                                            tail_pad_ms=min(segmenter.tail_pad_ms, w.endpoint_silence_ms))
        listener = Listener(net.segmenter(self.claim.first_utterance_id, segmenter), self.claim.emitter,
                            net.settings.pipeline, decoder=net.decoder, options=options)
        self.stream = self.claim.stream = NetworkStream(self.claim.device_id, self.peer, listener)
        self.claim.emitter.attach(self._relay)
        self.format, self._resample = (rate, width, channels), Resampler(rate)
        self._answered, self._ignoring, self._finals, self._ending = False, False, [], None
        self._streamed, self._started_streaming, self._speech_heard = "", False, False
        if w.endpoint:
            self._no_speech = asyncio.get_running_loop().call_later(w.no_speech_timeout_s, self._no_speech_heard)

    async def _chunk(self, data: dict, payload: Optional[bytes]) -> None:
        if self.stream is None:
            if self._ignoring or (self._answered and self.language is not None):
                self._ignore()  # the transcript of this command was sent: what follows is its tail
                return
            raise Malformed("no_audio_start", "audio-chunk before audio-start: send transcribe, then audio-start")
        fmt = _audio_format(data, "audio-chunk")
        if fmt != self.format:
            raise Malformed("bad_audio", f"audio-chunk is {fmt[0]} Hz / {fmt[1]} bytes / {fmt[2]} channels, "
                                         f"audio-start said {self.format[0]} Hz / {self.format[1]} bytes / "
                                         f"{self.format[2]} channels")
        if self._answered:
            self._ignore()
            return
        rate, width, channels = fmt
        audio = payload or b""
        audio = audio[: len(audio) - len(audio) % (width * channels)]
        await self.stream.push(self._resample(pcm_to_float(audio, width, channels)))

    def _ignore(self) -> None:
        if not self._ignoring:  # counted once per command: audio after its transcript is expected
            self._ignoring = True
            self.server.ignored_chunks += 1

    def _no_speech_heard(self) -> None:
        self._no_speech = None
        if self.stream is not None and not self._speech_heard and not self._answered:
            self._ending = asyncio.get_running_loop().create_task(self._end_stream("no speech"))

    async def _end_stream(self, reason: str) -> None:
        """The utterance is over: its final (or nothing) becomes the transcript; the stream ends."""
        stream, claim, admission, command = self.stream, self.claim, self.admission, self._command
        self.stream = self.claim = self.admission = None
        if self._no_speech is not None:
            self._no_speech.cancel()
            self._no_speech = None
        if stream is None:
            return
        tail = self._resample.flush() if self._resample is not None else np.zeros(0, np.float32)
        if len(tail):
            await stream.push(tail)
        s = self.net.settings
        await stream.finish(max(s.pipeline.drain_timeout_s, s.server.idle_timeout_s) + 1)
        await self._relay.settled()  # a final becomes the transcript
        claim.emitter.detach(self._relay)
        self.net.registry.release(claim, stream.next_utterance_id)
        admission.release()
        if command == self._command and not self._answered:
            await self._send_transcript()  # no final came (no speech), or it waited for audio-stop
        log.info("Wyoming utterance from %s ended (%s)", self.peer, reason,
                 extra={"EVENT": "wyoming_transcript", "DEVICE_ID": claim.device_id, "PEER": self.peer})

    # ------------------------------------------------------------------ events from the stream (on the loop)
    async def _on_event(self, stamped: Stamped) -> None:
        event = stamped.event
        if self._answered:
            return
        if event.type == "speech_start":
            self._speech_heard = True
        elif event.type == "partial":
            await self._stream_text(self._text(event.result.text), self._language_of(event.result))
        elif event.type == "final":
            self._finals.append(stamped)
            if self.server.w.endpoint:
                await self._send_transcript()
                if self.stream is not None and self._ending is None:
                    self._ending = asyncio.get_running_loop().create_task(self._end_stream("end of speech"))

    def _text(self, latest: str = "") -> str:
        """This command's text so far: its finals' and the open utterance's."""
        return " ".join(t for t in [*(f.event.result.text for f in self._finals), latest] if t)

    async def _send_transcript(self) -> None:
        from wyoming.asr import Transcript, TranscriptStop

        if self._answered:
            return
        self._answered = True
        self.server.transcripts += 1
        stamped = self._finals[-1] if self._finals else None
        final = stamped.event if stamped is not None else None
        text = self._text()
        language = self._language_of(final.result if final is not None else None)
        await self._stream_text(text, language)
        await self._write(TranscriptStop().event())
        transcript = Transcript(text=text, language=language).event()
        if final is not None:
            r = final.result
            transcript.data.update(
                language_scores=_rounded(r.language_scores), emotion=r.emotion, emotion_scores=_rounded(r.emotion_scores),
                event=r.event, event_scores=_rounded(r.event_scores), confidence=round(r.confidence, 4),
                utterance_id=final.utterance_id, device_id=stamped.device_id,
                audio_start=round(self._finals[0].event.audio_start, 3), audio_end=round(final.audio_end, 3),
                timing={k: round(v, 1) for k, v in (("decode_ms", final.decode_ms), ("queue_ms", final.queue_ms),
                                                   ("endpoint_delay_ms", final.endpoint_delay_ms)) if v is not None})
        await self._write(transcript)

    async def _stream_text(self, text: str, language: Optional[str]) -> None:
        """transcript-start the first time, then a transcript-chunk of whatever `text` adds to what was sent."""
        from wyoming.asr import TranscriptChunk, TranscriptStart

        if not self._started_streaming:
            self._started_streaming = True
            await self._write(TranscriptStart(language=language).event())
        if text.startswith(self._streamed) and len(text) > len(self._streamed):
            await self._write(TranscriptChunk(text=text[len(self._streamed):]).event())
            self._streamed = text

    def _language_of(self, result) -> Optional[str]:
        """The language as the client named it when it asked for one the model has; else the detected one."""
        if self.language and model_language(self.language) not in ("auto", None):
            return self.language
        return None if result is None or result.language == "nospeech" else result.language

    # ------------------------------------------------------------------ writing
    async def _write(self, event: Event) -> None:
        async with self._write_lock:
            try:
                await async_write_event(event, self.writer)
            except (ConnectionError, RuntimeError):
                self._running = False

    async def _malformed(self, exc: Malformed) -> None:
        server = self.server
        server.malformed[exc.code] = server.malformed.get(exc.code, 0) + 1
        server.errors_log(logging.INFO, "Wyoming client %s: %s: %s", self.peer, exc.code, exc.text)
        await self._error(exc.code, exc.text)

    async def _error(self, code: str, text: str) -> None:
        from wyoming.error import Error

        await self._write(Error(text=text, code=code).event())


def _rounded(scores: dict) -> dict:
    return {k: round(v, 4) for k, v in scores.items()}


def _host_name() -> str:
    import socket

    return "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:40] or "box"
