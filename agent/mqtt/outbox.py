"""The bounded outbox: messages the pipeline produced that paho has not been handed yet.

The pipeline thread appends (never blocks); the publisher's sender thread takes from the front
while connected. When the bound is hit the oldest message is dropped; every drop is counted.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from agent.mqtt.payloads import Message


class Outbox:
    def __init__(self, max_size: int):
        self.max_size = max_size
        self._items: deque = deque()
        self._lock = threading.Lock()
        self.dropped_full = 0  # oldest dropped because the outbox was full
        self.dropped_expired = 0  # older than the message expiry when their turn came
        self.dropped_offline = 0  # partials (not queued kinds) that met a disconnected broker

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: Message) -> Message | None:
        """Append; return the message dropped to make room, if any."""
        with self._lock:
            dropped = None
            if len(self._items) >= self.max_size:
                dropped = self._items.popleft()
                self.dropped_full += 1
            self._items.append(message)
            return dropped

    def peek(self) -> Message | None:
        with self._lock:
            return self._items[0] if self._items else None

    def pop(self) -> Message | None:
        with self._lock:
            return self._items.popleft() if self._items else None

    def count_offline(self, n: int = 1):
        with self._lock:
            self.dropped_offline += n

    def drop_unqueued(self) -> int:
        """Drop the messages that do not wait out an outage (partials); return how many."""
        with self._lock:
            keep = deque(m for m in self._items if m.queued)
            n = len(self._items) - len(keep)
            self._items = keep
            self.dropped_offline += n
            return n

    def remaining_expiry(self, message: Message, expiry_s: int, now: float | None = None) -> int | None:
        """Whole seconds of life left (>= 1), None if it never expires, 0 if it already has (counted)."""
        if not expiry_s or not message.queued:
            return None
        age = (time.monotonic() if now is None else now) - message.created
        if age >= expiry_s:
            with self._lock:
                self.dropped_expired += 1
            return 0
        return max(1, int(expiry_s - age))
