"""Every protocol's devices in one registry: who owns a device id now, its numbering, and admission.

- At most one live stream per device id. A new connection of a device asks the current owner to end
  (its final is delivered, then it closes with 4000) and waits for it; connections of one id that
  race are served one after another, and only the newest streams (the others end at once, 4000).
- A device's `Emitter` lives as long as the process, so `seq` goes on across connections and never
  repeats, and its utterance ids go on where the previous connection left them.
- Admission counts a stream from the moment it is admitted (before its first message, while it
  streams, while its last final is decoded) until it is released: `max_streams` holds in every state.

Runs on the network loop only; `emitter_of` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from agent.events import Emitter

log = logging.getLogger(__name__)

REPLACED = (4000, "replaced by a new connection of the same device")
# Devices whose numbering is remembered. A device id costs ~1 KB here; ids are authenticated (tokens) or
# bounded by concurrency (Wyoming slots), so 10,000 is far above any real fleet on one box.
MAX_REMEMBERED = 10000


@dataclass(eq=False)
class Claim:
    """A connection's hold on a device id: its emitter, where its utterance ids start, how to end it."""

    device_id: str
    emitter: Emitter
    first_utterance_id: int
    generation: int
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_code: int = 1000
    end_reason: str = ""
    stream: object = None  # the NetworkStream, once the connection streams (commands go there)

    def end(self, code: int, reason: str) -> None:
        """Ask the connection holding this claim to finish (its final is still delivered)."""
        if not self.ended.is_set():
            self.end_code, self.end_reason = code, reason
            self.ended.set()


@dataclass(eq=False)
class _Device:
    emitter: Emitter
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_utterance_id: int = 1
    owner: Optional[Claim] = None
    newest: int = 0  # generation of the newest connection that asked for this id


class Admission:
    """A counted place among `max_streams`; `release()` gives it back (once)."""

    def __init__(self, registry: "DeviceRegistry"):
        self._registry = registry
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._registry.admitted -= 1


class DeviceRegistry:
    def __init__(self, session: str, sinks: list, *, max_streams: int,
                 device_status: Optional[Callable[[str, str], None]] = None):
        self.session = session
        self.sinks = list(sinks)  # every device's events also go here (MQTT)
        self.max_streams = max_streams
        self._device_status = device_status  # (device_id, "online" | "offline"): MQTT's retained status
        self._devices: "collections.OrderedDict[str, _Device]" = collections.OrderedDict()
        self._lock = threading.Lock()  # _devices is read by emitter_of from the MQTT command thread
        self._generations = itertools.count(1)
        self.admitted = 0
        self.samples_in = 0  # audio of the streams released so far (the metrics add the live ones)

    # ------------------------------------------------------------------ admission
    def admit(self, device_id: Optional[str] = None) -> Optional[Admission]:
        """A place for one more stream, or None when `max_streams` are admitted. A device that is
        connected already may always reconnect: its old stream gives its place back as it ends."""
        replacing = device_id is not None and self.owner(device_id) is not None
        if self.admitted >= self.max_streams and not replacing:
            return None
        self.admitted += 1
        return Admission(self)

    @property
    def full(self) -> bool:
        return self.admitted >= self.max_streams

    # ------------------------------------------------------------------ ownership
    async def claim(self, device_id: str) -> Claim:
        """Own `device_id`: the current owner is asked to end, and this waits until it has. If a newer
        connection of the same id asks meanwhile, the claim comes back already ended (REPLACED)."""
        device = self._device(device_id)
        generation = next(self._generations)
        device.newest = generation
        if device.owner is not None:
            log.info("device %s connected again: its previous connection is finished", device_id,
                     extra={"EVENT": "stream_replaced", "DEVICE_ID": device_id})
            device.owner.end(*REPLACED)
        await device.lock.acquire()
        claim = Claim(device_id, device.emitter, device.next_utterance_id, generation)
        device.owner = claim
        if generation != device.newest:
            claim.end(*REPLACED)  # a newer connection is waiting: this one never streams
        elif self._device_status is not None:
            self._device_status(device_id, "online")
        return claim

    async def claim_free(self, base: str) -> Claim:
        """Own the first of `base`, `base-2`, `base-3`, ... that nobody owns (Wyoming: Home Assistant sends no
        device id, and every satellite behind one Home Assistant shares its address)."""
        for n in itertools.count(1):
            device_id = base if n == 1 else f"{base}-{n}"
            device = self._device(device_id)
            if device.owner is None and not device.lock.locked():
                return await self.claim(device_id)

    def release(self, claim: Claim, next_utterance_id: int) -> None:
        """The connection is done with the device: numbering saved, the next waiting connection goes on."""
        device = self._devices[claim.device_id]
        device.next_utterance_id = max(device.next_utterance_id, next_utterance_id)
        if claim.stream is not None:
            self.samples_in += claim.stream.samples_in
        if device.owner is claim:
            device.owner = None
            if self._device_status is not None and device.newest == claim.generation:
                self._device_status(claim.device_id, "offline")  # nobody waits to take over
        device.lock.release()
        self._forget_old()

    def owner(self, device_id: str) -> Optional[Claim]:
        device = self._devices.get(device_id)
        return device.owner if device is not None else None

    def owners(self) -> Dict[str, Claim]:
        return {d: dev.owner for d, dev in list(self._devices.items()) if dev.owner is not None}

    # ------------------------------------------------------------------ numbering, from any thread
    def known(self, device_id: str) -> bool:
        """Whether the device has connected to this agent (since it started)."""
        with self._lock:
            return device_id in self._devices

    def emitter_of(self, device_id: str) -> Emitter:
        """The device's emitter (seq continues), made if the device was never seen (answers to commands)."""
        with self._lock:
            device = self._devices.get(device_id)
            if device is not None:
                return device.emitter
        return self._device(device_id).emitter

    def _device(self, device_id: str) -> _Device:
        with self._lock:
            device = self._devices.get(device_id)
            if device is None:
                device = self._devices[device_id] = _Device(Emitter(device_id, self.session, self.sinks))
            self._devices.move_to_end(device_id)
            return device

    def _forget_old(self) -> None:
        with self._lock:
            while len(self._devices) > MAX_REMEMBERED:
                oldest_id, oldest = next(iter(self._devices.items()))
                if oldest.owner is not None or oldest.lock.locked():
                    self._devices.move_to_end(oldest_id)
                    break
                del self._devices[oldest_id]
