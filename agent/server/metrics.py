"""GET /metrics: the agent's numbers in Prometheus' text format (docs/STREAMING.md, "Metrics and probes").

    Metrics(net, publisher)       one CollectorRegistry per agent (tests and two agents in one process
                                  do not share the global one)
        .events                   a sink on every emitter: events out by type, end of speech -> final
        .requests, .middleware    HTTP requests by route and status
        LoopCollector             the rest, read at scrape time
        .handle                   the /metrics route

Nearly everything is read at scrape time from the counters the parts keep already (the decoder's
model seconds, batches and load; the registry; the loop's refusals; the gates; the publisher's stats),
so nothing is counted twice. Only what no part keeps is observed as it happens, in `EventMetrics`.
A scrape runs on the network loop, the thread that owns the registry and the connections.
"""

from __future__ import annotations

import bisect
import collections
import threading
from typing import TYPE_CHECKING, Dict, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector

from agent import __version__
from agent.audio.format import RATE
from agent.events import Stamped
from agent.pipeline.scheduler import FINAL, PARTIAL, SPECULATIVE, UPLOAD

if TYPE_CHECKING:
    from agent.server.loop import NetworkLoop

# End of speech -> final: ~0.3 s with a speculative final on a quiet box, seconds with the model behind,
# 10 s and more only when something is wrong.
FINAL_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0)
# Finals per model run: server.batch_size is at most 64.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Every kind of model run, so each series exists from the first scrape (upload: files posted over HTTP).
DECODE_KINDS = (FINAL, SPECULATIVE, PARTIAL, UPLOAD)


class EventMetrics:
    """A sink on every device's emitter (and the microphone's): counts what goes out, as it goes.

    Counted under one lock from whichever thread emits (the loop, the decode thread); a scrape copies
    the counts under it. Collected as plain families: no `_created` series beside each counter.
    """

    def __init__(self, per_device: bool):
        self.per_device = per_device
        self._lock = threading.Lock()
        self._events: collections.Counter = collections.Counter()  # (type, device or "") -> events
        # device or "" -> [finals per bucket..., count, sum of seconds]; without devices, zeros from the start
        self._finals: Dict[str, list] = {} if per_device else {"": _empty_histogram()}

    def publish(self, stamped: Stamped) -> None:
        event = stamped.event
        device = stamped.device_id if self.per_device else ""
        with self._lock:
            self._events[(event.type, device)] += 1
            if event.type == "final" and event.endpoint_delay_ms is not None:
                seconds = event.endpoint_delay_ms / 1000.0
                counts = self._finals.setdefault(device, _empty_histogram())
                slot = bisect.bisect_left(FINAL_BUCKETS, seconds)  # the first bound >= seconds
                if slot < len(FINAL_BUCKETS):
                    counts[slot] += 1
                counts[-2] += 1
                counts[-1] += seconds

    def close(self) -> None:
        pass

    def collect(self):
        labels = ("device",) if self.per_device else ()
        with self._lock:
            events, finals = dict(self._events), {d: list(c) for d, c in self._finals.items()}
        family = CounterMetricFamily("stt_events", "Events emitted to the sinks (WebSocket, Wyoming, MQTT, stdout), "
                                     "by type.", labels=("type",) + labels)
        for (kind, device), n in sorted(events.items()):
            family.add_metric((kind, device) if self.per_device else (kind,), n)
        yield family
        histogram = HistogramMetricFamily("stt_end_of_speech_to_final_seconds", "From the end of speech to its "
                                          "final being emitted (finals of streams in real time).", labels=labels)
        for device, counts in sorted(finals.items()):
            below, buckets = 0, []
            for bound, n in zip(FINAL_BUCKETS, counts):
                below += n
                buckets.append((repr(float(bound)), below))
            buckets.append(("+Inf", counts[-2]))
            histogram.add_metric((device,) if self.per_device else (), buckets, sum_value=counts[-1])
        yield histogram


def _empty_histogram() -> list:
    return [0] * len(FINAL_BUCKETS) + [0, 0.0]


class Metrics:
    def __init__(self, net: "NetworkLoop", publisher=None):
        self.registry = CollectorRegistry()
        self.events = EventMetrics(net.s.metrics.per_device_labels)
        self.requests = RequestMetrics()
        for collector in (self.events, self.requests, LoopCollector(net, publisher)):
            self.registry.register(collector)
        ProcessCollector(registry=self.registry)  # memory, CPU seconds, open descriptors

    @property
    def middleware(self):
        return self.requests.middleware()

    async def handle(self, request):
        from aiohttp import web

        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


