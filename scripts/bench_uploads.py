#!/usr/bin/env python3
"""OpenAI-style uploads: N concurrent clients posting real-speech WAVs to /v1/audio/transcriptions through the
official `openai` package, as Open WebUI or n8n would; requests/s and p50/p95 latency per N.

    python scripts/bench_uploads.py --model /work/cache/sensevoice-random --clients 1,4,8 --requests 12

Each request is a WAV of 2-4 espeak-ng sentences with pauses (8-15 s); every client sends --requests of them
one after another. `--base-url URL` measures another OpenAI-compatible server instead of starting ours (e.g.
FunASR's funasr-server), side by side in one run when given with --also-ours.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
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
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    wait_listening(proc, port, 60, "bench_uploads: serve")
    return proc, f"http://127.0.0.1:{port}/v1"


def run(base_url: str, n: int, requests: int, wavs: list) -> dict:
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

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    pct = lambda q: round(1000 * float(np.percentile(latencies, q)), 1) if latencies else None  # noqa: E731
    return {"clients": n, "requests": len(latencies), "failed": len(failures), "wall_s": round(wall, 1),
            "requests_per_s": round(len(latencies) / wall, 3), "audio_s_per_s": round(audio_s[0] / wall, 2),
            "latency_ms_p50": pct(50), "latency_ms_p95": pct(95), "failures": failures[:3]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--requests", type=int, default=8, help="per client")
    ap.add_argument("--base-url", help="another OpenAI-compatible server's /v1 URL (not started here)")
    ap.add_argument("--also-ours", action="store_true", help="with --base-url: measure ours too, in the same run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-uploads"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    pool = [trimmed(s) for s in synthesize(args.work)]
    wavs = clips(pool, 64)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M"),
              "model": str(args.model), "threads": args.threads, "clip_seconds_mean": round(
                  float(np.mean([s for _, s in wavs])), 1), "runs": {}}
    targets = []
    if args.base_url:
        targets.append(("peer", args.base_url, None))
    if not args.base_url or args.also_ours:
        proc, url = serve(args, args.work)
        targets.append(("ours", url, proc))
    try:
        for n in [int(x) for x in args.clients.split(",")]:
            for name, url, _ in targets:
                run(url, 1, 1, wavs)  # warm-up, not counted
                result = run(url, n, args.requests, wavs)
                report["runs"].setdefault(name, []).append(result)
                print(json.dumps({name: result}), file=sys.stderr, flush=True)
    finally:
        for _, _, proc in targets:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
