"""JSON lines on a stream (stdout): one documented event body (agent/wire.py) per line."""

from __future__ import annotations

import threading
from typing import Callable, Optional

from agent.events import Stamped
from agent.wire import body, dumps


class JsonLinesSink:
    """Writes each event as one JSON line and flushes it: a reader sees it at once.

    `on_closed` runs once if the reader goes away (`stt-agent run | head`): the caller stops, as a
    shell pipeline expects, instead of listening on for nobody.
    """

    def __init__(self, stream, on_closed: Optional[Callable[[], None]] = None):
        self._stream = stream
        self._on_closed = on_closed
        self._lock = threading.Lock()
        self.closed = False
        self.counts: dict = {}

    def publish(self, stamped: Stamped) -> None:
        line = dumps(body(stamped)).decode("utf-8")
        with self._lock:
            if self.closed:
                return
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except BrokenPipeError:
                self.closed = True
                if self._on_closed is not None:
                    self._on_closed()
                return
            self.counts[stamped.event.type] = self.counts.get(stamped.event.type, 0) + 1

    def close(self) -> None:
        pass
