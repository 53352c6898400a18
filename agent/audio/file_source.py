"""An audio file as a source, paced like a microphone or as fast as the pipeline reads."""
from __future__ import annotations

import logging
import os
import threading
import time

from agent.audio.blocks import RATE
from agent.audio.ring_buffer import RingBuffer
from agent.audio.source import FINISHED, RUNNING, STOPPED, AudioSource
from agent.audio_file import AudioFile, AudioFileError

log = logging.getLogger(__name__)


class FileSource(AudioSource):
    """Plays any audio file that `agent.audio_file` reads (WAV, FLAC, Ogg, MP3, ...), as 16 kHz blocks.

    realtime=True: a thread writes each block when a microphone would have delivered it, on a
    schedule counted from one monotonic start (sleeping a fixed block length each time would add
    up scheduling delays). A pipeline that falls behind loses audio exactly like with a mic.
    realtime=False: blocks are written as fast as the pipeline takes them, and none are lost.
    The file is read a second at a time, so an hours-long recording costs no more memory than a
    short one.
    """

    def __init__(self, path: str | os.PathLike, *, realtime: bool = True, block_ms: int = 50,
                 ring_seconds: float = 10.0):
        super().__init__(os.fspath(path), block_ms=block_ms)
        self.path = path
        self.realtime = realtime
        self.ring_seconds = ring_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the file (a bad header surfaces here, as AudioFileError) and start feeding it."""
        wav = AudioFile(self.path)
        ring = RingBuffer(max(self.block_samples, int(RATE * self.ring_seconds)))
        self._begin_session(ring, RATE)
        self._thread = threading.Thread(target=self._feed, args=(ring, wav), name="file-source", daemon=True)
        self._set_state(RUNNING, f"{wav.duration:.2f} s, {'real time' if self.realtime else 'fast'}")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._end_sessions(discard=True)
        if self._thread is not None:
            self._thread.join()
        self._set_state(STOPPED)

    def _feed(self, ring: RingBuffer, wav: AudioFile) -> None:
        with wav:
            try:
                self._feed_blocks(ring, wav)
            except AudioFileError as exc:  # e.g. NaN samples further in: what came before is kept
                log.error("%s; the rest of the file is skipped", exc)
        self._end_sessions()
        if not self._stop.is_set():
            self._set_state(FINISHED)

    def _feed_blocks(self, ring: RingBuffer, wav: AudioFile) -> None:
        step = self.block_samples
        t0 = time.monotonic()
        pos = 0
        for samples in wav.blocks(1.0):
            for at in range(0, len(samples), step):
                block = samples[at:at + step]
                pos += len(block)
                if self.realtime:
                    # Block i is "recorded" by t0 + its end time; wait for that instant, not a fixed span.
                    if self._stop.wait(max(0.0, t0 + pos / RATE - time.monotonic())):
                        return
                    ring.write(block)
                elif not ring.write_wait(block):
                    return  # stopped
