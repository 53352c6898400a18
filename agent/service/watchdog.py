"""A watchdog that pings systemd only while the pipeline really moves, plus rate-limited STATUS lines.

A thread that pings `WATCHDOG=1` on a timer proves only that the interpreter runs. This one asks
`Progress` first: the pipeline thread ticks it for every audio block it consumes, the decode
thread around every decode. Pings stop when

- no audio was consumed for `audio_timeout_s` (the pipeline thread hangs, or capture stopped
  without the source noticing), or
- one decode has been running for longer than `decode_timeout_s` (stuck in the runtime),

and systemd's `WatchdogSec=` then kills and restarts the service (`Restart=on-failure`). A source
that is knowingly waiting for its device (microphone unplugged, reopened with backoff) is not a
stall: the pipeline thread ticks `waiting_for_audio()` then, because a restart would not bring the
microphone back, and restarting in a loop would hit the unit's start limit and leave it dead.

Phases: while starting (model load, TensorRT engine build) pings go out unconditionally, as
`TimeoutStartSec=` bounds that phase; `ready()` switches to progress-gated pings; after
`stopping()` pings are unconditional again (`TimeoutStopSec=` bounds the drain).

    progress = Progress()
    dog = Watchdog.from_settings(progress, settings.watchdog, status=lambda: {...})
    dog.start()                    # before loading the model
    ...load...; dog.ready("listening on mic")
    LivePipeline(..., progress=progress).run(stop)   # ticks audio_consumed for each block
    dog.stopping(); ...; dog.stop()
"""

from __future__ import annotations

import contextlib
import faulthandler
import itertools
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.service.notify import Notifier, one_line, watchdog_interval

log = logging.getLogger(__name__)

StatusSource = Callable[[], str | Mapping[str, object] | None]

STARTING, RUNNING, STOPPING = "starting", "running", "stopping"


class Progress:
    """Marks the parts that must live leave as they work; cheap enough to tick for every audio block.

    `parts`: what must keep moving. "audio": the local pipeline consumes blocks (or knowingly waits for
    its device); "network": the network loop's heartbeat turns. Devices that do not speak are no stall:
    the loop still turns while it waits for them. `backlog`, when given, is the age in seconds of the
    oldest final waiting for the decoder (None: none waits): waiting longer than decode_timeout_s with
    no decode running means the decode worker is gone.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, parts=("audio",),
                 backlog: Callable[[], float | None] | None = None):
        self._clock = clock
        self.parts = tuple(parts)
        self.backlog = backlog
        self._beats: dict[str, float] = {}
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._in_flight: dict[int, float] = {}  # decode token -> when it started
        self.created = clock()
        self.last_audio: float | None = None  # when the pipeline last consumed a block
        self.last_waiting: float | None = None  # when it last saw the source waiting for its device
        self.audio_blocks = 0
        self.decodes = 0  # finished decodes
        self.last_decode_ms: float | None = None

    # --- pipeline thread --------------------------------------------------------------------
    def audio_consumed(self) -> None:
        """A block was read from the source and fed to the segmenter."""
        self.last_audio = self._clock()
        self.audio_blocks += 1

    def waiting_for_audio(self) -> None:
        """The loop is alive but the source is reopening its device (state `waiting_for_device`)."""
        self.last_waiting = self._clock()

    def beat(self, part: str) -> None:
        """`part` (e.g. "network") is alive."""
        self._beats[part] = self._clock()

    # --- decode thread ----------------------------------------------------------------------
    def decode_started(self) -> int:
        """Returns a token for `decode_finished` (decodes may overlap if there are several workers)."""
        token = next(self._tokens)
        with self._lock:
            self._in_flight[token] = self._clock()
        return token

    def decode_finished(self, token: int | None = None) -> None:
        """Ends the decode `token` (default: the oldest in flight)."""
        now = self._clock()
        with self._lock:
            if token is None:
                token = min(self._in_flight, key=self._in_flight.get, default=None)
            started = self._in_flight.pop(token, None) if token is not None else None
            if started is not None:
                self.decodes += 1
                self.last_decode_ms = (now - started) * 1000

    @contextlib.contextmanager
    def decoding(self):
        """`with progress.decoding(): result = recognizer.recognize(audio)`."""
        token = self.decode_started()
        try:
            yield
        finally:
            self.decode_finished(token)

    # --- watchdog ---------------------------------------------------------------------------
    def oldest_decode_age(self, now: float | None = None) -> float | None:
        """Seconds the oldest decode in flight has been running, or None if none is."""
        now = self._clock() if now is None else now
        with self._lock:
            oldest = min(self._in_flight.values(), default=None)
        return None if oldest is None else now - oldest

    def stall(self, audio_timeout_s: float, decode_timeout_s: float, since: float | None = None,
              now: float | None = None) -> str | None:
        """Why the pipeline counts as stalled, or None if it moves.

        `since`: when gating began (ready); no audio is expected before then.
        """
        now = self._clock() if now is None else now
        decode_age = self.oldest_decode_age(now)
        if decode_age is not None and decode_age > decode_timeout_s:
            return f"a decode has been running for {decode_age:.0f} s (limit {decode_timeout_s:g} s)"
        if decode_age is None and self.backlog is not None:
            waited = self.backlog()
            if waited is not None and waited > decode_timeout_s:
                return f"finals have waited {waited:.0f} s with no decode running (limit {decode_timeout_s:g} s)"
        for part in self.parts:
            own = (self.last_audio, self.last_waiting) if part == "audio" else (self._beats.get(part),)
            marks = [m for m in (*own, since) if m is not None]
            alive = max(marks) if marks else self.created
            if now - alive > audio_timeout_s:
                if part == "audio":
                    return f"no audio consumed for {now - alive:.0f} s (limit {audio_timeout_s:g} s)"
                return f"the {part} loop has not run for {now - alive:.0f} s (limit {audio_timeout_s:g} s)"
        return None


def thread_stacks() -> str:
    """Every thread's current Python stack (innermost call last), for the log."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        if ident == threading.get_ident():
            continue  # the watchdog thread itself
        stack = "".join(traceback.format_stack(frame, limit=12))
        parts.append(f"thread {names.get(ident, ident)}:\n{stack.rstrip()}")
    return "\n".join(parts)


