"""sd_notify(3) without systemd-python: readiness, status and watchdog messages to the service manager.

systemd gives a `Type=notify` service the address of its notification socket in `$NOTIFY_SOCKET`
(a filesystem path, or `@name` for an abstract socket); each message is one datagram of
`KEY=value` lines. Without `$NOTIFY_SOCKET` (run by hand, in Docker, in tests) every call is a
no-op that returns False, so callers never need to check whether they run under systemd.

    notifier = Notifier()               # reads $NOTIFY_SOCKET
    notifier.extend_timeout(120)        # "still starting" (a TensorRT engine build takes minutes)
    notifier.ready("listening on mic")  # READY=1 + STATUS=
    notifier.watchdog()                 # WATCHDOG=1, every watchdog_interval() seconds
    notifier.reloading()                # on SIGHUP: RELOADING=1 + MONOTONIC_USEC=; then ready()
    notifier.stopping()                 # STOPPING=1
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def socket_address(value: str | None):
    """The AF_UNIX address for a `$NOTIFY_SOCKET` value, or None if there is none we can use.

    `@name` is an abstract socket (a leading NUL byte); a path must be absolute. Other forms
    (`vsock:`, used to notify a VM's host) are not supported and give None.
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.debug("NOTIFY_SOCKET=%r: unsupported address; notifications disabled", value)
    return None


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between `WATCHDOG=1` pings (half of `$WATCHDOG_USEC`), or None if no watchdog is armed.

    Like sd_watchdog_enabled(3): `$WATCHDOG_PID`, when set, must be this process (the variables
    leak into children, which must not ping for their parent).
    """
    env = os.environ if env is None else env
    raw = env.get(WATCHDOG_USEC)
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("%s=%r is not an integer; watchdog disabled", WATCHDOG_USEC, raw)
        return None
    if usec <= 0:
        return None
    owner = env.get(WATCHDOG_PID)
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2 / 1e6


class Notifier:
    """Sends sd_notify messages; thread-safe; every method returns True if the message was sent."""

    def __init__(self, address: str | None = None, env: Mapping[str, str] | None = None):
        """`address`: a `$NOTIFY_SOCKET`-style value; by default read from `env` (os.environ)."""
        env = os.environ if env is None else env
        self.address = socket_address(address if address is not None else env.get(NOTIFY_SOCKET))
        self._sock: socket.socket | None = None
        self._lock = threading.RLock()  # re-entrant: a signal handler may notify while the main thread sends
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when a service manager listens (a `$NOTIFY_SOCKET` was given)."""
        return self.address is not None

    def send(self, **fields) -> bool:
        """Send one datagram with `KEY=value` lines, e.g. `send(READY=1, STATUS="up")`."""
        return self.send_lines(*(f"{key}={value}" for key, value in fields.items()))

    def send_lines(self, *lines: str) -> bool:
        if self.address is None or not lines:
            return False
        data = "\n".join(lines).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, self.address)
                return True
            except OSError as exc:
                # The manager went away (or the socket is full): never fatal to the agent.
                if not self._warned:
                    self._warned = True
                    log.warning("cannot notify the service manager at %r: %s", _printable(self.address), exc)
                return False

    # --- the messages the agent sends --------------------------------------------------------
    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is complete: `READY=1`, with an optional status line."""
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=one_line(status))

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by `systemctl status`."""
        return self.send(STATUS=one_line(text))

    def watchdog(self) -> bool:
        """`WATCHDOG=1`: the service is alive; must come within `WatchdogSec=`."""
        return self.send(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """`EXTEND_TIMEOUT_USEC`: still starting/stopping; wait at least `seconds` more from now."""
        return self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1e6))

    def reloading(self, status: str | None = None) -> bool:
        """`RELOADING=1` with `MONOTONIC_USEC` (CLOCK_MONOTONIC, as systemd ≥ 253 wants); send
        `ready()` when the reload is done."""
        fields = {"RELOADING": 1, "MONOTONIC_USEC": time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}
        if status is not None:
            fields["STATUS"] = one_line(status)
        return self.send(**fields)

    def stopping(self, status: str | None = None) -> bool:
        """`STOPPING=1`: shutting down (pending finals are being drained)."""
        if status is None:
            return self.send(STOPPING=1)
        return self.send(STOPPING=1, STATUS=one_line(status))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def one_line(text: str, limit: int = 400) -> str:
    """A status value: one line (a newline would start a new KEY=value field), bounded in length."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _printable(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address
