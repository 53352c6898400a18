"""Small health helpers: a latency window (p50/p95) and counters that go into the health topic."""

from __future__ import annotations

import math
import threading
import time
from collections import deque


class LatencyWindow:
    """The last `size` samples (e.g. milliseconds); percentiles by nearest rank. Thread-safe."""

    def __init__(self, size: int = 500):
        self._samples = deque(maxlen=size)
        self._lock = threading.Lock()
        self.count = 0  # all samples ever added

    def add(self, value: float | None):
        if value is None:
            return
        with self._lock:
            self._samples.append(float(value))
            self.count += 1

    def values(self) -> list:
        with self._lock:
            return list(self._samples)

    def percentile(self, p: float) -> float | None:
        with self._lock:
            data = sorted(self._samples)
        if not data:
            return None
        rank = max(0, min(len(data) - 1, math.ceil(p / 100.0 * len(data)) - 1))
        return data[rank]

    def summary(self) -> dict:
        p50, p95 = self.percentile(50), self.percentile(95)
        return {"p50": None if p50 is None else round(p50, 1), "p95": None if p95 is None else round(p95, 1),
                "count": self.count}


class SpeechHealth:
    """What the publisher learns from the events it carries: utterances and their latencies."""

    def __init__(self, window: int = 500):
        self.started = time.monotonic()
        self.utterances = 0
        self.endpoint_ms = LatencyWindow(window)  # end of speech -> final emitted
        self.decode_ms = LatencyWindow(window)  # model time of finals

    def observe(self, event):
        """Count a final (a typed event, agent/events.py)."""
        if event.type == "final":
            self.utterances += 1
            self.endpoint_ms.add(event.endpoint_delay_ms)
            self.decode_ms.add(event.decode_ms)

    def snapshot(self) -> dict:
        return {"uptime_s": round(time.monotonic() - self.started, 1), "utterances": self.utterances,
                "latency_ms": self.endpoint_ms.summary(), "decode_ms": self.decode_ms.summary()}


class RateLimitedLog:
    """Log the first occurrence at once, then at most one line per `interval` s with a count of the rest."""

    def __init__(self, logger, interval: float = 10.0):
        self._log = logger
        self._interval = interval
        self._last = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def __call__(self, level: int, msg: str, *args):
        now = time.monotonic()
        with self._lock:
            if self._last and now - self._last < self._interval:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        if suppressed:
            msg += f" ({suppressed} more like this not logged)"
        self._log.log(level, msg, *args)
