#!/usr/bin/env python3
"""Publish-to-receive latency of finals through an MQTT broker (a local Mosquitto by default).

The agent's MqttPublisher publishes QoS 1 finals (a realistic payload: 12 tokens, scores); a
subscriber in a separate process records when each arrives. Latency = publisher.emitter.emit(event) called ->
subscriber's on_message, on one host, both stamped with CLOCK_MONOTONIC (shared by processes).
Each final also produces emotion and language messages (3 QoS 1 messages per final).
sink_call_us is how long the pipeline's thread spends in emitting the event to the publisher.

    .venv/bin/python scripts/bench_mqtt.py                 # 2000 finals paced at 100/s, then a burst
    .venv/bin/python scripts/bench_mqtt.py --host broker.lan --port 1883 --count 500
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

def final_event(i: int):
    from agent.events import Final
    from agent.recognizer.result import Recognition, Token

    tokens = [Token(t, 7, 0.24 + 0.12 * k, 0.36 + 0.12 * k, 0.59)
              for k, t in enumerate([" hello", " world", "你", "好"] * 3)]
    result = Recognition(
        text="hello world你好 hello world你好 hello world你好", language="en",
        language_scores={"zh": 0.1014, "en": 0.7489, "yue": 0.0615, "ja": 0.0373, "ko": 0.0373, "nospeech": 0.0137},
        emotion="happy", emotion_scores={"happy": 0.51, "sad": 0.069, "angry": 0.069, "neutral": 0.1876,
                                         "fearful": 0.0254, "disgusted": 0.0254, "surprised": 0.1138},
        event="speech", event_scores={"speech": 0.3675, "laughter": 0.1352, "bgm": 0.0497}, confidence=0.4478,
        tokens=tokens, duration=2.036)
    return Final(i, result, audio_start=0.18, audio_end=2.216, audio_start_wall=time.time() - 2,
                 audio_end_wall=time.time(), queue_ms=1.1, decode_ms=9.2, endpoint_delay_ms=300.0, speculative=False)


def subscriber(host, port, topic, expected, ready, results):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got = []
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-sub",
                         protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *a: ready.set()

    def on_message(c, u, msg):
        got.append((time.perf_counter_ns(), json.loads(msg.payload)["utterance_id"], msg.dup))

    client.on_message = on_message
    client.connect(host, port, keepalive=30)
    client.loop_start()
    deadline = time.monotonic() + 120
    while len(got) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # late duplicates
    client.disconnect()
    client.loop_stop()
    results.put(got)


def percentile(sorted_values, p):
    import math

    return sorted_values[max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))]


def run_case(settings, host, port, count, rate):
    from agent.mqtt.publisher import MqttPublisher

    ctx = mp.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    topic = f"{settings.topic_prefix}/{settings.device_id}/stt/final"
    proc = ctx.Process(target=subscriber, args=(host, port, topic, count, ready, results))
    proc.start()
    assert ready.wait(20), "subscriber did not subscribe"
    pub = MqttPublisher(settings)
    pub.start()
    assert pub.wait_connected(10), pub.last_error
    sent, calls = {}, []
    events = [final_event(i) for i in range(1, count + 1)]
    t0 = time.perf_counter()
    for i, event in enumerate(events, 1):
        if rate:
            delay = t0 + (i - 1) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        sent[i] = time.perf_counter_ns()
        pub.emitter.emit(event)
        calls.append((time.perf_counter_ns() - sent[i]) / 1e3)
    got = results.get(timeout=180)
    proc.join(10)
    left = pub.stop()
    ids = [u for _, u, _ in got]
    lat = sorted((t - sent[u]) / 1e6 for t, u, _ in got if u in sent)
    span = (max(t for t, _, _ in got) - min(sent.values())) / 1e9 if got else 0
    return {"count": count, "rate_per_s": rate or "burst", "received": len(got), "lost": count - len(set(ids)),
            "duplicates": len(ids) - len(set(ids)), "in_order": ids == sorted(ids), "undelivered_at_stop": left,
            "latency_ms": {"p50": round(percentile(lat, 50), 2), "p95": round(percentile(lat, 95), 2),
                           "p99": round(percentile(lat, 99), 2), "max": round(lat[-1], 2)} if lat else None,
            "throughput_per_s": round(len(got) / span, 1) if span else None,
            "sink_call_us": {"p50": round(percentile(sorted(calls), 50), 1),
                             "p95": round(percentile(sorted(calls), 95), 1), "max": round(max(calls), 1)},
            "publish_ack_ms": pub.stats()["publish_latency_ms"]}


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip()


@contextlib.contextmanager
def broker_for(host, port, prefix: str):
    """(host, port, how the report names it): the broker given, else a local mosquitto for the run."""
    if host is not None:
        yield host, port, f"{host}:{port}"
        return
    from mosquitto_fixture import MOSQUITTO, Broker

    if MOSQUITTO is None:
        sys.exit("mosquitto is not installed: apt-get install mosquitto, or pass --host")
    broker = Broker(Path(tempfile.mkdtemp(prefix=prefix)), persistence=False).start()
    try:
        yield broker.host, broker.port, "local mosquitto (spawned)"
    finally:
        broker.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", help="use this broker instead of starting a local mosquitto")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=100.0, help="finals per second in the paced run")
    ap.add_argument("--protocol", default="5", choices=("5", "3.1.1"))
    args = ap.parse_args()

    from agent.mqtt.settings import MqttSettings

    with broker_for(args.host, args.port, "bench-mqtt-") as (host, port, described):
        settings = MqttSettings(enabled=True, host=host, port=port, device_id="bench", protocol=args.protocol,
                                outbox_max=max(1000, args.count * 3), health_interval_s=3600.0)
        report = {"machine": machine(), "cpus": mp.cpu_count(), "python": platform.python_version(),
                  "protocol": args.protocol, "broker": described,
                  "runs": [run_case(settings, host, port, args.count, args.rate),
                           run_case(settings, host, port, args.count, 0)]}
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
