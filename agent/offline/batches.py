"""Decoding many segments through the recognizer's batch API, results handed back in spoken order.

Segments are gathered into a window, sorted by length so each batch pads little, and cut into
batches of at most `batch_size` items and `max_batch_seconds` of padded audio (the longest item
times the count: what the model really computes). Results come back in the segments' order.

`next_batch` is also how the live decode scheduler (agent/pipeline/scheduler.py) batches the
finals, speculative finals and partials of its streams.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, List, Optional, Sequence

from agent.audio.format import RATE

if TYPE_CHECKING:  # the scheduler imports this module: it needs no segment reader
    from agent.offline.segments import Segment


@dataclass(frozen=True)
class Decoded:
    segment: Segment
    result: object  # Recognition; token times in seconds of the file (the model run adds segment.start)
    decode_ms: float  # this segment's share of its batch's model time


def next_batch(lengths: Sequence[int], batch_size: int, max_padded: int,
               max_padding: Optional[float] = None) -> List[int]:
    """Indices of one batch out of `lengths`: item 0, which goes now, with the others closest to it in length.

    A batch computes its longest item times its size, so a padded item costs as much as a real one
    (random lengths of 1.5-3.5 s padded a batch of four by up to half). An item joins only if the
    batch stays within `max_padded` samples of computed audio and, when `max_padding` is given, its
    padding stays within that share of its audio (0.25: a quarter); else the next closest is tried.
    """
    first = lengths[0]
    rest = sorted(range(1, len(lengths)), key=lambda i: abs(lengths[i] - first))
    batch = [0]
    longest, total = first, first
    for i in rest:
        if len(batch) >= batch_size:
            break
        wider, more = max(longest, lengths[i]), total + lengths[i]
        padded = wider * (len(batch) + 1)
        if padded > max_padded or (max_padding is not None and padded > (1 + max_padding) * more):
            continue
        batch.append(i)
        longest, total = wider, more
    return batch


def plan_batches(lengths: List[int], batch_size: int, max_padded: int) -> List[List[int]]:
    """Indices of `lengths` grouped into batches: sorted by length, each within both bounds.

    No item waits on another here (a window's results are handed back together), so the window is
    taken shortest first and each batch is the next shortest ones: sorted neighbours pad least. No
    padding share is capped: offline.batch_size's numbers (a 60-minute file in 94% of the time of
    one at a time on 2 cores) were measured without one.
    """
    remaining = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: List[List[int]] = []
    while remaining:
        picked = next_batch([lengths[i] for i in remaining], batch_size, max_padded)
        batches.append([remaining[p] for p in picked])
        chosen = set(picked)
        remaining = [i for p, i in enumerate(remaining) if p not in chosen]
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
    for batch in plan_batches(lengths, batch_size, int(max_batch_seconds * RATE)):
        started = time.perf_counter()
        audios, offsets = [window[i].audio for i in batch], [window[i].start / RATE for i in batch]
        if decoding is None:
            recognized = recognizer.recognize_batch(audios, options, offsets)
        else:
            with decoding():
                recognized = recognizer.recognize_batch(audios, options, offsets)
        elapsed = (time.perf_counter() - started) * 1000
        total = sum(lengths[i] for i in batch) or 1
        for i, result in zip(batch, recognized):
            results[i] = Decoded(window[i], result, elapsed * lengths[i] / total)
    return results
