"""The bounded outbox: messages the pipeline produced that paho has not been handed yet.

Two lanes, so nobody else's traffic can push a final out:
- events (finals, emotion, language, vad, pipeline errors, partials), at most `max_size`; when it
  is full a partial goes first (it is stale anyway), else the oldest event;
- replies (answers to commands), at most `max_replies`; a command flood only ever drops its own
  older answers. It measured 6 finals of 16 lost to ~98,000 bad commands in one shared lane.
The sender takes the older head of the two, so answers and events leave in the order they were made.
The pipeline thread appends (never blocks); the publisher's sender thread takes from the front.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from agent.mqtt.payloads import Message

REPLY = "reply"


class Outbox:
    def __init__(self, max_size: int, max_replies: int = 100):
        self.max_size = max_size
        self.max_replies = max_replies
        self._events: deque = deque()
        self._replies: deque = deque()
        self._lock = threading.Lock()
        self.dropped_full = 0  # events dropped because the outbox was full
        self.dropped_replies = 0  # answers to commands dropped for newer answers
        self.dropped_expired = 0  # older than the message expiry when their turn came
        self.dropped_offline = 0  # partials that met a disconnected broker
        self.dropped_mirrors_offline = 0  # Hermes partial mirrors that met a disconnected broker

    def __len__(self) -> int:
        return len(self._events) + len(self._replies)

    def put(self, message: Message) -> Message | None:
        """Append; return the message dropped to make room, if any."""
        with self._lock:
            if message.kind == REPLY:
                dropped = self._replies.popleft() if len(self._replies) >= self.max_replies else None
                self.dropped_replies += dropped is not None
                self._replies.append(message)
                return dropped
            dropped = None
            if len(self._events) >= self.max_size:
                dropped = self._drop_one_event()
            self._events.append(message)
            return dropped

    def _drop_one_event(self) -> Message:  # with the lock held
        for i, m in enumerate(self._events):
            if not m.queued:  # a partial: stale by now, and never worth a final
                del self._events[i]
                break
        else:
            m = self._events.popleft()
        self.dropped_full += 1
        return m

    def pop(self) -> Message | None:
        with self._lock:
            if self._events and (not self._replies or self._events[0].created <= self._replies[0].created):
                return self._events.popleft()
            return self._replies.popleft() if self._replies else None

    def count_offline(self, message: Message):
        with self._lock:
            self._count_offline(message)

    def _count_offline(self, message: Message):
        if message.kind == "partial":
            self.dropped_offline += 1
        else:
            self.dropped_mirrors_offline += 1

    def drop_unqueued(self) -> int:
        """Drop the messages that do not wait out an outage (partials); return how many."""
        with self._lock:
            keep = deque()
            for m in self._events:
                if m.queued:
                    keep.append(m)
                else:
                    self._count_offline(m)
            n = len(self._events) - len(keep)
            self._events = keep
            return n

    def remaining_expiry(self, message: Message, expiry_s: int, now: float | None = None) -> int | None:
        """Whole seconds of life left (>= 1), None if it never expires, 0 if it already has (counted)."""
        if not expiry_s or not message.queued or message.retain:
            return None  # a retained status must outlive any expiry: it is the last word on the device
        age = (time.monotonic() if now is None else now) - message.created
        if age >= expiry_s:
            with self._lock:
                self.dropped_expired += 1
            return 0
        return max(1, int(expiry_s - age))
