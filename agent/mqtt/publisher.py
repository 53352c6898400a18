"""MqttPublisher: the pipeline's event sink, publishing to an MQTT broker through outages.

Threads:
- the caller (pipeline / decode thread): `publish(stamped)` maps the event to messages and appends
  them to the bounded outbox. Never blocks on the network.
- paho's network thread (`loop_start`): connects, reconnects with capped exponential backoff,
  runs the callbacks below. Every callback is guarded: an exception escaping one would silently
  end that thread; one escaping paho itself is logged, counted and the thread goes on
  (connection.SupervisedClient).
- the sender thread: hands outbox messages to paho while connected, at most MAX_INFLIGHT unacknowledged
  at a time, and publishes health.
- the command thread: runs the caller's command handler, so a slow handler never stalls the network.

Delivery (each queued event exactly once from the agent's side, in order):
- The outbox holds what paho has not been given; nothing is given to paho while disconnected.
- Once given, a QoS 1/2 message is paho's: if the connection drops before the broker acknowledges
  it, paho sends it again (DUP) right after the next CONNACK. The agent never re-publishes it, so
  it cannot be doubled by the agent. Until those older messages are acknowledged, nothing newer
  leaves the outbox, which keeps the order across the reconnect.
- With mqtt.outbox: disk, finals, emotion, language and errors are also journalled in an SQLite file
  (store.py) from the moment they enter the outbox until their PUBACK; a run starts by queueing what
  an earlier one left there, so it goes first (at least once across a crash: docs/EVENTS.md).
- Partials (QoS 0) are dropped while disconnected. Queued events older than message_expiry_s are
  dropped from the outbox, and with MQTT 5 carry the remaining time as their Message Expiry Interval.

Commands: `<prefix>/+/cmd`, for this device and every other one the agent serves (network
streams); validated against docs/schemas/command.json; answered on that device's error topic,
numbered among that device's events. At most `commands_per_s` a second are read, all devices
together (the rest are counted and summarised in the log every 10 s); answers to them travel in
their own outbox lane, so a flood of bad commands cannot displace a final. Retained commands are
refused, always: with MQTT 5 the subscription asks the broker to keep the retain flag on live
messages ("retain as published"), which MQTT 3.1.1 cannot express (docs/EVENTS.md).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import __version__
from agent.events import Emitter, Problem, Stamped, new_session
from agent.mqtt.claims import SESSION_PROPERTY, StatusClaims
from agent.mqtt.commands import CommandError, parse_command, request_id_of, schema_problem
from agent.mqtt.connection import describe_reason, diagnose, hint_for, make_client
from agent.mqtt.discovery import discovery_messages
from agent.mqtt.health import LatencyWindow, RateLimitedLog, SpeechHealth
from agent.mqtt.outbox import BYTES, EXPIRED, FULL, OFFLINE, Outbox
from agent.mqtt.payloads import SCHEMA_VERSION, EventMapper, Message, dumps
from agent.mqtt.store import DiskStore
from agent.mqtt.topics import (
    MAX_DEVICE_ID_BYTES,
    Topics,
    client_id_of,
    command_device,
    command_filter,
    device_id_of,
    topic_problem,
)

log = logging.getLogger("agent.mqtt")
paho_log = logging.getLogger("agent.mqtt.paho")
MAX_INFLIGHT = 20
_RESERVED_HEALTH_KEYS = ("schema_version", "type", "device_id", "session", "ts", "mqtt")
# Emitters for answers to devices the app has none for. Past this the oldest is forgotten, and its
# device's next answer starts at seq 1 again: 256 is 8 times the server's default max_streams (32).
MAX_FALLBACK_EMITTERS = 256


def _excerpt(command: dict) -> str:
    """A command as an error's `request` (at most 500 characters, as error.json says)."""
    return dumps(command).decode("utf-8")[:500]


