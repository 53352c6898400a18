"""One connected device's stream on the network loop: a bounded inbox drained into its Listener, and
the socket its events go back to.

    socket -> protocol (bytes to samples) -> await stream.push(samples) -> Listener.feed -> scheduler
    scheduler -> future -> Listener -> Emitter -> SocketSink (this client) + MQTT

`push` waits while the inbox is full: the handler stops reading its socket, and TCP flow control
slows the sender. Nothing is buffered beyond the inbox, nothing is overwritten.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from typing import Optional

import numpy as np

from agent.audio.format import RATE
from agent.events import Stamped
from agent.mqtt.health import LatencyWindow
from agent.pipeline.listener import Listener
from agent.wire import body, dumps

log = logging.getLogger(__name__)
# Inbox items (a WebSocket message or a Wyoming chunk each; 20-100 ms of audio as devices send them):
# at most ~3 s of audio waits here, while the VAD takes well under 1 ms per 32 ms frame.
INBOX = 32
# Messages waiting for a slow client. Partials go first when it fills; a client that cannot take its
# finals at this depth (minutes of speech) is closed: they still reached MQTT.
SEND_QUEUE = 512
_END = object()
# server.max_session_s: a connection past it is closed with this code between two utterances, and the device
# reconnects, perhaps to another replica (docs/SCALING.md).
SESSION_LIMIT_CODE = 4001
# Each connection's limit is shortened by up to this share at random: 500 devices that connected at boot
# within a second would otherwise all reconnect within that second, every max_session_s.
SESSION_JITTER = 0.1


class SessionLimit:
    """server.max_session_s for one connection. `due()` once the (jittered) limit has passed: the caller
    closes at the next pause between utterances; `overdue()` one utterance's maximum later, when a stream
    that never pauses (a TV on) is closed anyway, its open utterance finished."""

    def __init__(self, max_session_s: float, max_utterance_s: float):
        self.max_session_s = max_session_s
        self.started = time.monotonic()
        self._soft = max_session_s * (1.0 - SESSION_JITTER * random.random())  # noqa: S311 - not a secret
        self._hard = self._soft + max_utterance_s

    def due(self) -> bool:
        return bool(self.max_session_s) and time.monotonic() - self.started > self._soft

    def overdue(self) -> bool:
        return bool(self.max_session_s) and time.monotonic() - self.started > self._hard

    @property
    def reason(self) -> str:
        return f"server.max_session_s ({self.max_session_s:g} s) reached: reconnect"


class NetworkStream:
    """Feeds one Listener from the network loop; its own sink counts finals and their latency (health)."""

    def __init__(self, device_id: str, peer: str, listener: Listener):
        self.device_id = device_id
        self.peer = peer
        self.listener = listener
        self.started = time.monotonic()
        self.samples_in = 0
        self.finals = 0
        self.latency_ms = LatencyWindow(200)
        self.failed: Optional[BaseException] = None
        self._inbox: asyncio.Queue = asyncio.Queue(INBOX)
        self._task = asyncio.get_running_loop().create_task(self._drain())
        listener.emitter.attach(self)

    # ------------------------------------------------------------------ the handler's side
    async def push(self, samples: np.ndarray) -> None:
        """Audio in; waits while the Listener is behind (back-pressure to the socket)."""
        if len(samples):
            self.samples_in += len(samples)
            await self._inbox.put(samples)

    def command(self, command: dict) -> bool:
        """A command applied between audio chunks, in order; False if the inbox is full right now."""
        try:
            self._inbox.put_nowait(command)
            return True
        except asyncio.QueueFull:
            return False

    async def at_rest(self) -> bool:
        """Whether the stream is between utterances once everything pushed so far was fed (the segmenter's
        at_rest): a connection closed now cuts no utterance. False if the stream has stopped feeding."""
        if self._task.done():
            return False
        joined = asyncio.ensure_future(self._inbox.join())
        await asyncio.wait({joined, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not joined.done():
            joined.cancel()
            return False
        return self.listener.segmenter.at_rest

    def seconds_in(self) -> float:
        return self.samples_in / RATE

    async def finish(self, timeout: float) -> bool:
        """No more audio: the open utterance ends; True once every final reached the sinks in `timeout`."""
        if not self._task.done():
            await self._inbox.put(_END)
            await self._task
        self.listener.close()
        delivered = await self.listener.delivered(timeout)
        self.listener.emitter.detach(self)
        return delivered

    @property
    def next_utterance_id(self) -> int:
        return self.listener.segmenter.next_utterance_id

    # ------------------------------------------------------------------ the stream's sink: health numbers
    def publish(self, stamped: Stamped) -> None:
        if stamped.event.type == "final":
            self.finals += 1
            if stamped.event.endpoint_delay_ms is not None:
                self.latency_ms.add(stamped.event.endpoint_delay_ms)

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ the inbox, in order
    async def _drain(self) -> None:
        listener = self.listener
        while True:
            item = await self._inbox.get()
            try:
                if item is _END:
                    listener.finish()
                    return
                if isinstance(item, dict):
                    listener.apply(item)
                else:
                    listener.feed(item)
            except Exception as exc:  # noqa: BLE001 - one stream's fault must not stop the loop
                log.exception("stream of device %s failed", self.device_id)
                self.failed = exc
                listener.finish()
                return
            finally:
                self._inbox.task_done()  # at_rest() waits for the inbox to be fed


class SocketSink:
    """A stream's events to its WebSocket client, sent from the loop, whichever thread emits them."""

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
        # Always through the loop's queue, even from the loop itself: events come from the loop (VAD events,
        # errors) and from the decode thread (results), and one queue keeps them in seq order.
        self._loop.call_soon_threadsafe(self._put, text, stamped.event.type == "partial")

    def _put(self, text: str, partial: bool) -> None:  # on the loop
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

    async def send_all(self, ws) -> None:
        """Runs for the connection's life: sends events as they come; after close(), what is left."""
        try:
            while True:
                while self._queue:
                    text, _ = self._queue.popleft()
                    await ws.send_str(text)
                if self.closed:
                    return
                await self._ready.wait()
                self._ready.clear()
        except (ConnectionError, RuntimeError):  # the client is gone (aiohttp: ClientConnectionResetError)
            self.closed = True

    def close(self) -> None:
        """Nothing more will be queued; send_all sends what is queued, then returns."""
        self.closed = True
        self._ready.set()


class EventRelay:
    """A sink that hands a stream's events of some types to `handle(stamped)` on the loop, one at a time and in
    seq order, whichever thread emitted them (a protocol that answers in its own words: Wyoming, realtime)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, types, handle, name: str):
        self._loop = loop
        self._types = frozenset(types)
        self._handle = handle
        self._name = name
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task = loop.create_task(self._run())

    def publish(self, stamped: Stamped) -> None:
        if stamped.event.type in self._types:
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, stamped)
            except RuntimeError:  # the loop is closed: the process is stopping
                pass

    def close(self) -> None:
        pass

    async def settled(self) -> None:
        """Until every event handed over so far (the decode thread's last ones included) was handled."""
        await asyncio.sleep(0)  # callbacks queued by call_soon_threadsafe before now run first
        await self._queue.join()

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            stamped = await self._queue.get()
            try:
                await self._handle(stamped)
            except ConnectionError:
                pass  # the client is gone: the event still reached the other sinks (MQTT)
            except Exception:  # noqa: BLE001 - one bad event must not end the connection's answers
                log.exception("%s: handling a %s event failed", self._name, stamped.event.type)
            finally:
                self._queue.task_done()
