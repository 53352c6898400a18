"""The accept side of every listening socket: a bound on connections that have not yet said who they are.

A connection is "pending" from accept until its protocol says it started (an HTTP request's headers
arrived, a Wyoming client sent a real request). Pending connections are at most `max_pending` and
live at most `timeout_s`. At the cap, the oldest pending one is closed to make room: a device that
speaks completes its handshake in milliseconds, so the one that has waited longest is the one that
never will (1,100 half-sent requests used to take the server to its 1024-descriptor limit, and a good
device waited 6 s to connect).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Callable, Dict

from agent.mqtt.health import RateLimitedLog

log = logging.getLogger(__name__)


class Gate:
    """Wraps a protocol factory (aiohttp's server, asyncio's StreamReaderProtocol) for loop.create_server."""

    def __init__(self, name: str, factory: Callable[[], asyncio.BaseProtocol], *, max_pending: int,
                 timeout_s: float):
        self.name = name
        self._factory = factory
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self._pending: "collections.OrderedDict[object, _Gated]" = collections.OrderedDict()  # oldest first
        self._open: Dict[object, _Gated] = {}  # transport -> its protocol, every open connection
        self.evicted = 0  # pending connections closed to make room for a newer one
        self.expired = 0  # pending connections closed after timeout_s
        self._log = RateLimitedLog(log, 10.0)

    def __call__(self) -> asyncio.Protocol:
        return _Gated(self, self._factory())

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def connections(self) -> int:
        return len(self._open)

    def started(self, transport) -> None:
        """The connection behind `transport` said who it is: it no longer counts as pending."""
        gated = self._pending.pop(transport, None)
        if gated is not None:
            gated.settle()

    def close_all(self) -> None:
        for gated in list(self._open.values()):
            gated.abort()

    # ------------------------------------------------------------------ for _Gated
    def _accepted(self, gated: "_Gated") -> None:
        while len(self._pending) >= self.max_pending:
            _, oldest = self._pending.popitem(last=False)
            self.evicted += 1
            self._log(logging.WARNING, "%s: %d connection(s) that sent no request were closed to make room "
                                       "(server.max_pending %d)", self.name, self.evicted, self.max_pending)
            oldest.abort()
        self._pending[gated.transport] = gated
        self._open[gated.transport] = gated

    def _expired(self, gated: "_Gated") -> None:
        if self._pending.pop(gated.transport, None) is not None:
            self.expired += 1
            self._log(logging.INFO, "%s: %d connection(s) closed for sending no request within "
                                    "server.handshake_timeout_s (%g s)", self.name, self.expired, self.timeout_s)
            gated.abort()

    def _lost(self, gated: "_Gated") -> None:
        self._pending.pop(gated.transport, None)
        self._open.pop(gated.transport, None)


class _Gated(asyncio.Protocol):
    """The inner protocol, counted: every call is passed through."""

    def __init__(self, gate: Gate, inner: asyncio.Protocol):
        self._gate = gate
        self._inner = inner
        self.transport = None
        self._timer = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._gate._accepted(self)
        self._timer = asyncio.get_running_loop().call_later(self._gate.timeout_s, self._gate._expired, self)
        self._inner.connection_made(transport)

    def settle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self) -> None:
        self.settle()
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received()

    def connection_lost(self, exc) -> None:
        self.settle()
        self._gate._lost(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
