"""Audio from a byte stream: stdin (`--input -`) or a named pipe (FIFO) that writers come and go on.

Each writer's stream is raw PCM (signed 16-bit little-endian, 16 kHz, mono), or a WAV stream
whose header says its format: `arecord`'s default output and `ffmpeg -f wav -` both start with
one, and read as raw PCM they would play at the wrong speed. A pipe is paced by its producer, so
the reader waits for room in the ring buffer instead of dropping audio: a fast producer (a file
piped in) is slowed down by the pipe's back-pressure, and a live one is read as it comes.

A FIFO is how a mic-less box gets audio into the service: `mkfifo /var/lib/stt-agent/audio`,
`audio.input: /var/lib/stt-agent/audio`, and any process writes PCM into it. When its writer
closes it the open utterance ends (reason "gap") and the source waits for the next writer.
"""
from __future__ import annotations

import logging
import os
import select
import stat
import struct
import sys
import threading
from typing import BinaryIO, Callable

from agent.audio.blocks import RATE
from agent.audio.ring_buffer import RingBuffer
from agent.audio.source import FINISHED, RUNNING, STOPPED, WAITING_FOR_DEVICE, AudioSource
from agent.audio_file import AudioFileError, WavFormat, decode_frames, non_finite, parse_fmt

log = logging.getLogger(__name__)

RAW = WavFormat(tag=0x0001, channels=1, rate=RATE, width=2)
# A WAV header is a few dozen bytes; a stream whose chunks before `data` add up to more than this
# is not one a recorder wrote, and reading on would hold the pipe's audio hostage.
_MAX_HEADER = 1 << 20


class RawStream:
    """A file descriptor read with os.read: no buffered reader whose lock a daemon thread could hold
    at interpreter exit (sys.stdin.buffer's was: SIGTERM while stdin stayed open aborted the process,
    "Fatal Python error: _enter_buffered_busy", in 6 of 10 tries)."""

    def __init__(self, fd: int, name: str, *, owned: bool = True):
        self.fd = fd
        self.name = name
        self._owned = owned

    def read(self, n: int) -> bytes:
        return os.read(self.fd, n)

    read1 = read

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


