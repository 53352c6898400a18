"""Home Assistant's Wyoming speech-to-text protocol, on the shared recognizer: each connection is one
more stream (a pipeline of its own on a lane of the shared decoder), like a WebSocket device.

    describe                        -> info: one ASR program, the languages HA asks for
    transcribe (language)           -> the utterance's options
    audio-start, audio-chunk...     -> any rate / width / channels, converted to 16 kHz mono
    (our VAD hears the end)         -> transcript-start, transcript-chunk..., transcript-stop, transcript
    audio-stop                      -> (without endpointing, or before it) the same, from what was sent

With `server.wyoming.endpoint` the program says requires_external_vad false: Home Assistant then
lets this server decide when the command ended, and takes the transcript the moment it comes. The
transcript's data also carries language_scores, emotion, emotion_scores, event, event_scores,
confidence and timing; a client that does not know them ignores them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from typing import Dict, Optional
from urllib.parse import urlparse

import numpy as np
from wyoming.server import AsyncEventHandler

from agent import __version__
from agent.errors import AgentError, ConfigError
from agent.events import Emitter, Stamped
from agent.server.loop import close_loop
from agent.server.stream import NetworkStream

log = logging.getLogger(__name__)

# What Home Assistant asks for, and the model's language for each. HA's intents use the regional
# Chinese codes; Hong Kong's spoken Chinese is Cantonese.
LANGUAGES = {"zh": "zh", "zh-cn": "zh", "zh-tw": "zh", "zh-hk": "yue", "yue": "yue", "en": "en", "ja": "ja",
             "ko": "ko"}
MAX_HEADER_BYTES = 64 * 1024  # an event's JSON line; HA's are a few hundred bytes
MAX_DATA_BYTES = 64 * 1024
RATE = 16000


def model_language(requested: Optional[str]) -> str:
    """The model's language for what a client asked ('en-US', 'zh-HK', ...); auto for none or unknown."""
    if not requested:
        return "auto"
    code = requested.lower().replace("_", "-")
    return LANGUAGES.get(code) or LANGUAGES.get(code.split("-")[0], "auto")


class WyomingServer:
    """Listens on server.wyoming.uri from a thread of its own; `stop()` finishes every utterance."""

    def __init__(self, settings, recognizer, decoder, session: str, *, sinks: list = (), progress=None):
        self.settings = settings
        self.w = settings.server.wyoming
        self.recognizer = recognizer
        self.decoder = decoder
        self.session = session
        self.sinks = list(sinks)
        self.progress = progress
        self.handlers: set = set()
        self.transcripts = 0
        self.refused = 0
        self._devices: Dict[str, tuple] = {}  # device -> (last seq, next utterance id)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server = None
        self._zeroconf = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._main, name="wyoming", daemon=True)

    # ------------------------------------------------------------------ life cycle
    def start(self):
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        log.info("Wyoming speech-to-text at %s%s", self.w.uri, " (announced by zeroconf)" if self._zeroconf else "",
                 extra={"EVENT": "wyoming_ready"})

    def _main(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._listen())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        close_loop(self._loop)

    async def _listen(self):
        from wyoming.server import AsyncServer

        try:
            self._server = AsyncServer.from_uri(self.w.uri)
            await self._server.start(self._handler)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"server.wyoming.uri: cannot listen on {self.w.uri}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        parsed = urlparse(self.w.uri)
        if self.w.zeroconf and parsed.scheme == "tcp":
            await self._announce(parsed.port)

    async def _announce(self, port: int):
        try:
            from wyoming.zeroconf import HomeAssistantZeroconf

            self._zeroconf = HomeAssistantZeroconf(port=port, name=f"stt-agent-{_host_name()}")
            await self._zeroconf.register_server()
        except Exception as exc:  # noqa: BLE001 - no multicast here: Home Assistant can be given host and port
            self._zeroconf = None
            log.warning("Wyoming: zeroconf announcement failed (%s); add the service in Home Assistant by host "
                        "and port, or set server.wyoming.zeroconf: false", exc, extra={"EVENT": "wyoming_zeroconf"})

    def stop(self, timeout: float) -> bool:
        if self._loop is None or not self._thread.is_alive():
            return True
        future = asyncio.run_coroutine_threadsafe(self._shutdown(timeout), self._loop)
        try:
            drained = future.result(timeout + 5)
        except Exception:  # noqa: BLE001
            log.exception("stopping the Wyoming server failed")
            drained = False
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        return drained

    async def _shutdown(self, timeout: float) -> bool:
        if self._zeroconf is not None:
            try:
                await self._zeroconf._aiozc.async_close()
            except Exception:  # noqa: BLE001
                pass
        drained = all(await asyncio.gather(*(h.finish(timeout) for h in list(self.handlers))))
        await self._server.stop()
        return drained

    def _handler(self, reader, writer):
        return WyomingHandler(self, reader, writer)

    def stats(self) -> dict:
        """For health: connections open now, transcripts sent, connections refused."""
        return {"connections": len(self.handlers), "transcripts": self.transcripts, "refused": self.refused}

    # ------------------------------------------------------------------ for the handlers
    def info(self):
        from wyoming.info import AsrModel, AsrProgram, Attribution, Info

        attribution = Attribution(name="FunAudioLLM SenseVoiceSmall, served by stt-agent",
                                  url="https://github.com/FunAudioLLM/SenseVoice")
        model_name = self.recognizer.info["model_dir"].rstrip("/").rsplit("/", 1)[-1]
        model = AsrModel(name=model_name, attribution=attribution, installed=True,
                         description="SenseVoiceSmall: text, emotion, language and audio event from one pass",
                         version=self.recognizer.info.get("precision"), languages=list(LANGUAGES))
        program = AsrProgram(name="stt-agent", attribution=attribution, installed=True,
                             description="Speech to text with emotion, language and event scores", version=__version__,
                             models=[model], supports_transcript_streaming=True,
                             requires_external_vad=not self.w.endpoint)
        return Info(asr=[program])

    def device_of(self, peer: str) -> str:
        if self.w.device_id:
            return self.w.device_id
        return "wyoming-" + "".join(c if c.isalnum() else "-" for c in peer.rsplit(":", 1)[0])