class MqttPublisher:
    """A sink (agent/events.py): `publish(stamped)`; `start()` / `close()` around the run.

    health: a callable returning a dict merged into the health message (provider, model, overflows,
      samples_lost, audio_device, ...); called on the sender thread, so it must be quick and thread-safe.
    on_command: `on_command(device_id, command)` with a validated command dict, e.g.
      {"command": "set_language", "language": "en"}, for this device or any other on the prefix; runs
      on its own thread. CommandError(code, message) is answered with that code (e.g. not_connected)
      on that device's error topic; any other exception as command_failed.
    emitter: numbers this device's answers among its other events and hands them to every sink; by
      default one of its own (this publisher its only sink).
    device_emitter: `device_emitter(device_id)` -> the Emitter of that device (its seq goes on), or
      None; called on the network and command threads. Without one (or for None) this device's
      answers go through `emitter`, another device's through an Emitter of the publisher's own.
    serves: `serves(device_id)` -> whether commands for that device are this agent's to answer (its own
      device, and the network devices it has served). Several agents share the default prefix: a command
      for a device this agent never served is another agent's, and is left to it unanswered (counted).
      None: every device's.
    """

    def __init__(self, settings, *, health: Callable[[], dict] | None = None,
                 on_command: Callable[[str, dict], None] | None = None, version: str = __version__,
                 emitter: Emitter | None = None, device_emitter: Callable[[str], Emitter | None] | None = None,
                 serves: Callable[[str], bool] | None = None):
        self.settings = settings
        self.device_id = device_id_of(settings)
        self.client_id = client_id_of(settings, self.device_id)
        self.topics = Topics(settings.topic_prefix, self.device_id)
        self.emitter = emitter if emitter is not None else Emitter(self.device_id, new_session(), [self])
        self.session = self.emitter.session
        self.broker = f"{settings.host}:{settings.port}"
        self.version = version
        self._health_provider = health
        self._on_command = on_command
        self._device_emitter = device_emitter
        self._serves = serves
        self._fallback_emitters: OrderedDict = OrderedDict()  # device id -> Emitter, oldest use first
        self._emitters_lock = threading.Lock()
        self._schema_problem = schema_problem()
        if self._schema_problem:
            log.error("MQTT: every command will be refused: %s", self._schema_problem)
        self._v5 = settings.protocol == "5"
        # which replica speaks for a network device (user properties are MQTT 5's)
        self._claims = StatusClaims(settings.topic_prefix, self.session) if self._v5 else None
        hermes_site = settings.hermes.site_id if settings.hermes.enabled else None
        self._mapper = EventMapper(settings.topic_prefix, settings.qos, hermes_site)
        self._map_lock = threading.Lock()
        self._outbox_problem: str | None = None  # why the disk outbox fell back to memory
        self._store, restored = self._open_store()  # OutboxInUse (exit 78) before anything else starts
        self._outbox = Outbox(settings.outbox_max, on_drop=self._dropped, max_bytes=settings.outbox_max_bytes,
                              journal=self._store)
        for message in restored:  # what a run before this one left: first in line, in the order it was made
            self._outbox.put(message)
        if self._store is not None:
            self._outbox.dropped_expired += self._store.expired_at_start
            for kind, n in self._store.expired_by_type.items():
                self._outbox.dropped_by_type[kind] = self._outbox.dropped_by_type.get(kind, 0) + n
        self._acks: deque = deque()  # (mid, reason code) from on_publish, consumed by the sender
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._generation = 0  # successful connections so far
        self._inflight_count = 0
        self._health_due = 0.0
        self._started = self._stopping = False
        self._stop_sender = False
        self._commands: queue.Queue = queue.Queue(maxsize=64)
        self.speech = SpeechHealth()
        self.publish_latency_ms = LatencyWindow()
        self.published = 0
        self.errors = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.commands_accepted = 0
        self.commands_rejected = 0
        self.commands_over_limit = 0
        self.commands_for_others = 0  # for devices this agent never served: another agent's
        self.network_errors = 0
        self._command_tokens = float(settings.commands_per_s)
        self._command_refill = time.monotonic()
        self._over_limit_reported = (0, time.monotonic())
        self.last_error: str | None = None
        self._last_problem = ("", 0.0)
        self._drop_logs: dict = {}  # (reason, type) -> RateLimitedLog: a flood of one never hides another
        self._error_log = RateLimitedLog(log, 10.0)
        self._reject_log = RateLimitedLog(log, 10.0)
        self._ha_status = f"{settings.home_assistant.discovery_prefix}/status"
        self._client = make_client(settings, self.client_id, self.topics.status)  # reads the password now
        self._client.suppress_exceptions = True  # second guard: paho logs instead of dying
        self._client.on_thread_error = self._on_thread_error
        self._client.on_log = self._on_log
        self._client.on_connect = self._guard(self._on_connect)
        self._client.on_connect_fail = self._guard(self._on_connect_fail)
        self._client.on_disconnect = self._guard(self._on_disconnect)
        self._client.on_publish = self._guard(self._on_publish)
        self._client.on_message = self._guard(self._on_message)
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._commander = threading.Thread(target=self._command_loop, name="mqtt-commands", daemon=True)

    # ------------------------------------------------------------------ the disk outbox
    def _open_store(self) -> tuple[DiskStore | None, list]:
        """The disk outbox (None: memory) and the messages an earlier run left in it."""
        path = self.settings.outbox_file(self.client_id)
        if path is None:
            return None, []
        store = DiskStore(path, expiry_s=self.settings.message_expiry_s, on_failure=self._store_failed)
        restored = store.open()
        if store.restored or store.expired_at_start:
            log.info("MQTT: %d event(s) from an earlier run read back from %s, to be delivered first (%d expired, "
                     "not sent)", store.restored, path, store.expired_at_start)
        return store, restored

    def _store_failed(self, reason: str):
        """The disk outbox gave up (once per run): the memory outbox goes on alone."""
        self._outbox_problem = reason
        log.warning("MQTT: the disk outbox %s failed (%s): events now wait in memory only and are lost if the "
                    "process dies (health: mqtt.outbox.fallback)", self._store.path if getattr(self, "_store", None)
                    else self.settings.outbox_file(self.client_id), reason, extra={"EVENT": "mqtt_outbox_fallback"})

    def _moved_away(self, message: Message) -> bool:
        """An `offline` for a device another replica said `online` for since this one did: not sent (the
        device streams there now; its status stays that replica's word)."""
        device = self._claims.device_of(message.topic)
        if message.payload != b"offline" or device is None or not self._claims.taken_elsewhere(device):
            return False
        log.info("MQTT: device %s streams through another instance now: its offline is not published", device,
                 extra={"EVENT": "device_status_skipped", "DEVICE_ID": device})
        self._delivered(message)
        return True

    def _delivered(self, message: Message):
        if self._store is not None:
            self._store.remove(message)

    # ------------------------------------------------------------------ life cycle
    def start(self):
        """Connect in the background and return at once; the broker may come and go from here on."""
        if self._started:
            return
        self._started = True
        tls = " over TLS" if self.settings.tls.enabled else ""
        log.info("MQTT: connecting to %s%s as %r (MQTT %s), topics %s/...", self.broker, tls, self.client_id,
                 self.settings.protocol, self.topics.base)
        kwargs = {"clean_start": True} if self._v5 else {}
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive, **kwargs)
        self._sender.start()
        self._commander.start()
        self._client.loop_start()

    def stop(self, timeout: float | None = None) -> int:
        """Deliver what is queued (up to `timeout`, default drain_timeout_s), publish offline, disconnect.

        Returns the number of queued events that could not be delivered.
        """
        if not self._started or self._stopping:
            if not self._started and self._store is not None:
                self._store.close()
            return 0
        self._stopping = True
        timeout = self.settings.drain_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        # Also while not (yet) connected: a file decoded in a second can end before the first CONNACK.
        while time.monotonic() < deadline and self.pending():
            self._wake.set()
            time.sleep(0.02)
        left = self.pending()
        if left:
            log.warning("MQTT: stopping with %d event(s) not delivered to %s", left, self.broker)
        self._stop_sender = True
        self._wake.set()
        self._sender.join(timeout=5)
        self._commands.put(None)
        self._commander.join(timeout=5)
        if self._connected.is_set():
            try:
                self._publish_health(stopped=True)  # the retained health must not say connected after a stop
                info = self._client.publish(self.topics.status, b"offline", qos=self.settings.qos.status, retain=True)
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError) as exc:
                log.warning("MQTT: could not publish offline: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        if self._store is not None:
            self._store.close()  # what was not delivered stays in the file for the next start
        log.info("MQTT: disconnected from %s", self.broker)
        return left

    def close(self) -> None:
        self.stop()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def pending(self) -> int:
        """Events not yet acknowledged by the broker (in the outbox or in flight)."""
        return len(self._outbox) + self._inflight_count

    # ------------------------------------------------------------------ the sink (caller's thread)
    def publish(self, stamped: Stamped) -> None:
        """Queue one event's messages; never blocks on the network and never raises."""
        if self._stopping:
            return
        try:
            with self._map_lock:
                self.speech.observe(stamped.event)
                for message in self._mapper.map(stamped):
                    self._enqueue(message)
            self._wake.set()
        except Exception as exc:  # noqa: BLE001 - a bad event must not stop the pipeline
            self.errors += 1
            kind = getattr(getattr(stamped, "event", None), "type", type(stamped).__name__)
            self._error_log(logging.ERROR, "MQTT: cannot publish a %s event: %s", kind, exc)

    def error(self, code: str, message: str, *, source: str = "agent", device_id: str | None = None, **extra):
        """Report on a device's error topic (this one's by default) through that device's emitter:
        every sink of it sees it, numbered among its events."""
        self._emitter_for(device_id or self.device_id).emit(Problem(source, code, message, **extra))

    def _emitter_for(self, device_id: str) -> Emitter:
        emitter = None
        if self._device_emitter is not None:
            try:
                emitter = self._device_emitter(device_id)
            except Exception as exc:  # noqa: BLE001 - the answer still goes out, numbered by the fallback
                self.errors += 1
                self._error_log(logging.ERROR, "MQTT: device_emitter(%r) failed: %s: %s", device_id,
                                type(exc).__name__, exc)
        if emitter is not None:
            return emitter
        if device_id == self.device_id:
            return self.emitter
        with self._emitters_lock:
            emitter = self._fallback_emitters.pop(device_id, None) or Emitter(device_id, self.session, [self])
            self._fallback_emitters[device_id] = emitter
            while len(self._fallback_emitters) > MAX_FALLBACK_EMITTERS:
                self._fallback_emitters.popitem(last=False)
        return emitter

    def device_status(self, device_id: str, state: str):
        """A network device's retained status (online while it streams, offline after): queued like a final,
        so a subscriber always ends up with the last word. The agent's own status is its Last Will."""
        topic = Topics(self.settings.topic_prefix, device_id).status
        if self._claims is not None and state == "online":
            self._claims.said_online(device_id)
        with self._map_lock:
            self._enqueue(Message("status", topic, state.encode(), self.settings.qos.status, retain=True))
        self._wake.set()

    def request_health(self):
        """Publish health now (also done every health_interval_s and on the `health` command)."""
        self._health_due = 0.0
        self._wake.set()

    def _enqueue(self, message):
        if not message.queued and not self._connected.is_set():
            self._outbox.count_offline(message)
            return
        self._outbox.put(message)  # what it drops is logged by _dropped

    def _dropped(self, message: Message, reason: str):
        """The outbox dropped `message`: one line at once, then at most one per 10 s for each (reason, type)."""
        kind = message.drop_type
        limiter = self._drop_logs.get((reason, kind))
        if limiter is None:
            limiter = self._drop_logs.setdefault((reason, kind), RateLimitedLog(log, 10.0))
        so_far = self._outbox.dropped_by_type.get(kind, 0)
        if reason == FULL:
            limiter(logging.WARNING, "MQTT: outbox full (%d per lane, broker %s %s): dropped a %s (seq %s) for %s; "
                    "%d %s message(s) dropped so far", self._outbox.max_size, self.broker,
                    "connected" if self.connected else "unreachable", kind, message.seq, message.topic, so_far, kind)
        elif reason == EXPIRED:
            limiter(logging.WARNING, "MQTT: a %s (seq %s) for %s expired after %d s in the outbox; %d %s message(s) "
                    "dropped so far", kind, message.seq, message.topic, self.settings.message_expiry_s, so_far, kind)
        elif reason == BYTES:
            limiter(logging.WARNING, "MQTT: outbox at mqtt.outbox_max_bytes (%d bytes, broker %s %s): dropped a %s "
                    "(seq %s) for %s; %d %s message(s) dropped so far", self._outbox.max_bytes, self.broker,
                    "connected" if self.connected else "unreachable", kind, message.seq, message.topic, so_far, kind)
        elif reason == OFFLINE:
            limiter(logging.INFO, "MQTT: a %s for %s was not sent: broker %s unreachable (partials wait for "
                    "nobody); %d %s message(s) dropped so far", kind, message.topic, self.broker, so_far, kind)

    # ------------------------------------------------------------------ sender thread
    def _send_loop(self):
        inflight: dict = {}  # mid -> (message, connection generation)
        while not self._stop_sender:
            self._wake.wait(0.25)
            self._wake.clear()
            try:
                self._collect_acks(inflight)
                if self._connected.is_set():
                    if time.monotonic() >= self._health_due:
                        self._publish_health()
                    self._fill(inflight)
                else:
                    self._outbox.drop_unqueued()
                self._inflight_count = len(inflight)
                self._report_over_limit()
            except Exception:
                self.errors += 1
                log.exception("MQTT: sender error")
        self._collect_acks(inflight)
        self._inflight_count = len(inflight)

    def _collect_acks(self, inflight):
        now = time.monotonic()
        while self._acks:
            mid, reason = self._acks.popleft()
            entry = inflight.pop(mid, None)
            if entry is None:
                continue  # status, health, discovery: not tracked
            message = entry[0]
            self._delivered(message)  # acknowledged or refused: either way it is not sent again
            if reason is not None and getattr(reason, "is_failure", False):
                self.errors += 1
                self.last_error = f"broker rejected a {message.kind} message: {describe_reason(reason)}"
                self._error_log(logging.ERROR, "MQTT: %s (topic %s)", self.last_error, message.topic)
                continue
            self.published += 1
            self.publish_latency_ms.add((now - message.created) * 1000.0)

    def _fill(self, inflight):
        try:
            self._fill_inflight(inflight)
        finally:
            self._inflight_count = len(inflight)

    def _fill_inflight(self, inflight):
        expiry = self.settings.message_expiry_s
        while len(inflight) < MAX_INFLIGHT and self._connected.is_set():
            generation = self._generation
            if any(g != generation for _, g in inflight.values()):
                return  # paho is re-sending what the last connection left unacknowledged: those go first
            self._inflight_count = len(inflight) + 1  # counts the one in hand: stop() must not see 0 + 0
            message = self._outbox.pop()
            if message is None:
                self._inflight_count = len(inflight)
                return
            remaining = self._outbox.remaining_expiry(message, expiry)
            if remaining == 0:
                continue  # counted and logged (_dropped)
            properties = None
            if self._v5 and remaining:
                properties = Properties(PacketTypes.PUBLISH)
                properties.MessageExpiryInterval = remaining
            if message.kind == "status" and self._claims is not None:
                if self._moved_away(message):
                    continue
                properties = properties or Properties(PacketTypes.PUBLISH)  # keeps an expiry, were there one
                properties.UserProperty = (SESSION_PROPERTY, self.session)
            try:
                info = self._client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain,
                                            properties=properties)
            except (ValueError, RuntimeError) as exc:
                self.errors += 1
                self._error_log(logging.ERROR, "MQTT: cannot publish to %s: %s", message.topic, exc)
                self._delivered(message)  # it never will be
                continue
            if message.qos > 0:
                inflight[info.mid] = (message, generation)
                continue
            self._delivered(message)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                self.published += 1
            else:
                self._outbox.count_offline(message)
            self._inflight_count = len(inflight)

    def _publish_health(self, stopped: bool = False):
        self._health_due = time.monotonic() + self.settings.health_interval_s
        body = {"schema_version": SCHEMA_VERSION, "type": "health", "device_id": self.device_id,
                "session": self.session, "ts": round(time.time(), 3), "version": self.version,
                **self.speech.snapshot()}
        if self._health_provider is not None:
            try:
                extra = self._health_provider() or {}
                body.update({k: v for k, v in extra.items() if k not in _RESERVED_HEALTH_KEYS})
            except Exception as exc:  # noqa: BLE001
                body["health_error"] = f"{type(exc).__name__}: {exc}"
                self._error_log(logging.ERROR, "MQTT: health provider failed: %s", exc)
        body["mqtt"] = self.stats()
        body["state"] = "stopped" if stopped else "running"
        if stopped:
            body["mqtt"]["connected"] = False
        try:
            self._client.publish(self.topics.health, dumps(body), qos=self.settings.qos.health, retain=True)
        except (ValueError, TypeError, RuntimeError) as exc:
            self._error_log(logging.ERROR, "MQTT: cannot publish health: %s", exc)

    def stats(self) -> dict:
        """The publisher's own part of the health message."""
        return {"connected": self.connected, "broker": self.broker, "queued": len(self._outbox),
                "inflight": self._inflight_count, "published": self.published,
                "dropped": {"outbox_full": self._outbox.dropped_full, "expired": self._outbox.dropped_expired,
                            "offline": self._outbox.dropped_offline,
                            "mirrors_offline": self._outbox.dropped_mirrors_offline,
                            "outbox_bytes": self._outbox.dropped_bytes,
                            "replies": self._outbox.dropped_replies, "by_type": dict(self._outbox.dropped_by_type),
                            "collapsed": self._outbox.collapsed},
                "outbox": self.outbox_stats(),
                "errors": self.errors, "network_errors": self.network_errors, "reconnects": self.reconnects,
                "connect_failures": self.connect_failures, "last_error": self.last_error,
                "publish_latency_ms": self.publish_latency_ms.summary(),
                "commands": {"accepted": self.commands_accepted, "rejected": self.commands_rejected,
                             "over_limit": self.commands_over_limit, "for_others": self.commands_for_others}}

    def outbox_stats(self) -> dict:
        """Where the outbox keeps its events, its caps, and whether the disk fell back to memory."""
        store = self._store
        on_disk = store is not None and store.active
        return {"kind": "disk" if on_disk else "memory", "path": None if store is None else str(store.path),
                "fallback": self._outbox_problem is not None, "problem": self._outbox_problem,
                "rows": store.rows if on_disk else 0, "restored": 0 if store is None else store.restored,
                "bytes": self._outbox.bytes, "max_bytes": self._outbox.max_bytes,
                "max_per_lane": self._outbox.max_size, "max_age_s": self.settings.message_expiry_s}

    # ------------------------------------------------------------------ paho callbacks (network thread)
    def _guard(self, callback):
        def guarded(*args):
            try:
                callback(*args)
            except Exception:
                self.errors += 1
                log.exception("MQTT: error in %s", callback.__name__)
        guarded.__name__ = callback.__name__
        return guarded

    def _problem(self, text: str):
        """Log a connection problem: at once when it is new, then at most once a minute."""
        self.last_error = text
        last_text, last_at = self._last_problem
        now = time.monotonic()
        if text != last_text or now - last_at >= 60.0:
            self._last_problem = (text, now)
            log.error("MQTT: %s; retrying (backoff %g-%g s)", text, self.settings.reconnect_min_s,
                      self.settings.reconnect_max_s)
        else:
            log.debug("MQTT: %s (again)", text)

    def _on_log(self, client, userdata, level, buf):
        # paho says "Client is not connected" at ERROR on every retry: only its caught exceptions matter.
        if level == mqtt.MQTT_LOG_ERR and "exception" in buf.lower():
            log.error("MQTT (paho): %s", buf)
        else:
            paho_log.debug("%s", buf)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.connect_failures += 1
            self._problem(f"broker {self.broker} refused the connection: {describe_reason(reason_code)}"
                          f"{hint_for(reason_code)}")
            return
        self._generation += 1
        if self._generation > 1:
            self.reconnects += 1
        qos = self.settings.qos
        commands = command_filter(self.settings.topic_prefix)
        if self._v5:  # the retain flag survives on live deliveries, so a retained command is always seen as one
            client.subscribe(commands, options=SubscribeOptions(qos=1, retainAsPublished=True))
        else:
            client.subscribe(commands, qos=1)
        client.publish(self.topics.status, b"online", qos=qos.status, retain=True)
        if self._claims is not None:  # the other replicas' live word on the devices (claims.py): not our own,
            # and not the retained statuses of a whole fleet at every reconnect (claims ignores those)
            client.subscribe(self._claims.filter, options=SubscribeOptions(
                qos=0, noLocal=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND))
        if self.settings.tls.insecure:
            log.warning("MQTT: connected to %s WITHOUT verifying its TLS certificate (mqtt.tls.insecure: true): "
                        "anyone on the network path can read and forge these messages", self.broker,
                        extra={"EVENT": "mqtt_insecure"})
        if self.settings.home_assistant.enabled:
            client.subscribe(self._ha_status, qos=1)
            self._publish_discovery()
        self.last_error = None
        self._last_problem = ("", 0.0)
        self._health_due = 0.0
        self._connected.set()
        log.info("MQTT: %s %s as %r", "reconnected to" if self._generation > 1 else "connected to", self.broker,
                 self.client_id)
        self._wake.set()

    def _on_thread_error(self, exc: BaseException) -> float:
        """An exception escaped paho's network loop (it would have ended the thread): seconds to wait."""
        self.network_errors += 1
        self.last_error = f"MQTT network thread failed: {type(exc).__name__}: {exc}"
        self._error_log(logging.ERROR, "MQTT: the network thread failed (%s: %s); restarting it (%d so far)",
                        type(exc).__name__, exc, self.network_errors)
        self._connected.clear()
        return min(self.settings.reconnect_max_s, self.settings.reconnect_min_s * 2 ** min(self.network_errors, 10))

    def _on_connect_fail(self, client, userdata):
        self.connect_failures += 1
        reason = diagnose(self.settings) or "the connection failed"
        self._problem(f"cannot connect to broker {self.broker}: {reason}")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._wake.set()
        if was_connected and not self._stopping:
            log.warning("MQTT: lost the connection to %s (%s); %d event(s) kept for after the reconnect",
                        self.broker, reason_code, self.pending())

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self._acks.append((mid, reason_code))
        self._wake.set()

    def _on_message(self, client, userdata, msg):
        if self._claims is not None and self._claims.heard(msg.topic, msg.payload, msg.retain, _session_of(msg)):
            return
        device_id = command_device(self.settings.topic_prefix, msg.topic)
        if device_id is not None:
            self._on_command_message(device_id, msg)
        elif msg.topic == self._ha_status and msg.payload.strip() == b"online":
            log.info("MQTT: Home Assistant is online: publishing discovery again")
            self._publish_discovery()

    # ------------------------------------------------------------------ commands and discovery
    def _reject(self, device_id: str, code: str, message: str, payload: bytes, request_id=None):
        self.commands_rejected += 1
        excerpt = payload[:500].decode("utf-8", "replace")
        self._reject_log(logging.WARNING, "MQTT: rejected command %r for device %s: %s", excerpt[:200], device_id,
                         message)
        self.error(code, message, source="command", device_id=device_id, request=excerpt, request_id=request_id)

    def _command_allowed(self) -> bool:
        """A token bucket of commands_per_s: a flood costs a counter, not a parse, an answer and a log line."""
        now = time.monotonic()
        rate = self.settings.commands_per_s
        self._command_tokens = min(rate, self._command_tokens + (now - self._command_refill) * rate)
        self._command_refill = now
        if self._command_tokens >= 1.0:
            self._command_tokens -= 1.0
            return True
        self.commands_over_limit += 1
        return False

    def _report_over_limit(self):
        """One summary line per 10 s while commands arrive faster than commands_per_s."""
        reported, at = self._over_limit_reported
        now = time.monotonic()
        if self.commands_over_limit > reported and now - at >= 10.0:
            log.warning("MQTT: %d command(s) over mqtt.commands_per_s (%d/s) ignored in the last %.0f s, %d in all",
                        self.commands_over_limit - reported, self.settings.commands_per_s, now - at,
                        self.commands_over_limit, extra={"EVENT": "commands_over_limit"})
            self._over_limit_reported = (self.commands_over_limit, now)
        elif self.commands_over_limit == reported:
            self._over_limit_reported = (reported, now)

    def _on_command_message(self, device_id: str, msg):
        if not msg.payload:  # how a retained message is cleared: nothing was asked
            return
        if self._serves is not None and device_id != self.device_id and not self._serves(device_id):
            self.commands_for_others += 1  # before the rate limit: another agent's traffic costs ours nothing
            return
        if not self._command_allowed():
            return
        problem = topic_problem(device_id, levels=False, max_bytes=MAX_DEVICE_ID_BYTES)
        if problem:  # no error topic to answer on: a topic made from it would be refused too
            self.commands_rejected += 1
            self._reject_log(logging.WARNING, "MQTT: ignored a command on %r: the device id %s", msg.topic[:300],
                             problem)
            return
        if msg.retain:
            self._reject(device_id, "retained", "retained commands are ignored (publish commands with retain=false "
                                                "and clear the retained one)", msg.payload, request_id_of(msg.payload))
            return
        try:
            if self._schema_problem:
                raise CommandError("unsupported", self._schema_problem, request_id_of(msg.payload))
            command = parse_command(msg.payload)
        except CommandError as exc:
            self._reject(device_id, exc.code, exc.message, msg.payload, exc.request_id)
            return
        if command["command"] == "health":
            self.commands_accepted += 1
            self.request_health()
            return
        if self._on_command is None:
            self._reject(device_id, "unsupported", "this agent does not take commands", msg.payload, command.get("id"))
            return
        try:
            self._commands.put_nowait((device_id, command))
        except queue.Full:
            self._reject(device_id, "busy", "too many commands waiting; try again", msg.payload, command.get("id"))
            return
        self.commands_accepted += 1

    def _command_loop(self):
        while True:
            item = self._commands.get()
            if item is None:
                return
            device_id, command = item
            name = command["command"]
            log.info("MQTT: command %s for device %s", command, device_id,
                     extra={"EVENT": "command", "COMMAND": name, "DEVICE_ID": device_id})
            try:
                self._on_command(device_id, command)
            except CommandError as exc:
                self._reject_log(logging.WARNING, "MQTT: command %s for device %s refused (%s): %s", name, device_id,
                                 exc.code, exc.message)
                self.error(exc.code, exc.message, source="command", device_id=device_id,
                           request=_excerpt(command), request_id=command.get("id"))
            except Exception as exc:
                log.exception("MQTT: command %s for device %s failed", name, device_id)
                self.error("command_failed", f"{name}: {type(exc).__name__}: {exc}", source="command",
                           device_id=device_id, request=_excerpt(command), request_id=command.get("id"))

    def _publish_discovery(self):
        ha = self.settings.home_assistant
        for topic, payload in discovery_messages(self.topics, ha.discovery_prefix, ha.name, self.version):
            self._client.publish(topic, payload, qos=1, retain=True)


def _session_of(msg) -> str | None:
    """The stt-agent session a message was tagged with (claims.py), or None."""
    for key, value in getattr(getattr(msg, "properties", None), "UserProperty", None) or ():
        if key == SESSION_PROPERTY:
            return value
    return None