class StreamSource(AudioSource):
    """PCM from the streams `opener` returns: one, or (reopen=True) one per writer of a FIFO."""

    def __init__(self, name: str, opener: Callable[[], BinaryIO], *, reopen: bool = False, block_ms: int = 50,
                 ring_seconds: float = 10.0, stall_seconds: float = 2.0, wake: Callable[[], None] | None = None):
        super().__init__(name, block_ms=block_ms)
        self._opener = opener
        self._reopen = reopen
        self._wake = wake  # unblocks an opener waiting for a writer
        self.ring_seconds = ring_seconds
        self.stall_seconds = stall_seconds
        self.format = RAW
        self._first: tuple[BinaryIO, WavFormat, bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """A single stream's header is read here, so a bad one is an AudioFileError before anything runs."""
        if not self._reopen:
            stream = self._opener()
            self._first = (stream, *read_header(stream, self.name))
        self._thread = threading.Thread(target=self._run, name="stream-source", daemon=True)
        self._set_state(RUNNING if self._first else WAITING_FOR_DEVICE, "" if self._first else "waiting for a writer")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._end_sessions(discard=True)  # unblocks the pump if it waits for room
        if self._wake is not None:
            self._wake()
        self._set_state(STOPPED)

    def _run(self) -> None:
        # Daemon thread: a read blocked on an idle pipe cannot be interrupted, and must not keep the
        # process alive after stop().
        sessions = 0
        while not self._stop.is_set():
            if self._first is not None:
                (stream, fmt, head), self._first = self._first, None
            else:
                try:
                    stream = self._opener()
                    if self._stop.is_set():
                        stream.close()
                        break
                    fmt, head = read_header(stream, self.name)
                except AudioFileError as exc:
                    log.error("%s; its audio is skipped", exc)
                    self._discard(stream)  # what it still sends would otherwise reach the next writer's stream
                    stream.close()
                    log.info("%s: waiting for the next writer", self.name)
                    continue
                except OSError as exc:
                    log.error("cannot open %s: %s", self.name, exc.strerror or exc)
                    if self._stop.wait(1.0):
                        break
                    continue
            self.format = fmt
            ring = RingBuffer(max(self.block_samples, int(fmt.rate * self.ring_seconds)))
            self._begin_session(ring, fmt.rate, offset=self._stream_end(), gap=sessions > 0)
            self._set_state(RUNNING, describe(fmt))
            with stream:
                self._pump(stream, ring, fmt, head)
            sessions += 1
            if not self._reopen:
                break
            self._end_session()
            self._set_state(WAITING_FOR_DEVICE, "the writer closed the pipe; waiting for the next one")
        self._end_sessions()
        if not self._stop.is_set():
            self._set_state(FINISHED)

    def _discard(self, stream) -> None:
        """Read and drop the rest of a refused writer's stream, until it closes (or we stop)."""
        fileno = _fileno(stream)
        while not self._stop.is_set():
            if fileno is not None and not _readable(fileno, 0.2):
                continue
            try:
                if not stream.read(65536):
                    return
            except (OSError, ValueError):
                return

    def _pump(self, stream: BinaryIO, ring: RingBuffer, fmt: WavFormat, head: bytes) -> None:
        # read1 returns what the pipe has (up to one block) instead of waiting for a full block.
        read = getattr(stream, "read1", stream.read)
        frame = fmt.frame_bytes
        want = frame * max(1, fmt.rate * self.block_samples // RATE)
        fileno = _fileno(stream)
        carry, bad = head, 0
        while not self._stop.is_set():
            if fileno is not None and not _readable(fileno, self.stall_seconds):
                self._set_state(WAITING_FOR_DEVICE, f"no audio from the writer for {self.stall_seconds:g} s")
                continue
            try:
                data = read(want)
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
                log.error("reading audio from %s failed: %s", self.name, exc)
                break
            if not data:
                break
            self._set_state(RUNNING, describe(fmt))
            data = carry + data
            usable = len(data) - len(data) % frame
            carry = data[usable:]
            if not usable:
                continue
            bad += non_finite(data[:usable], fmt)
            if not ring.write_wait(decode_frames(data[:usable], fmt)):
                return  # stopped
        if carry:
            log.warning("%s: dropping %d trailing bytes (not a whole frame)", self.name, len(carry))
        if bad:
            log.warning("%s: %d float samples were NaN or infinite and were replaced by silence", self.name, bad)


class StdinSource(StreamSource):
    """Raw PCM or a WAV stream on stdin (or any binary stream, for tests)."""

    def __init__(self, stream: BinaryIO | None = None, *, block_ms: int = 50, ring_seconds: float = 10.0):
        name = "stdin" if stream is None else str(getattr(stream, "name", "stream"))
        super().__init__(name, lambda: _stdin() if stream is None else stream, block_ms=block_ms,
                         ring_seconds=ring_seconds, stall_seconds=float("inf"))


class FifoSource(StreamSource):
    """A named pipe kept open across writers: the service's input on a box without a microphone."""

    def __init__(self, path: str, *, block_ms: int = 50, ring_seconds: float = 10.0, stall_seconds: float = 2.0):
        self.path = path
        super().__init__(path, lambda: RawStream(os.open(path, os.O_RDONLY), path), reopen=True, block_ms=block_ms,
                         ring_seconds=ring_seconds, stall_seconds=stall_seconds, wake=self._unblock_open)

    def _unblock_open(self) -> None:
        """An open() for reading waits for a writer: be that writer for a moment."""
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader waiting (ENXIO) or the pipe is gone: nothing to unblock


def _stdin() -> RawStream:
    # Python sets sys.stdin to None when fd 0 was closed at start; fd 0 may hold another file by now.
    if sys.stdin is None or sys.stdin.closed:
        raise AudioFileError("stdin: standard input is closed (--input - reads raw PCM or a WAV stream from it)")
    return RawStream(sys.stdin.fileno(), "stdin", owned=False)


def describe(fmt: WavFormat) -> str:
    kind = "float" if fmt.tag == 0x0003 else ("s16le" if fmt.width == 2 else f"{8 * fmt.width}-bit")
    return f"{kind} {fmt.rate} Hz, {fmt.channels} channel{'s' * (fmt.channels > 1)}"


def read_header(stream: BinaryIO, name: str) -> tuple[WavFormat, bytes]:
    """(format, audio bytes already read): a WAV stream's header is parsed, anything else is raw PCM."""
    head = _read_exact(stream, 12)
    if head[:4] != b"RIFF":
        return RAW, head
    if head[8:12] != b"WAVE":
        raise AudioFileError(f"{name}: a RIFF stream that is not WAVE (form type {head[8:12]!r})")
    fmt, skipped = None, 0
    while True:
        chunk = _read_exact(stream, 8)
        if len(chunk) < 8:
            raise AudioFileError(f"{name}: the WAV stream ended inside its header")
        cid, size = struct.unpack("<4sI", chunk)
        if cid == b"data":
            if fmt is None:
                raise AudioFileError(f"{name}: WAV stream has its data chunk before any fmt chunk")
            return fmt, b""
        skipped += size
        if skipped > _MAX_HEADER:
            raise AudioFileError(f"{name}: WAV stream header is over {_MAX_HEADER} bytes (not a recorder's)")
        body = _read_exact(stream, size + (size & 1))
        if len(body) < size:
            raise AudioFileError(f"{name}: the WAV stream ended inside its {cid!r} chunk")
        if cid == b"fmt ":
            fmt = parse_fmt(name, body[:size])


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = stream.read(n - len(out))
        if not data:
            break
        out += data
    return out


def _fileno(stream: BinaryIO) -> int | None:
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None  # an in-memory stream: always readable


def _readable(fileno: int, timeout: float) -> bool:
    if timeout == float("inf"):
        return True
    try:
        ready, _, _ = select.select([fileno], [], [], timeout)
    except (OSError, ValueError):
        return True  # let the read report it
    return bool(ready)
