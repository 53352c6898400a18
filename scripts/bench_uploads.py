#!/usr/bin/env python3
"""OpenAI-style uploads: N concurrent clients posting real-speech WAVs to /v1/audio/transcriptions through the
official `openai` package, as Open WebUI or n8n would; requests/s and p50/p95 latency per N.

    python scripts/bench_uploads.py --model /work/cache/sensevoice-random --clients 1,4,8 --requests 12

Each request is a WAV of 2-4 espeak-ng sentences with pauses (8-15 s); every client sends --requests of them
one after another. Both sides get the same clips in the same order, one warm-up request each before every N, and
are timed by the same client code: latency is request sent -> transcript received.

A peer beside ours, in one run:
  --peer-command CMD  starts another OpenAI-compatible server in the foreground on 127.0.0.1:{port} with {threads}
                      threads, and stops it at the end (its process group), e.g. FunASR's own funasr-server:
                      --peer-command "bash scripts/run_funasr_peer.sh {port} {threads}" (docs/benchmarks/openai-peer.md)
  --base-url URL      a server already running (not started here); measured instead of ours unless --also-ours
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_longform import synthesize  # noqa: E402
from bench_streams import free_port, trimmed, wait_listening  # noqa: E402

SR = 16000


def clips(pool: list, count: int, seed: int = 7) -> list:
    """`count` WAVs (bytes) of 2-4 sentences with 0.4-1.2 s pauses."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        parts = [np.zeros(int(0.3 * SR), np.float32)]
        for _ in range(int(rng.integers(2, 5))):
            parts += [pool[int(rng.integers(len(pool)))], np.zeros(int(rng.uniform(0.4, 1.2) * SR), np.float32)]
        pcm = np.clip(np.concatenate(parts), -32768, 32767).astype("<i2")
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(SR)
            w.writeframes(pcm.tobytes())
        out.append((buf.getvalue(), len(pcm) / SR))
    return out


def serve(args, work: Path):
    port = free_port()
    config = work / "uploads.yaml"
    config.write_text(f"recognizer:\n  model_dir: {args.model}\n  cpu:\n    threads: {args.threads}\n"
                      f"vad:\n  kind: silero\nserver:\n  host: 127.0.0.1\n  port: {port}\n  auth: none\n"
                      "  max_streams: 64\n", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        wait_listening(proc, port, 60, "bench_uploads: serve")
    except SystemExit:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}/v1"


def start_peer(args, work: Path):
    """The peer's own server, started by the user's command line ({port} and {threads} filled in)."""
    port = free_port()
    command = args.peer_command.format(port=port, threads=args.threads)
    log_path = work / "peer.log"
    with open(log_path, "wb") as log:  # a file, not a pipe: the peer logs every request and nobody reads it
        proc = subprocess.Popen(command, shell=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)
    try:
        # FunASR loads 0.9 GB of torch weights: 25 s on a busy 2-core box.
        wait_listening(proc, port, 300, "the peer")
    except SystemExit as exc:
        stop(proc)
        tail = log_path.read_text(errors="replace")[-1500:]
        raise SystemExit(f"{exc} ({log_path}):\n{tail}") from None
    return proc, f"http://127.0.0.1:{port}/v1"


def stop(proc) -> None:
    """The server's whole process group (a peer's shell and its server alike), SIGTERM then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def cpu_seconds(proc) -> float | None:
    """User + system CPU of every process in the server's session (Linux /proc), so both sides are counted alike."""
    if proc is None or not os.path.isdir("/proc"):
        return None
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == proc.pid:  # field 6, the session id (after the name and state)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def run(base_url: str, n: int, requests: int, wavs: list, proc=None) -> dict:
    from openai import OpenAI

    latencies, audio_s, failures = [], [0.0], []
    lock = threading.Lock()

    def client(k: int):
        api = OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
        for r in range(requests):
            data, seconds = wavs[(k * requests + r) % len(wavs)]
            started = time.monotonic()
            try:
                api.audio.transcriptions.create(model="whisper-1", file=("talk.wav", data, "audio/wav"))
            except Exception as exc:  # noqa: BLE001 - a failed request is a result
                failures.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                latencies.append(time.monotonic() - started)
                audio_s[0] += seconds

    cpu_before = cpu_seconds(proc)
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    cpu = None if cpu_before is None else cpu_seconds(proc) - cpu_before
    pct = lambda q: round(1000 * float(np.percentile(latencies, q)), 1) if latencies else None  # noqa: E731
    return {"clients": n, "requests": len(latencies), "failed": len(failures), "wall_s": round(wall, 1),
            "requests_per_s": round(len(latencies) / wall, 3), "audio_s_per_s": round(audio_s[0] / wall, 2),
            "latency_ms_p50": pct(50), "latency_ms_p95": pct(95),
            "server_cpu_s_per_audio_s": round(cpu / audio_s[0], 3) if cpu is not None and audio_s[0] else None,
            "failures": failures[:3]}


