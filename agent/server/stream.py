"""One connected device: its audio through a pipeline of its own into the shared decoder, its events
back to it over the socket and to the agent's other sinks (MQTT)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from typing import Optional

from agent.audio.push_source import PushSource
from agent.events import Emitter, Stamped
from agent.listening import Segmenter, load_vad
from agent.mqtt.health import LatencyWindow
from agent.pipeline.live import LivePipeline
from agent.wire import body, dumps

log = logging.getLogger(__name__)
RATE = 16000
# Messages waiting for a slow client. Partials go first when it fills; a client that cannot take its
# finals at this depth (minutes of speech) is closed: they still reached MQTT.
SEND_QUEUE = 512


class SocketSink:
    """Sends a stream's events to its client from the server's event loop, whichever thread emits them."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: collections.deque = collections.deque()
        self._ready = asyncio.Event()
        self.closed = False
        self.overflowed = False
        self.dropped_partials = 0

    def publish(self, stamped: Stamped) -> None:
        if self.closed:
            return
        text = dumps(body(stamped)).decode("utf-8")
        self._loop.call_soon_threadsafe(self._put, text, stamped.event.type == "partial")

    def _put(self, text: str, partial: bool):  # on the loop
        if self.closed:
            return
        if len(self._queue) >= SEND_QUEUE:
            for i, (_, was_partial) in enumerate(self._queue):
                if was_partial:
                    del self._queue[i]
                    self.dropped_partials += 1
                    break
            else:
                self.overflowed = True  # the client takes no finals: the handler closes it
        self._queue.append((text, partial))
        self._ready.set()

    async def send_all(self, connection):
        """Runs for the connection's life: sends events as they come; after close(), what is left."""
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                while self._queue:
                    text, _ = self._queue.popleft()
                    await connection.send(text)
                if self.closed:
                    return
                await self._ready.wait()
                self._ready.clear()
        except ConnectionClosed:
            self.closed = True

    def close(self) -> None:
        """Nothing more will be queued; send_all sends what is queued, then returns."""
        self.closed = True
        self._ready.set()


class NetworkStream:
    """The pipeline of one device's connection, on a thread of its own (VAD and segmenter per frame)."""

    def __init__(self, device_id: str, peer: str, settings, recognizer, decoder, emitter: Emitter, *,
                 options, first_utterance_id: int = 1, segmenter_settings=None):
        self.device_id = device_id
        self.peer = peer
        self.started = time.monotonic()
        self.source = PushSource(f"{device_id}@{peer}", block_ms=settings.audio.block_ms,
                                 ring_seconds=max(settings.audio.ring_seconds, settings.server.max_ahead_s + 2))
        self.emitter = emitter
        self.latency_ms = LatencyWindow(200)
        self.finals = 0
        self.emitter.sinks.append(self)  # counts finals and their latency for health
        segmenter = Segmenter.from_settings(load_vad(settings.vad), segmenter_settings or settings.segmenter,
                                            settings.vad, first_utterance_id=first_utterance_id)
        # A client that sends stop waits for its last final: with the model behind (every stream's finals
        # queued), that can take longer than drain_timeout_s, which bounds a shutdown, not a client's wait.
        self.drain_timeout_s = max(settings.pipeline.drain_timeout_s, settings.server.idle_timeout_s)
        self.pipeline = LivePipeline(self.source, segmenter, recognizer, self.emitter,
                                     dataclasses.replace(settings.pipeline, drain_timeout_s=self.drain_timeout_s),
                                     scheduler=decoder)
        self.pipeline.options = options
        self._stop = threading.Event()
        self.drained: Optional[bool] = None
        self._thread = threading.Thread(target=self._run, name=f"stream-{device_id}", daemon=True)

    # the stream's own sink: health numbers
    def publish(self, stamped: Stamped) -> None:
        if stamped.event.type == "final":
            self.finals += 1
            self.latency_ms.add(stamped.event.endpoint_delay_ms)

    def close(self) -> None:
        pass

    def start(self):
        self._thread.start()

    def _run(self):
        try:
            self.drained = self.pipeline.run(self._stop)
        except Exception:
            log.exception("stream of %s failed", self.device_id)
            self.drained = False

    def push(self, samples) -> None:
        self.source.push(samples)

    def seconds_pushed(self) -> float:
        return self.source.pushed / RATE

    def buffered_seconds(self) -> float:
        """Audio received and not yet through the VAD: bounded by the ring (the handler waits for room)."""
        return (self.source.capacity() - self.source.room()) / RATE

    def finish(self):
        """No more audio: the open utterance ends and its final is decoded (the thread ends then)."""
        self.source.finish()

    def abort(self):
        """Stop at once (server shutdown past its bound): pending finals are still drained in the pipeline."""
        self._stop.set()

    async def wait(self, timeout: float) -> bool:
        """Until the pipeline thread is done (its finals delivered); False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self._thread.is_alive()

    @property
    def next_utterance_id(self) -> int:
        return self.pipeline.segmenter.next_utterance_id
