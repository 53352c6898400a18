"""Decoding many segments through the recognizer's batch API, results handed back in spoken order.

Segments are gathered into a window, sorted by length so each batch pads little, and cut into
batches of at most `batch_size` items and `max_batch_seconds` of padded audio (the longest item
times the count: what the model really computes). Results come back in the segments' order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional

from agent.offline.segments import Segment


@dataclass(frozen=True)
class Decoded:
    segment: Segment
    result: object  # Recognition; token times in seconds from the segment's start
    decode_ms: float  # this segment's share of its batch's model time


def plan_batches(lengths: List[int], batch_size: int, max_padded: int) -> List[List[int]]:
    """Indices of `lengths` grouped into batches: sorted by length, each within both bounds."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: List[List[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        if batch is not None and len(batch) < batch_size and lengths[i] * (len(batch) + 1) <= max_padded:
            batch.append(i)
        else:
            batches.append([i])
    return batches


def decode_in_batches(recognizer, segments: Iterable[Segment], *, batch_size: int = 1,
                      max_batch_seconds: float = 60.0, options=None,
                      decoding: Optional[Callable[[], object]] = None) -> Iterator[Decoded]:
    """Every segment's Decoded, in order. `decoding()`: a context manager around each model run
    (the watchdog's progress.decoding)."""
    window = 1 if batch_size == 1 else 4 * batch_size
    pending: List[Segment] = []
    for segment in segments:
        pending.append(segment)
        if len(pending) >= window:
            yield from _decode_window(recognizer, pending, batch_size, max_batch_seconds, options, decoding)
            pending = []
    if pending:
        yield from _decode_window(recognizer, pending, batch_size, max_batch_seconds, options, decoding)


def _decode_window(recognizer, window: List[Segment], batch_size, max_batch_seconds, options, decoding):
    results: list = [None] * len(window)
    lengths = [len(s.audio) for s in window]
    for batch in plan_batches(lengths, batch_size, int(max_batch_seconds * 16000)):
        started = time.perf_counter()
        if decoding is None:
            recognized = recognizer.recognize_batch([window[i].audio for i in batch], options)
        else:
            with decoding():
                recognized = recognizer.recognize_batch([window[i].audio for i in batch], options)
        elapsed = (time.perf_counter() - started) * 1000
        total = sum(lengths[i] for i in batch) or 1
        for i, result in zip(batch, recognized):
            results[i] = Decoded(window[i], result, elapsed * lengths[i] / total)
    return results