def table(report: dict) -> str:
    """The runs side by side, per N, as a Markdown table; the ratio columns are ours against the peer's."""
    runs = report["runs"]
    peer = next((name for name in runs if name != "ours"), None)
    head = "| clients | server | requests/s | audio s per s | latency p50 / p95 ms | server CPU s per audio s | failed |"
    lines = [head, "|---" * 7 + "|"]
    by_n = {}
    for name, results in runs.items():
        for r in results:
            by_n.setdefault(r["clients"], {})[name] = r
    for n, sides in by_n.items():
        for name, r in sides.items():
            lines.append(f"| {n} | {name} | {r['requests_per_s']:.2f} | {r['audio_s_per_s']:.1f} | "
                         f"{r['latency_ms_p50']} / {r['latency_ms_p95']} | {r['server_cpu_s_per_audio_s']} | "
                         f"{r['failed']} |")
    if peer and "ours" in runs:
        lines += ["", "| clients | throughput ours / peer | p95 ours / peer |", "|---|---|---|"]
        for n, sides in by_n.items():
            ours, theirs = sides.get("ours"), sides.get(peer)
            if ours and theirs and theirs["requests_per_s"] and theirs["latency_ms_p95"]:
                lines.append(f"| {n} | {ours['requests_per_s'] / theirs['requests_per_s']:.2f}x | "
                             f"{ours['latency_ms_p95'] / theirs['latency_ms_p95']:.2f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--requests", type=int, default=8, help="per client")
    ap.add_argument("--peer-command", help="starts another OpenAI-compatible server in the foreground on "
                                           "127.0.0.1:{port} with {threads} threads; measured beside ours")
    ap.add_argument("--peer-name", default="peer", help="the peer's name in the report")
    ap.add_argument("--base-url", help="another OpenAI-compatible server's /v1 URL (not started here)")
    ap.add_argument("--also-ours", action="store_true", help="with --base-url: measure ours too, in the same run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-uploads"))
    args = ap.parse_args()
    if args.peer_command and args.base_url:
        ap.error("--peer-command and --base-url both name the peer: give one")
    args.work.mkdir(parents=True, exist_ok=True)
    pool = [trimmed(s) for s in synthesize(args.work)]
    wavs = clips(pool, 64)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M"),
              "model": str(args.model), "threads": args.threads, "clip_seconds_mean": round(
                  float(np.mean([s for _, s in wavs])), 1), "requests_per_client": args.requests, "runs": {}}
    targets = []
    try:
        if args.peer_command:
            report["peer"] = {"name": args.peer_name, "command": args.peer_command}
            proc, url = start_peer(args, args.work)
            targets.append((args.peer_name, url, proc))
        elif args.base_url:
            report["peer"] = {"name": args.peer_name, "base_url": args.base_url}
            targets.append((args.peer_name, args.base_url, None))
        if not args.base_url or args.also_ours:
            proc, url = serve(args, args.work)
            targets.append(("ours", url, proc))
        for i, n in enumerate(int(x) for x in args.clients.split(",")):
            # The servers take turns, the peer first at one N and second at the next, so neither always
            # runs just after the other's load.
            for name, url, proc in (targets if i % 2 == 0 else targets[::-1]):
                run(url, 1, 1, wavs)  # warm-up, not counted
                result = run(url, n, args.requests, wavs, proc)
                report["runs"].setdefault(name, []).append(result)
                print(json.dumps({name: result}), file=sys.stderr, flush=True)
    finally:
        for _, _, proc in targets:
            if proc is not None:
                stop(proc)
    print(table(report), file=sys.stderr)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