class WyomingHandler(AsyncEventHandler):
    """One Wyoming connection (Home Assistant opens one per utterance)."""

    def __init__(self, server: WyomingServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        super().__init__(reader, writer)
        self.server = server
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "local"
        self.language: Optional[str] = None  # what the client asked for, None before transcribe
        self.format: Optional[tuple] = None  # (rate, width, channels) after audio-start
        self.stream: Optional[NetworkStream] = None
        self.resampler = None
        self._answered = False  # the transcript of this transcribe was sent
        self._streamed = ""  # text sent so far as transcript-chunks
        self._started_streaming = False
        self._speech_heard = False
        self._audio_started_at = 0.0
        self._write_lock = asyncio.Lock()
        self._is_running = True
        # The pipeline's events, in order, handled one at a time on this loop (see _consume)
        self._events: asyncio.Queue = asyncio.Queue()
        self._consumer = asyncio.get_event_loop().create_task(self._consume())

    # ------------------------------------------------------------------ the connection
    async def run(self):
        """The wyoming package's handler interface: read events until the client leaves."""
        server = self.server
        if len(server.handlers) >= 4 * server.settings.server.max_streams:
            server.refused += 1
            await self._error("busy", "too many Wyoming connections; try again later")
            self.writer.close()
            return
        server.handlers.add(self)
        try:
            while self._is_running:
                try:
                    event = await asyncio.wait_for(self._read_event(), self._timeout())
                except asyncio.TimeoutError:
                    if self.stream is not None and not self._answered and self._waiting_too_long():
                        await self._end_stream(reason="no speech")
                        continue
                    if self.stream is None or self._answered:
                        break  # idle: nothing asked of us
                    continue
                except _Refused as exc:
                    await self._error(exc.code, exc.message)
                    break
                if event is None:
                    break
                if not await self.handle_event(event):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: its utterance still ends below
        finally:
            await self.finish(self.server.settings.pipeline.drain_timeout_s)
            server.handlers.discard(self)
            self._consumer.cancel()
            self.writer.close()

    def _timeout(self) -> float:
        if self.stream is not None and not self._answered and self.server.w.endpoint:
            return 0.5  # checks the no-speech timeout while audio flows
        return self.server.settings.server.idle_timeout_s

    def _waiting_too_long(self) -> bool:
        return (self.server.w.endpoint and not self._speech_heard
                and time.monotonic() - self._audio_started_at > self.server.w.no_speech_timeout_s)

    async def _read_event(self):
        """One event, with bounds the wyoming package's reader does not have (a 1 GB payload_length)."""
        from wyoming.event import Event

        try:
            line = await self.reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            raise _Refused("too_large", f"an event header is over {MAX_HEADER_BYTES} bytes") from None
        if not line:
            return None
        try:
            header = json.loads(line)
            kind = header["type"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise _Refused("bad_event", "an event header must be a JSON object with a type") from None
        data = header.get("data") or {}
        data_length = int(header.get("data_length") or 0)
        payload_length = int(header.get("payload_length") or 0)
        if data_length > MAX_DATA_BYTES or payload_length > self.server.settings.server.max_frame_bytes:
            raise _Refused("too_large", f"{kind}: data {data_length} / payload {payload_length} bytes is over the "
                                        f"limits ({MAX_DATA_BYTES} / server.max_frame_bytes "
                                        f"{self.server.settings.server.max_frame_bytes})")
        if data_length > 0:
            try:
                data = {**data, **json.loads(await self.reader.readexactly(data_length))}
            except (ValueError, RecursionError):
                raise _Refused("bad_event", f"{kind}: its data is not a JSON object") from None
        payload = await self.reader.readexactly(payload_length) if payload_length > 0 else None
        return Event(type=str(kind), data=data if isinstance(data, dict) else {}, payload=payload)

    async def handle_event(self, event) -> bool:
        from wyoming.asr import Transcribe
        from wyoming.audio import AudioChunk, AudioStart, AudioStop
        from wyoming.info import Describe

        if Describe.is_type(event.type):
            await self._write(self.server.info().event())
            return True
        if Transcribe.is_type(event.type):
            self.language = Transcribe.from_event(event).language or "auto"
            self._answered = False
            return True
        if AudioStart.is_type(event.type):
            if self.language is None:
                await self._error("no_transcribe", "send transcribe (with the language) before audio-start")
                return True
            start = AudioStart.from_event(event)
            return await self._open(start.rate, start.width, start.channels)
        if AudioChunk.is_type(event.type):
            if self.stream is None:
                await self._error("no_audio_start", "audio-chunk before audio-start: send transcribe, then audio-start")
                return True
            chunk = AudioChunk.from_event(event)
            if (chunk.rate, chunk.width, chunk.channels) != self.format:
                await self._error("bad_audio", f"audio-chunk is {chunk.rate} Hz / {chunk.width} bytes / "
                                               f"{chunk.channels} channels, audio-start said {self.format}")
                return True
            if not self._answered:
                self.stream.push(self._convert(chunk.audio or b""))
            return True
        if AudioStop.is_type(event.type):
            if self.stream is not None:
                await self._end_stream(reason="audio-stop")
            elif self.language is not None and not self._answered:
                await self._send_transcript(None)  # transcribe with no audio at all: nothing was said
            return True
        return True  # events meant for others (ping, ...) are ignored, as the protocol asks

    async def _open(self, rate: int, width: int, channels: int) -> bool:
        if width not in (1, 2, 4) or channels < 1 or not 8000 <= rate <= 192000:
            await self._error("bad_audio", f"audio-start: {rate} Hz, {width}-byte samples, {channels} channels "
                                           "(expected 8000-192000 Hz, 1, 2 or 4 bytes, 1 or more channels)")
            return False
        if self.stream is not None:
            await self._end_stream(reason="audio-start")  # a new utterance on the same connection
        server = self.server
        try:
            options = None
            if model_language(self.language) != "auto":
                options = server.recognizer.options(language=model_language(self.language))
        except AgentError as exc:
            await self._error("bad_language", str(exc))
            return False
        self.format = (rate, width, channels)
        self.resampler = None
        if rate != RATE:
            import soxr

            self.resampler = soxr.ResampleStream(rate, RATE, 1, dtype="float32", quality="HQ")
        device = server.device_of(self.peer)
        last_seq, next_uid = server._devices.get(device, (0, 1))
        sink = _WyomingSink(asyncio.get_running_loop(), self)
        emitter = Emitter(device, server.session, [sink, *server.sinks], last_seq=last_seq)
        segmenter = server.settings.segmenter
        if server.w.endpoint:
            segmenter = dataclasses.replace(segmenter, endpoint_silence_ms=server.w.endpoint_silence_ms,
                                            tail_pad_ms=min(segmenter.tail_pad_ms, server.w.endpoint_silence_ms))
        self.stream = NetworkStream(device, self.peer, server.settings, server.recognizer, server.decoder, emitter,
                                    options=options, first_utterance_id=next_uid, segmenter_settings=segmenter)
        self._answered, self._streamed, self._started_streaming, self._speech_heard = False, "", False, False
        self._audio_started_at = time.monotonic()
        self.stream.start()
        return True

    def _convert(self, audio: bytes) -> np.ndarray:
        rate, width, channels = self.format
        frame = width * channels
        audio = audio[: len(audio) - len(audio) % frame]
        if width == 1:
            samples = (np.frombuffer(audio, np.uint8).astype(np.float32) - 128) * 256
        elif width == 2:
            samples = np.frombuffer(audio, "<i2").astype(np.float32)
        else:
            samples = np.frombuffer(audio, "<i4").astype(np.float32) / 65536
        if channels > 1:
            samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
        return samples if self.resampler is None else self.resampler.resample_chunk(samples)

    async def _end_stream(self, reason: str):
        """The utterance is over: its final (or nothing) becomes the transcript; the stream ends."""
        stream, self.stream = self.stream, None
        if stream is None:
            return
        if self.resampler is not None:
            stream.push(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        stream.finish()
        await stream.wait(stream.drain_timeout_s + 1)  # a lost client or a stop is bounded by finish()
        await asyncio.sleep(0)  # the events the pipeline thread handed over last are queued now...
        await self._events.join()  # ...and handled (the final becomes the transcript)
        self.server._devices[stream.device_id] = (stream.emitter.last_seq, stream.next_utterance_id)
        if not self._answered:
            await self._send_transcript(None)  # no speech was heard
        log.info("Wyoming utterance from %s ended (%s)", self.peer, reason,
                 extra={"EVENT": "wyoming_transcript", "DEVICE_ID": stream.device_id, "PEER": self.peer})

    async def finish(self, timeout: float) -> bool:
        """Server stop or a lost client: the utterance ends and its final is delivered (MQTT)."""
        self._is_running = False
        if self.stream is None:
            return True
        try:
            await asyncio.wait_for(self._end_stream(reason="the connection ended"), timeout + 2)
            return True
        except (asyncio.TimeoutError, ConnectionError):
            return False

    # ------------------------------------------------------------------ events from the pipeline (on the loop)
    def queue_event(self, stamped: Stamped):
        self._events.put_nowait(stamped)

    async def _consume(self):
        while True:
            stamped = await self._events.get()
            try:
                await self.on_event(stamped)
            except Exception:  # noqa: BLE001 - one bad event must not end the connection's transcripts
                log.exception("Wyoming: handling a %s event failed", stamped.event.type)
            finally:
                self._events.task_done()

    async def on_event(self, stamped: Stamped):
        event = stamped.event
        if self._answered:
            return
        if event.type == "speech_start":
            self._speech_heard = True
        elif event.type == "partial":
            await self._stream_text(event.result.text, self._language_of(event.result))
        elif event.type == "final":
            if self.server.w.endpoint or self.stream is None:
                await self._send_transcript(stamped)
                if self.stream is not None:
                    asyncio.get_running_loop().create_task(self._end_stream(reason="end of speech"))

    async def _send_transcript(self, stamped: Optional[Stamped]):
        from wyoming.asr import Transcript, TranscriptStop

        if self._answered:
            return
        self._answered = True
        self.server.transcripts += 1
        final = stamped.event if stamped is not None else None
        text = final.result.text if final is not None else ""
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
                audio_start=round(final.audio_start, 3), audio_end=round(final.audio_end, 3),
                timing={k: round(v, 1) for k, v in (("decode_ms", final.decode_ms), ("queue_ms", final.queue_ms),
                                                   ("endpoint_delay_ms", final.endpoint_delay_ms)) if v is not None})
        await self._write(transcript)

    async def _stream_text(self, text: str, language: Optional[str]):
        """transcript-start the first time, then a transcript-chunk of whatever `text` adds to what was sent."""
        from wyoming.asr import TranscriptChunk, TranscriptStart

        if not self._started_streaming:
            self._started_streaming = True
            await self._write(TranscriptStart(language=language).event())
        if text.startswith(self._streamed) and len(text) > len(self._streamed):
            await self._write(TranscriptChunk(text=text[len(self._streamed):]).event())
            self._streamed = text

    def _language_of(self, result) -> Optional[str]:
        """The language as the client named it when it asked for one; else the detected one."""
        if self.language and self.language != "auto" and model_language(self.language) != "auto":
            return self.language
        return None if result is None or result.language == "nospeech" else result.language

    # ------------------------------------------------------------------ writing
    async def _write(self, event):
        from wyoming.event import async_write_event

        async with self._write_lock:
            try:
                await async_write_event(event, self.writer)
            except (ConnectionError, RuntimeError):
                self._is_running = False

    async def _error(self, code: str, text: str):
        from wyoming.error import Error

        log.info("Wyoming client %s: %s: %s", self.peer, code, text, extra={"EVENT": "wyoming_error"})
        await self._write(Error(text=text, code=code).event())


class _WyomingSink:
    """A stream's events to its Wyoming handler, on the server's loop."""

    def __init__(self, loop, handler: WyomingHandler):
        self._loop = loop
        self._handler = handler

    def publish(self, stamped: Stamped) -> None:
        if stamped.event.type in ("partial", "final", "speech_start"):
            self._loop.call_soon_threadsafe(self._handler.queue_event, stamped)

    def close(self) -> None:
        pass


class _Refused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _rounded(scores: dict) -> dict:
    return {k: round(v, 4) for k, v in scores.items()}


def _host_name() -> str:
    import socket

    return "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:40] or "box"
