"""A recording cut into utterances by the live pipeline's own VAD and segmenter, read a second at a time.

A reader thread runs the VAD while the caller decodes, and hands over finished segments through a
bounded queue: memory holds at most `queue_segments` of them (each at most max_utterance_s long),
whatever the length of the file.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np

from agent.audio.format import RATE
from agent.audio_file import AudioFile
from agent.listening import Segmenter, SpeechEnd, SpeechStart

_DONE = object()


@dataclass(frozen=True)
class Segment:
    """One utterance: `audio` starts at stream sample `start` (pre-roll included)."""

    index: int  # 0-based, in the order the utterances were spoken
    start: int
    audio: np.ndarray = field(repr=False, compare=False)
    opened: SpeechStart = field(repr=False, compare=False)
    closed: SpeechEnd = field(repr=False, compare=False)

    @property
    def end(self) -> int:
        return self.start + len(self.audio)

    @property
    def seconds(self) -> float:
        return len(self.audio) / RATE


def segments_of(wav: AudioFile, segmenter: Segmenter, on_audio: Optional[Callable[[int], None]] = None,
                halted: Callable[[], bool] = lambda: False) -> Iterator[Segment]:
    """Every utterance of `wav`, in order; `on_audio(samples read so far)` after each block. Once
    `halted()` says so, no more audio is read and the open utterance is closed."""
    position, index, opened = 0, 0, {}
    blocks = wav.blocks(1.0)
    while True:
        block = None if halted() else next(blocks, None)
        events = segmenter.flush() if block is None else segmenter.feed(block, position)
        for event in events:
            if isinstance(event, SpeechStart):
                opened[event.utterance_id] = event
            elif isinstance(event, SpeechEnd):
                yield Segment(index, event.audio_start_sample, event.audio, opened.pop(event.utterance_id), event)
                index += 1
        if block is None:
            return
        position += len(block)
        if on_audio is not None:
            on_audio(position)


class SegmentReader:
    """`segments_of` on a thread of its own, so the VAD runs while the model decodes.

    Iterate it for the segments; an error while reading (a corrupt block) is raised there, after
    the segments that came before it.
    """

    def __init__(self, wav: AudioFile, segmenter: Segmenter, *, queue_segments: int = 16,
                 on_audio: Optional[Callable[[int], None]] = None, stop: Optional[threading.Event] = None):
        """`stop` (e.g. SIGTERM's): read no further; what was read still reaches the consumer."""
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_segments))
        self._stop = stop if stop is not None else threading.Event()
        self._abandoned = threading.Event()  # the consumer is gone: drop everything
        self._thread = threading.Thread(target=self._read, args=(wav, segmenter, on_audio), name="segments",
                                        daemon=True)
        self._thread.start()

    def _read(self, wav, segmenter, on_audio):
        try:
            halted = lambda: self._stop.is_set() or self._abandoned.is_set()  # noqa: E731
            for segment in segments_of(wav, segmenter, on_audio, halted):
                if not self._put(segment):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the caller's thread, where it is reported
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._abandoned.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Segment]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def abandon(self):
        """The consumer will take nothing more: the thread ends."""
        self._abandoned.set()

    def join(self, timeout: float = 5.0):
        self._thread.join(timeout)