class RequestMetrics:
    """HTTP requests by route pattern and status; counted and scraped on the loop only, so no lock."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()  # (route, status) -> requests

    def middleware(self):
        from aiohttp import web

        counts = self.counts

        def counted(request, status: int) -> None:
            resource = request.match_info.route.resource  # the route's pattern: no device id in the label
            counts[(resource.canonical if resource is not None else "other", str(status))] += 1

        @web.middleware
        async def count(request, handler):
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                counted(request, exc.status)
                raise
            except Exception:
                counted(request, 500)  # aiohttp answers 500
                raise
            counted(request, response.status)
            return response
        return count

    def collect(self):
        family = CounterMetricFamily("stt_http_requests", "HTTP requests answered, by route and status (a "
                                     "WebSocket counts when it closes, as 101).", labels=("route", "status"))
        for (route, status), n in sorted(self.counts.items()):
            family.add_metric((route, status), n)
        yield family


class LoopCollector:
    """Reads the network loop's parts at scrape time."""

    def __init__(self, net: "NetworkLoop", publisher=None):
        self.net = net
        self.publisher = publisher

    def collect(self):
        net = self.net
        info = GaugeMetricFamily("stt_build", "The agent's version and the provider its model runs on.",
                                 labels=("version", "provider"))
        info.add_metric((__version__, str(net.recognizer.info.get("provider"))), 1)
        yield info
        yield from self._streams(net)
        yield from self._connections(net)
        yield from self._decoder(net.decoder)
        if self.publisher is not None:
            yield from self._mqtt(self.publisher.stats())

    def _streams(self, net):
        registry = net.registry
        active = {"websocket": 0, "wyoming": 0}
        samples = registry.samples_in
        for claim in registry.owners().values():
            if claim.stream is not None:
                active["websocket" if claim in net.connections else "wyoming"] += 1
                samples += claim.stream.samples_in
        gauge = GaugeMetricFamily("stt_streams_active", "Streams open now, by protocol (websocket: the server's "
                                  "port, /ws/stt and OpenAI's realtime API).", labels=("protocol",))
        for protocol, n in active.items():
            gauge.add_metric((protocol,), n)
        yield gauge
        yield GaugeMetricFamily("stt_streams_admitted", "Streams holding a place among server.max_streams (also "
                                "those still connecting or finishing).", value=registry.admitted)
        yield GaugeMetricFamily("stt_streams_max", "server.max_streams.", value=registry.max_streams)
        yield CounterMetricFamily("stt_streams_opened", "Streams opened on the server's port (/ws/stt: at their "
                                  "first message).", value=net.accepted)
        yield CounterMetricFamily("stt_audio_seconds", "Audio received from network streams (WebSocket and "
                                  "Wyoming), in seconds at 16 kHz.", value=samples / RATE)

    def _connections(self, net):
        gates = {"websocket": net._http_gate}  # the loop's own, read on its thread
        if net.wyoming is not None:
            gates["wyoming"] = net.wyoming.gate
        open_ = GaugeMetricFamily("stt_connections_open", "TCP connections open now, by listening socket.",
                                  labels=("protocol",))
        pending = GaugeMetricFamily("stt_connections_pending", "Connections that have not sent a first request "
                                    "yet (bounded by server.max_pending).", labels=("protocol",))
        closed = CounterMetricFamily("stt_connections_closed_pending", "Pending connections closed: evicted (at "
                                     "server.max_pending) or expired (server.handshake_timeout_s).",
                                     labels=("protocol", "reason"))
        for protocol, gate in gates.items():
            if gate is None:
                continue
            open_.add_metric((protocol,), gate.connections)
            pending.add_metric((protocol,), gate.pending)
            closed.add_metric((protocol, "evicted"), gate.evicted)
            closed.add_metric((protocol, "expired"), gate.expired)
        yield from (open_, pending, closed)
        refused = CounterMetricFamily("stt_refusals", "Streams refused, by protocol and reason (WebSocket: the "
                                      "HTTP refusals of docs/STREAMING.md; Wyoming: busy).",
                                      labels=("protocol", "reason"))
        for reason, n in sorted(net.refused.items()):
            refused.add_metric(("websocket", reason), n)
        if net.wyoming is not None:
            stats = net.wyoming.stats()
            refused.add_metric(("wyoming", "busy"), stats["refused"])
            yield CounterMetricFamily("stt_wyoming_transcripts", "Wyoming transcripts sent.",
                                      value=stats["transcripts"])
            malformed = CounterMetricFamily("stt_wyoming_malformed", "Wyoming events refused, by error code.",
                                            labels=("code",))
            for code, n in sorted(stats["malformed"].items()):
                malformed.add_metric((code,), n)
            yield malformed
        yield refused
        yield CounterMetricFamily("stt_accept_failures", "Accepts that failed for want of descriptors or memory.",
                                  value=net.accept_failures)

    def _decoder(self, decoder):
        # dict() copies a Counter in one step under the GIL, while the decode thread adds to it.
        seconds, cancelled = dict(decoder.model_seconds), dict(decoder.cancelled)
        decode = CounterMetricFamily("stt_decode_seconds", "Model time, by kind of decode.", labels=("kind",))
        stopped = CounterMetricFamily("stt_decode_cancelled_runs", "Model runs stopped midway, by kind.",
                                      labels=("kind",))
        for kind in DECODE_KINDS:
            decode.add_metric((kind,), seconds.get(kind, 0.0))
            stopped.add_metric((kind,), cancelled.get(kind, 0))
        yield from (decode, stopped)
        speculation = CounterMetricFamily("stt_speculative_finals", "Speculative finals: requested, declined (the "
                                          "model was behind), used (their result was the final).",
                                          labels=("outcome",))
        for outcome, n in sorted(dict(decoder.speculation).items()):
            speculation.add_metric((outcome,), n)
        yield speculation
        batches = dict(decoder.batches)  # finals per model run -> runs
        buckets = []
        for bound in BATCH_BUCKETS:
            below = sum(n for size, n in batches.items() if size <= bound)
            buckets.append((str(bound), below))
        buckets.append(("+Inf", sum(batches.values())))
        yield HistogramMetricFamily("stt_decode_batch_size", "Finals per model run.", buckets=buckets,
                                    sum_value=sum(size * n for size, n in batches.items()))
        yield GaugeMetricFamily("stt_decoder_queued_finals", "Finals waiting for the model now.",
                                value=decoder.queued_finals())
        load = GaugeMetricFamily("stt_decoder_load", "Share of the last minute the model spent on finals "
                                 "(speculative ones included), partials and uploads; admission refuses new "
                                 "streams above server.admission_load on finals.", labels=("kind",))
        for kind, share in decoder.load().items():
            load.add_metric((kind,), share)
        yield load

    def _mqtt(self, stats: dict):
        yield GaugeMetricFamily("stt_mqtt_connected", "1 while connected to the broker.", value=int(stats["connected"]))
        yield GaugeMetricFamily("stt_mqtt_outbox_depth", "Messages waiting for the broker.", value=stats["queued"])
        yield GaugeMetricFamily("stt_mqtt_inflight", "Messages sent and not yet acknowledged.",
                                value=stats["inflight"])
        outbox = stats["outbox"]
        yield GaugeMetricFamily("stt_mqtt_outbox_bytes", "Bytes (topics and payloads) waiting in the outbox; "
                                "capped at mqtt.outbox_max_bytes.", value=outbox["bytes"])
        yield GaugeMetricFamily("stt_mqtt_outbox_on_disk", "1 while the outbox keeps its events in its SQLite "
                                "file (mqtt.outbox: disk), 0 for memory.", value=int(outbox["kind"] == "disk"))
        yield GaugeMetricFamily("stt_mqtt_outbox_fallback", "1 once the disk outbox failed (full, read-only, "
                                "corrupt) and events wait in memory only.", value=int(outbox["fallback"]))
        outbox_dropped = CounterMetricFamily("stt_mqtt_outbox_dropped", "Messages the outbox dropped, by reason: "
                                             "full (outbox_max per lane), bytes (outbox_max_bytes), expired "
                                             "(message_expiry_s), offline (partials while disconnected), replies.",
                                             labels=("reason",))
        for reason, key in (("full", "outbox_full"), ("bytes", "outbox_bytes"), ("expired", "expired"),
                            ("offline", "offline"), ("replies", "replies")):
            outbox_dropped.add_metric((reason,), stats["dropped"][key])
        yield outbox_dropped
        yield CounterMetricFamily("stt_mqtt_published", "Messages delivered to the broker (acknowledged; QoS 0: "
                                  "sent).", value=stats["published"])
        yield CounterMetricFamily("stt_mqtt_reconnects", "Connections to the broker after the first.",
                                  value=stats["reconnects"])
        dropped = CounterMetricFamily("stt_events_dropped", "Events a sink dropped, by sink and type (MQTT: outbox "
                                      "full, expired, broker offline).", labels=("sink", "type"))
        for kind, n in sorted(stats["dropped"]["by_type"].items()):
            dropped.add_metric(("mqtt", kind), n)
        yield dropped


def metrics_for(net: "NetworkLoop", publisher=None) -> Optional[Metrics]:
    """The loop's metrics, or None where /metrics is off (or there is no HTTP server to serve it)."""
    s = net.s
    return Metrics(net, publisher) if s.enabled and s.metrics.enabled else None
