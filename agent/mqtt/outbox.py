"""The bounded outbox: messages the pipeline produced that paho has not been handed yet.

Three lanes, so nothing else can push a final out:
- finals: finals, their emotion and language, and their Hermes mirrors; at most `max_size`.
  Only a newer message of this lane can evict one: when it is full the oldest emotion or language
  goes, else the oldest final (counted per type and reported through `on_drop`).
- events: vad, pipeline and agent errors, partials, network devices' status; at most `max_size`.
  When full a partial goes first (stale anyway), else the oldest event other than a status (the
  retained last word on a device), else the oldest status.
- replies: answers to commands; at most `max_replies`; a command flood only drops its own older
  answers. It measured 6 finals of 16 lost to ~98,000 bad commands in one shared lane, and one
  device's final lost to 3,000 errors of another device in one lane of 1,000.
Besides the counts, the finals and events lanes together hold at most `max_bytes` (topics and
payloads): past it the oldest message that is not a final goes (a partial first, a status last), and
a final only when nothing else is left.
An error while one of the same (device, code) still waits is not queued: the waiting one counts it
(`Message.repeated`) and is published with `"repeated": n`, so one device's error storm takes one
slot. The sender takes the oldest head of the three lanes: messages leave in the order they were
made, which keeps every device's seq order on the wire.
The pipeline thread appends (never blocks); the publisher's sender thread takes from the front.
`journal` (store.DiskStore, the durable outbox) is told of every message entering the lanes and of
every drop; the publisher tells it of deliveries.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable

from agent.mqtt.payloads import Message, dumps

REPLY = "reply"
FINAL_KINDS = ("final", "emotion", "language", "hermes_text")
# The types drops are counted by (health: mqtt.dropped.by_type); every key always present.
DROP_TYPES = ("final", "emotion", "language", "partial", "speech_start", "speech_end", "error", "status", "reply",
              "hermes_text", "hermes_partial")
# Why a message was dropped, as on_drop is told.
FULL, BYTES, EXPIRED, OFFLINE = "full", "bytes", "expired", "offline"
_FINALS = ("final", "hermes_text")  # what the byte cap drops last


class Outbox:
    def __init__(self, max_size: int, max_replies: int = 100,
                 on_drop: Callable[[Message, str], None] | None = None, max_bytes: int | None = None,
                 journal=None):
        """`on_drop(message, reason)`: called (outside the lock) for every message dropped, reason
        FULL, BYTES, EXPIRED or OFFLINE; the caller logs it. `max_bytes`: None = no byte cap."""
        self.max_size = max_size
        self.max_replies = max_replies
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        self._journal = journal
        self.bytes = 0  # topics and payloads in the finals and events lanes
        self._finals: deque = deque()
        self._events: deque = deque()
        self._replies: deque = deque()
        self._waiting_errors: dict = {}  # collapse key -> the error message waiting with it
        self._partials = 0  # partials (and their mirrors) in the events lane: a full lane scans only if > 0
        self._lock = threading.Lock()
        self.dropped_full = 0  # finals and events dropped because their lane was full
        self.dropped_bytes = 0  # dropped because the lanes held max_bytes
        self.dropped_replies = 0  # answers to commands dropped for newer answers
        self.dropped_expired = 0  # older than the message expiry when their turn came
        self.dropped_offline = 0  # partials that met a disconnected broker
        self.dropped_mirrors_offline = 0  # Hermes partial mirrors that met a disconnected broker
        self.collapsed = 0  # errors counted on a waiting one of the same device and code instead of queued
        self.dropped_by_type = dict.fromkeys(DROP_TYPES, 0)

    def __len__(self) -> int:
        return len(self._finals) + len(self._events) + len(self._replies)

    def put(self, message: Message) -> Message | None:
        """Append (or collapse into a waiting error); return the message dropped to make room, if any
        (the first one, where the byte cap took several)."""
        with self._lock:
            dropped = self._put(message)
            drops = [(dropped, FULL)] if dropped is not None else []
            if self.max_bytes is not None and message.kind != REPLY:
                drops += [(m, BYTES) for m in self._trim_bytes(message)]
            for m, _ in drops:
                self._count(m)
                if self._journal is not None:
                    self._journal.remove(m)
        if self._on_drop is not None:
            for m, reason in drops:
                self._on_drop(m, reason)
        return drops[0][0] if drops else None

    def _trim_bytes(self, newest: Message) -> list:  # with the lock held
        gone = []
        while self.bytes > self.max_bytes:
            victim = self._bytes_victim(newest)
            if victim is None:
                break  # only the newest is left: one message is never over the cap alone
            lane, i = victim
            m = lane[i]
            del lane[i]
            self._forget(m)
            self.dropped_bytes += 1
            gone.append(m)
        return gone

    def _bytes_victim(self, newest: Message):  # with the lock held: the oldest non-final, partials first
        def first(lane, test):
            return next(((lane, i) for i, m in enumerate(lane) if m is not newest and test(m)), None)

        if self._partials:
            found = first(self._events, lambda m: not m.queued)
            if found:
                return found
        candidates = [c for c in (first(self._events, lambda m: m.kind != "status"),
                                  first(self._finals, lambda m: m.kind not in _FINALS)) if c]
        if candidates:
            return min(candidates, key=lambda c: c[0][c[1]].created)
        return first(self._events, lambda m: True) or first(self._finals, lambda m: True)

    def _put(self, message: Message) -> Message | None:  # with the lock held
        if message.kind == REPLY:
            dropped = self._replies.popleft() if len(self._replies) >= self.max_replies else None
            self.dropped_replies += dropped is not None
            self._replies.append(message)
            return dropped
        if message.collapse_key is not None:
            waiting = self._waiting_errors.get(message.collapse_key)
            if waiting is not None:
                waiting.repeated += 1 + message.repeated
                self.collapsed += 1
                return None
        lane = self._finals if message.kind in FINAL_KINDS else self._events
        dropped = None
        if len(lane) >= self.max_size:
            dropped = self._evict_final_lane() if lane is self._finals else self._evict_event()
            self._forget(dropped)
            self.dropped_full += 1
        lane.append(message)
        self.bytes += message.size
        if self._journal is not None:
            self._journal.add(message)
        self._partials += not message.queued
        if message.collapse_key is not None:
            self._waiting_errors[message.collapse_key] = message
        return dropped

    def _evict_final_lane(self) -> Message:  # with the lock held; the finals lane is full
        """The oldest emotion or language goes before any final (a controller acts on the text; an old
        utterance's mood is the first thing to give up), else the oldest final."""
        victim = next((i for i, m in enumerate(self._finals) if m.kind not in _FINALS), 0)
        m = self._finals[victim]
        del self._finals[victim]
        return m

    def _evict_event(self) -> Message:  # with the lock held; the events lane is full
        victim = next((i for i, m in enumerate(self._events) if not m.queued), None) if self._partials else None
        if victim is None:
            victim = next((i for i, m in enumerate(self._events) if m.kind != "status"), 0)
        m = self._events[victim]
        del self._events[victim]
        return m

    def _forget(self, message: Message):  # with the lock held: it no longer waits
        if message.kind != REPLY:
            self.bytes -= message.size
        self._partials -= not message.queued
        if message.collapse_key is not None and self._waiting_errors.get(message.collapse_key) is message:
            del self._waiting_errors[message.collapse_key]

    def _count(self, message: Message):  # with the lock held
        self.dropped_by_type[message.drop_type] = self.dropped_by_type.get(message.drop_type, 0) + 1

    def pop(self) -> Message | None:
        """The oldest head of the lanes; a collapsed error's payload then says how many it stands for."""
        with self._lock:
            heads = [lane for lane in (self._finals, self._events, self._replies) if lane]
            if not heads:
                return None
            message = min(heads, key=lambda lane: lane[0].created).popleft()
            self._forget(message)
        if message.repeated:  # no longer waiting: nothing adds to the count from here on
            body = json.loads(message.payload)
            body["repeated"] = message.repeated
            message.payload = dumps(body)
        return message

    def count_offline(self, message: Message):
        with self._lock:
            self._count_offline(message)
        if self._on_drop is not None:
            self._on_drop(message, OFFLINE)

    def _count_offline(self, message: Message):  # with the lock held
        if message.kind == "partial":
            self.dropped_offline += 1
        else:
            self.dropped_mirrors_offline += 1
        self._count(message)

    def drop_unqueued(self) -> int:
        """Drop the messages that do not wait out an outage (partials); return how many."""
        with self._lock:
            keep, gone = deque(), []
            for m in self._events:
                (keep if m.queued else gone).append(m)
            for m in gone:
                self._count_offline(m)
                self.bytes -= m.size
            self._events = keep
            self._partials = 0
        if self._on_drop is not None:
            for m in gone:
                self._on_drop(m, OFFLINE)
        return len(gone)

    def remaining_expiry(self, message: Message, expiry_s: int, now: float | None = None) -> int | None:
        """Whole seconds of life left (>= 1), None if it never expires, 0 if it already has (counted)."""
        if message.expiry_s is not None:
            expiry_s = message.expiry_s
        if not expiry_s or not message.queued or message.retain:
            return None  # a retained status must outlive any expiry: it is the last word on the device
        age = (time.monotonic() if now is None else now) - message.created
        if age >= expiry_s:
            with self._lock:
                self.dropped_expired += 1
                self._count(message)
                if self._journal is not None:
                    self._journal.remove(message)
            if self._on_drop is not None:
                self._on_drop(message, EXPIRED)
            return 0
        return max(1, int(expiry_s - age))
