"""Microphone capture through PortAudio (sounddevice), supervised so a lost device comes back.

PortAudio's callback only copies int16 frames into a ring buffer at the device's rate and counts
driver overflows; resampling to 16 kHz happens on the reader side (`BlockReader`). A supervisor
thread opens the stream, watches it (stream finished, no callback for `stall_seconds`), and when
it fails or the device is missing retries with capped exponential backoff, re-enumerating
devices each time so a replugged USB microphone is found again. Each open stream is a new session
(a fresh ring, resampler and rate), and the stream position skips ahead by the time the device
was away, so block times keep following the wall clock.
"""
from __future__ import annotations

import logging
import threading
import time

from agent.audio.blocks import RATE
from agent.audio.devices import DeviceUnavailable, choose_format, find_input_device, portaudio, refresh_devices
from agent.audio.ring_buffer import RingBuffer
from agent.audio.source import RUNNING, STOPPED, WAITING_FOR_DEVICE, AudioSource

log = logging.getLogger(__name__)


class _Capture:
    """One open PortAudio stream and the ring its callback fills."""

    def __init__(self, ring: RingBuffer, source: MicSource):
        self.ring = ring
        self.source = source
        self.stream = None
        self.finished = threading.Event()  # PortAudio ended the stream (error, device gone)
        self.last_data = time.monotonic()
        self.delivered = False

    def callback(self, indata, frames, time_info, status) -> None:
        # PortAudio's thread: copy and count only. No logging, no resampling, no allocation but
        # the column view; the copy converts int16 to the ring's float32 in place.
        if status.input_overflow:
            self.source.overflows += 1
        self.ring.write(indata[:, 0])  # first channel of a stereo-only mic: a mean would allocate
        self.last_data = time.monotonic()
        self.delivered = True

    def close(self) -> None:
        if self.stream is not None:
            self.stream.abort(ignore_errors=True)
            self.stream.close(ignore_errors=True)


class MicSource(AudioSource):
    """A capture device by name substring, index or the system default, delivered as 16 kHz blocks."""

    def __init__(self, device: str | int | None = None, *, capture_rate: int = 0, block_ms: int = 50,
                 ring_seconds: float = 10.0, reconnect_min_s: float = 0.5, reconnect_max_s: float = 10.0,
                 stall_seconds: float = 2.0):
        label = "default" if device in (None, "") else str(device)
        super().__init__(f"microphone {label!r}", block_ms=block_ms)
        self.device = device
        self.requested_rate = capture_rate  # 0: 16 kHz if the device takes it, else its default rate
        self.block_ms = block_ms
        self.ring_seconds = ring_seconds
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = max(reconnect_min_s, reconnect_max_s)
        self.stall_seconds = stall_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        portaudio()  # a missing PortAudio is a setup error: fail now, not in the supervisor
        self._thread = threading.Thread(target=self._supervise, name="mic-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._end_sessions(discard=True)
        self._set_state(STOPPED)

    # --- supervisor thread -----------------------------------------------------------------
    def _supervise(self) -> None:
        delay = self.reconnect_min_s
        lost_at = None  # when the previous stream was lost (None before the first)
        while not self._stop.is_set():
            try:
                capture = self._open(lost_at)
            except Exception as exc:  # this thread must outlive any device error
                self._set_state(WAITING_FOR_DEVICE, _describe(exc))
                # A traceback only for the unexpected: a missing device is routine here.
                log.debug("%s: retry in %.2f s: %s", self.name, delay, _describe(exc),
                          exc_info=not isinstance(exc, DeviceUnavailable))
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            why = self._watch(capture)
            if why is not None:
                self._set_state(WAITING_FOR_DEVICE, why)
            self._end_session()  # before closing, so nothing a dying stream still delivers gets in
            capture.close()  # can take as long as the driver needs to give the stream up
            if why is None:
                break  # stopped
            lost_at = time.monotonic()
            if capture.delivered:
                delay = self.reconnect_min_s
            elif self._stop.wait(delay):  # opens but gives nothing: do not spin on it
                break
            else:
                delay = min(delay * 2, self.reconnect_max_s)

    def _open(self, lost_at: float | None) -> _Capture:
        sd = portaudio()
        refresh_devices()
        info = find_input_device(self.device)
        rate, channels = choose_format(info, self.requested_rate)
        capture = _Capture(RingBuffer(max(1, int(rate * self.ring_seconds))), self)
        stream = sd.InputStream(
            device=info["index"], samplerate=rate, channels=channels, dtype="int16",
            blocksize=max(1, round(rate * self.block_ms / 1000)),
            latency="high",  # larger driver buffer: fewer overflows on a busy box; 50 ms blocks dominate anyway
            callback=capture.callback, finished_callback=capture.finished.set)
        try:
            stream.start()
        except Exception:
            stream.close(ignore_errors=True)
            raise
        capture.stream = stream
        gap = 0 if lost_at is None else round((time.monotonic() - lost_at) * RATE)
        self._begin_session(capture.ring, rate, offset=self._stream_end() + gap, gap=lost_at is not None)
        self.device_name = info["name"]
        if lost_at is not None:
            self.reconnects += 1
        self._set_state(RUNNING, f"{info['name']!r}, {rate} Hz, {channels} channel{'s' * (channels > 1)}"
                                 f"{'' if rate == RATE else ', resampled to 16 kHz'}")
        return capture

    def _watch(self, capture: _Capture) -> str | None:
        """Wait until the stream fails (returns why) or the source is stopped (returns None)."""
        poll = min(0.1, self.stall_seconds / 4)
        while not self._stop.wait(poll):
            if capture.finished.is_set():
                return "the stream ended (device unplugged?)"
            silent = time.monotonic() - capture.last_data
            if silent > self.stall_seconds:
                return f"no audio for {silent:.1f} s"
        return None


def _describe(exc: Exception) -> str:
    if isinstance(exc, DeviceUnavailable):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
