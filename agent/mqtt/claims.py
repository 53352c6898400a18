"""Which instance last said a network device is online, as the broker tells every instance.

Replicas behind a load balancer share nothing but the broker. A device that moved from replica A to
B without a goodbye (a half-open connection that A notices only at server.idle_timeout_s, 30 s later)
must not be called offline by A while it streams through B: its retained status is the last word a
subscriber gets, and A's would be wrong until the device disconnects again.

With MQTT 5 each instance tags the device statuses it publishes with its session (a user property)
and listens to the others' live ones. An `offline` is not sent for a device that another instance
said `online` for after this one did. MQTT 3.1.1 has no user properties: there every instance speaks
for its own connections only, as before.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

SESSION_PROPERTY = "stt-agent-session"
# Devices remembered on each side; a fleet's broker carries one status topic per device.
MAX_DEVICES = 100_000


class StatusClaims:
    def __init__(self, topic_prefix: str, session: str):
        self.filter = f"{topic_prefix}/+/status"
        self.session = session
        self._prefix = f"{topic_prefix}/"
        self._ours: dict = {}  # device -> when this instance queued its "online" (monotonic)
        self._theirs: dict = {}  # device -> when another instance's live "online" arrived (monotonic)
        self._lock = threading.Lock()  # the paho thread hears, the sender and the loop ask

    def device_of(self, topic: str) -> Optional[str]:
        if not (topic.startswith(self._prefix) and topic.endswith("/status")):
            return None
        device = topic[len(self._prefix):-len("/status")]
        return device if device and "/" not in device else None

    def said_online(self, device: str) -> None:
        """This instance queued `online` for `device`."""
        with self._lock:
            _remember(self._ours, device, time.monotonic())

    def heard(self, topic: str, payload: bytes, retained: bool, session: Optional[str]) -> bool:
        """A message on a status topic (True; False: not a status topic). Retained ones were said before
        this instance connected, and untagged ones (an agent's own status, its Last Will) claim nothing."""
        device = self.device_of(topic)
        if device is None:
            return False
        if retained or session is None or session == self.session:
            return True
        with self._lock:
            if payload.strip() == b"online":
                _remember(self._theirs, device, time.monotonic())
            else:
                self._theirs.pop(device, None)
        return True

    def taken_elsewhere(self, device: str) -> bool:
        """Another instance said `online` for `device` after this one last did."""
        with self._lock:
            theirs = self._theirs.get(device)
            return theirs is not None and theirs > self._ours.get(device, float("-inf"))


def _remember(table: dict, device: str, when: float) -> None:
    table.pop(device, None)  # most recent last: the oldest go first past MAX_DEVICES
    table[device] = when
    while len(table) > MAX_DEVICES:
        del table[next(iter(table))]
