#!/usr/bin/env python3
"""What the disk outbox (mqtt.outbox: disk) costs against the memory outbox, in one run on one machine.

1. Sustained: how many events a second the disk outbox journals (agent/mqtt/store.py: a writer thread,
   SQLite WAL, synchronous=FULL), with no broker in the way:
   - outage: finals (with their emotion and language, real payloads) put while the broker is away,
     until every row is committed;
   - connected: each message put, taken and deleted again (its PUBACK), as while the broker keeps up
     (a row added and deleted before the writer's next commit never reaches the file);
   - one_per_commit: each message committed before the next is put (a commit, an fsync, per event).
   put_us: the time the pipeline's thread spends in Outbox.put (it never waits for the disk), memory and disk.
2. Latency: finals through a real broker (a local Mosquitto by default), paced, QoS 1, the same
   settings but for mqtt.outbox, memory then disk then memory then disk. Latency = emit -> a
   subscriber (another process) has it; ack_ms = emit -> PUBACK. `added_ms` is disk less memory.

    .venv/bin/python scripts/bench_outbox.py                        # 20,000 rows; 1,000 finals at 100/s per case
    .venv/bin/python scripts/bench_outbox.py --rows 5000 --count 300 --dir /var/lib/stt-agent  # on the box's disk
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_mqtt import broker_for, final_event, machine, percentile, run_case  # noqa: E402 - scripts/ is on the path when run


def messages_for(count: int) -> list:
    """The MQTT messages of `count` utterances, as the publisher maps them (final, emotion, language)."""
    from agent.events import Emotion, Language, Stamped
    from agent.mqtt.payloads import EventMapper
    from agent.mqtt.settings import MqttQosSettings

    mapper = EventMapper("stt-agent", MqttQosSettings())
    out, seq = [], 0
    for i in range(1, count + 1):
        for event in (final_event(i), Emotion(i, "happy", {"happy": 0.51}, 0.9), Language(i, "en", {"en": 0.75}, 0.9)):
            seq += 1
            out += mapper.map(Stamped("bench", "0badcafe", seq, time.time(), event))
    return out


def summary_us(values: list) -> dict:
    values = sorted(values)
    return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1),
            "max": round(values[-1], 1)}


def sustained(directory: Path, utterances: int) -> dict:
    from agent.mqtt.outbox import Outbox
    from agent.mqtt.store import DiskStore

    report = {}
    memory_box = Outbox(10 ** 7, max_bytes=1 << 34)
    calls = []
    for m in messages_for(utterances):
        t = time.perf_counter_ns()
        memory_box.put(m)
        calls.append((time.perf_counter_ns() - t) / 1e3)
    report["memory_put_us"] = summary_us(calls)

    for case in ("outage", "connected", "one_per_commit"):
        path = directory / f"bench-{case}.sqlite3"
        store = DiskStore(path, expiry_s=60)
        store.open()
        box = Outbox(10 ** 7, max_bytes=1 << 34, journal=store)
        messages = messages_for(utterances if case != "one_per_commit" else min(utterances, 300))
        calls = []
        t0 = time.perf_counter()
        for m in messages:
            t = time.perf_counter_ns()
            box.put(m)
            calls.append((time.perf_counter_ns() - t) / 1e3)
            if case == "connected":
                store.remove(box.pop())  # taken, sent and acknowledged at once
            elif case == "one_per_commit":
                store.flush(60)  # one transaction (one fsync) per message: a slow trickle, the worst case
        assert store.flush(600), "the writer did not catch up within 600 s"
        seconds = time.perf_counter() - t0
        report[case] = {"messages": len(messages), "seconds": round(seconds, 3),
                        "events_per_s": round(len(messages) / seconds), "rows_left": store.rows,
                        "put_us": summary_us(calls), "problem": store.problem}
        store.close()
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return report


def latency(host, port, directory: Path, count: int, rate: float) -> dict:
    from agent.mqtt.settings import MqttSettings

    runs = []
    for i, kind in enumerate(("memory", "disk", "memory", "disk")):  # alternated: a drift of the machine hits both
        settings = MqttSettings(enabled=True, host=host, port=port, device_id=f"bench{i}", outbox=kind,
                                outbox_path=str(directory / f"bench-latency-{i}.sqlite3") if kind == "disk" else None,
                                outbox_max=max(1000, count * 3), health_interval_s=3600.0)
        result = run_case(settings, host, port, count, rate)
        result["outbox"] = kind
        runs.append(result)
    report = {"runs": runs}
    for kind in ("memory", "disk"):
        mine = [r for r in runs if r["outbox"] == kind and r["latency_ms"]]
        report[kind] = {p: round(sum(r["latency_ms"][p] for r in mine) / len(mine), 2) for p in ("p50", "p95")}
    report["added_ms"] = {p: round(report["disk"][p] - report["memory"][p], 2) for p in ("p50", "p95")}
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000, help="messages in the sustained runs (3 per utterance)")
    ap.add_argument("--count", type=int, default=1000, help="finals per latency case")
    ap.add_argument("--rate", type=float, default=100.0, help="finals per second in the latency cases")
    ap.add_argument("--dir", type=Path, help="where the SQLite files go (default: a temporary directory); put it "
                                             "on the disk the agent's state directory is on")
    ap.add_argument("--host", help="use this broker instead of starting a local mosquitto")
    ap.add_argument("--port", type=int, default=1883)
    args = ap.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="bench-outbox-"))
    directory.mkdir(parents=True, exist_ok=True)

    with broker_for(args.host, args.port, "bench-outbox-broker-") as (host, port, described):
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        fs = subprocess.run(["df", "--output=fstype", str(directory)], capture_output=True, text=True).stdout.split()
        report = {"machine": machine(), "cpus": mp.cpu_count(), "python": platform.python_version(),
                  "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "directory": str(directory),
                  "filesystem": fs[-1] if fs else None, "argv": sys.argv[1:], "broker": described,
                  "sustained": sustained(directory, max(1, args.rows // 3)),
                  "latency": latency(host, port, directory, args.count, args.rate)}
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
