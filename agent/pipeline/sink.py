"""Where events go: JSON lines on a stream (stdout), one per event, each with a sequence number."""

from __future__ import annotations

import json
import threading


class JsonLinesSink:
    """Thread-safe: speech events come from the pipeline thread, results from the decode thread."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()
        self._seq = 0
        self.counts: dict = {}

    def __call__(self, event: dict):
        with self._lock:
            self._seq += 1
            line = json.dumps({"seq": self._seq, **event}, ensure_ascii=False)
            self._stream.write(line + "\n")
            self._stream.flush()
            self.counts[event["type"]] = self.counts.get(event["type"], 0) + 1