def enable_fault_handler() -> None:
    """Print every thread's stack to stderr (the journal) on SIGABRT, SIGSEGV and the like.

    systemd's watchdog kills with SIGABRT: with this, the journal shows where each thread was.
    """
    faulthandler.enable(all_threads=True)


def describe(status: str | Mapping[str, object] | None) -> str | None:
    """A status source's value as one line: a string as is; a mapping as `key=value` pairs.

    `None` values are left out; True/False under `broker` read connected/disconnected.
    """
    if status is None:
        return None
    if isinstance(status, str):
        return one_line(status)
    parts = []
    for key, value in status.items():
        if value is None:
            continue
        if key == "broker" and isinstance(value, bool):
            value = "connected" if value else "disconnected"
        elif isinstance(value, float):
            value = f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"
        parts.append(f"{key}={value}")
    return one_line(" ".join(parts))


class Watchdog:
    """Pings `WATCHDOG=1` while `progress` shows movement; sends STATUS= lines; owns the Notifier."""

    def __init__(self, progress: Progress, notifier: Notifier | None = None, *,
                 status: StatusSource | None = None, interval: float | None = None,
                 audio_timeout_s: float = 15.0, decode_timeout_s: float = 60.0,
                 status_interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 health_file: Path | None = None):
        """`interval`: seconds between pings; default half of `$WATCHDOG_USEC` (None: no pings).

        `health_file`: rewritten every round with the verdict (agent/service/health_file.py), for
        probes that cannot ask systemd (a container's HEALTHCHECK, Kubernetes).
        """
        self.progress = progress
        self.notifier = notifier if notifier is not None else Notifier()
        self.status_source = status
        self.interval = watchdog_interval() if interval is None else interval
        self.audio_timeout_s = audio_timeout_s
        self.decode_timeout_s = decode_timeout_s
        self.status_interval_s = status_interval_s
        self._clock = clock
        self.phase = STARTING
        self._ready_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_status: str | None = None
        self._last_status_at = float("-inf")
        self._stalled: str | None = None  # the reason while pings are withheld
        self.pings = 0
        self.health_file = health_file
        self._health_written = float("-inf")
        # The thread's rounds and phase changes both write it; reentrant because stopping() runs in
        # a signal handler, which may interrupt ready()'s write in the same thread.
        self._health_lock = threading.RLock()

    @classmethod
    def from_settings(cls, progress: Progress, settings, notifier: Notifier | None = None,
                      status: StatusSource | None = None, config_path: str | None = None) -> Watchdog:
        """From a `WatchdogSettings` (agent.service.settings); `config_path` names the instance's health file."""
        from agent.service import health_file

        return cls(progress, notifier, status=status, audio_timeout_s=settings.audio_timeout_s,
                   decode_timeout_s=settings.decode_timeout_s, status_interval_s=settings.status_interval_s,
                   health_file=health_file.resolve(settings.health_file, config_path=config_path))

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> Watchdog:
        """Start the thread (only when a service manager or a health file listens)."""
        if (self.notifier.enabled or self.health_file is not None) and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
            self._thread.start()
        return self

    def ready(self, status: str | None = None) -> bool:
        """`READY=1` (+ STATUS); from now on pings depend on progress."""
        self._ready_at = self._clock()
        self.phase = RUNNING
        text = status if status is not None else describe(self._poll_status())
        if text is not None:
            self._remember_status(text)
        sent = self.notifier.ready(text)
        self._write_health(None, force=True)  # probes see "running" now, not after the next round (5 s)
        return sent

    def reloading(self, status: str | None = None) -> bool:
        """`RELOADING=1`; call `ready()` when the new configuration is in effect."""
        return self.notifier.reloading(status)

    def extend_startup(self, seconds: float) -> bool:
        """Still starting (e.g. building a TensorRT engine): extend `TimeoutStartSec=` by `seconds`."""
        return self.notifier.extend_timeout(seconds)

    def stopping(self, status: str | None = None) -> bool:
        """`STOPPING=1`: pings stay unconditional while pending finals drain."""
        self.phase = STOPPING
        sent = self.notifier.stopping(status)
        self._write_health(None, force=True)
        return sent

    def stop(self) -> None:
        """End the thread (does not notify: call `stopping()` first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.notifier.close()  # its socket; a later message opens it again
        if self.health_file is not None:
            from agent.service import health_file

            health_file.remove(self.health_file)  # a stopped agent has no health to report

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- the thread ---------------------------------------------------------------------------
    def stall(self) -> str | None:
        """Why pings are withheld right now, or None (always None unless running)."""
        if self.phase != RUNNING:
            return None
        return self.progress.stall(self.audio_timeout_s, self.decode_timeout_s, since=self._ready_at)

    def tick(self) -> None:
        """One round: ping if healthy, send a status line if due, rewrite the health file."""
        reason = self.stall()
        try:
            self._ping_or_withhold(reason)
        finally:
            self._write_health(reason)

    def _ping_or_withhold(self, reason: str | None) -> None:
        if reason is None:
            if self._stalled is not None:
                log.warning("pipeline moves again; watchdog pings resume", extra={"EVENT": "watchdog_recovered"})
                self._stalled = None
                self._last_status = None  # send the normal status again at once
            if self.interval is not None and self.notifier.watchdog():
                self.pings += 1
        elif reason != self._stalled:
            first = self._stalled is None
            self._stalled = reason
            if first:  # the stacks say where it hangs, before systemd's SIGABRT ends the process
                log.error("pipeline stalled: %s; withholding watchdog pings so systemd restarts the service\n%s",
                          reason, thread_stacks(), extra={"EVENT": "watchdog_stall"})
            self.notifier.status(f"stalled: {reason}")
            self._remember_status(f"stalled: {reason}")
            return
        if self._stalled is None:
            self._maybe_status()

    @property
    def period(self) -> float:
        """Seconds between two rounds of the thread."""
        period = self.interval if self.interval is not None else self.status_interval_s
        return max(0.01, min(period, self.status_interval_s))

    def _write_health(self, reason: str | None, force: bool = False) -> None:
        """Rewrite the health file (at most once a second, unless `force`: a phase change)."""
        if self.health_file is None:
            return
        with self._health_lock:
            self._write_health_locked(reason, force)

    def _write_health_locked(self, reason: str | None, force: bool) -> None:
        now = self._clock()
        if not force and now - self._health_written < 1.0:
            return
        from agent.service import health_file

        state = "stalled" if reason is not None else self.phase
        record = {"state": state, "reason": reason, "status": self._last_status if reason is None else None,
                  "pid": os.getpid(), "updated": round(time.time(), 3), "period_s": max(1.0, self.period)}
        try:
            health_file.write(self.health_file, record)
            self._health_written = now
        except OSError as exc:
            if self._health_written == float("-inf"):
                log.warning("cannot write the health file %s: %s (stt-agent health will not see this agent)",
                            self.health_file, exc.strerror or exc, extra={"EVENT": "health_file"})
            self._health_written = now  # the warning once; keep trying each second

    def _run(self) -> None:
        period = self.period
        while True:
            try:
                self.tick()
            except Exception:  # never let a bug in a status callable end the pings silently
                log.exception("watchdog round failed")
            if self._stop.wait(period):
                return

    def _poll_status(self):
        if self.status_source is None:
            return None
        try:
            return self.status_source()
        except Exception as exc:
            log.debug("status callable failed: %s", exc)
            return None

    def _maybe_status(self) -> None:
        if self.phase != RUNNING or self.status_source is None:
            return
        now = self._clock()
        if now - self._last_status_at < self.status_interval_s:
            return
        text = describe(self._poll_status())
        if text is not None and text != self._last_status:
            self.notifier.status(text)
            self._remember_status(text)

    def _remember_status(self, text: str) -> None:
        self._last_status = text
        self._last_status_at = self._clock()
