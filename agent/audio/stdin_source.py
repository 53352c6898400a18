"""Raw PCM from a byte stream (stdin by default): s16le mono, for `stt-agent run --input -`.

For example `arecord -f S16_LE -r 16000 -c 1 -t raw | stt-agent run --input -`, or ffmpeg/sox
converting anything to that format. A pipe is paced by its producer, so the reader thread waits
for room in the ring buffer instead of dropping audio: a fast producer (a file piped in) is slowed
down by the pipe's back-pressure, and a live one is read as it comes.
"""
from __future__ import annotations

import logging
import sys
import threading
from typing import BinaryIO

import numpy as np

from agent.audio.blocks import RATE
from agent.audio.ring_buffer import RingBuffer
from agent.audio.source import FINISHED, RUNNING, STOPPED, AudioSource

log = logging.getLogger(__name__)


class StdinSource(AudioSource):
    """Signed 16-bit little-endian mono PCM at `rate` Hz (resampled to 16 kHz if different)."""

    def __init__(self, stream: BinaryIO | None = None, *, rate: int = RATE, block_ms: int = 50,
                 ring_seconds: float = 10.0):
        super().__init__("stdin" if stream is None else str(getattr(stream, "name", "stream")), block_ms=block_ms)
        self._stream = stream
        self.capture_rate = int(rate)
        self.ring_seconds = ring_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        stream = self._stream if self._stream is not None else sys.stdin.buffer
        ring = RingBuffer(max(self.block_samples, int(self.capture_rate * self.ring_seconds)))
        self._begin_session(ring, self.capture_rate)
        # Daemon: a read blocked on an idle pipe cannot be interrupted, and must not keep the
        # process alive after stop().
        self._thread = threading.Thread(target=self._pump, args=(stream, ring), name="stdin-source", daemon=True)
        self._set_state(RUNNING, f"s16le mono {self.capture_rate} Hz")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._end_sessions(discard=True)  # unblocks the pump if it waits for room
        self._set_state(STOPPED)

    def _pump(self, stream: BinaryIO, ring: RingBuffer) -> None:
        # read1 returns what the pipe has (up to one block) instead of waiting for a full block.
        read = getattr(stream, "read1", stream.read)
        want = 2 * max(1, self.capture_rate * self.block_samples // RATE)
        carry = b""  # an odd byte: half a sample, completed by the next read
        while not self._stop.is_set():
            try:
                data = read(want)
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
                log.error("reading raw PCM from %s failed: %s", self.name, exc)
                break
            if not data:
                break
            data = carry + data
            usable = len(data) & ~1
            carry = data[usable:]
            if usable and not ring.write_wait(np.frombuffer(data[:usable], "<i2").astype(np.float32)):
                return  # stopped
        if carry:
            log.warning("%s: dropping a trailing odd byte (not a whole 16-bit sample)", self.name)
        self._end_sessions()
        if not self._stop.is_set():
            self._set_state(FINISHED)
