#!/usr/bin/env python3
"""Wyoming speech-to-text latency, driven as Home Assistant drives it (one connection per command).

For each of N spoken commands (espeak-ng sentences, 1.5 s of silence after each), sent at real-time
pace in 1024-sample chunks as Home Assistant's pipeline sends them:
- with our endpointing (requires_external_vad false): end of speech (the sentence's last voiced
  sample, at its real-time instant) -> transcript received; the upload stops when it arrives;
- without (requires_external_vad true, as every other Wyoming STT service): the client sends
  audio-stop when its own VAD would (here: 0.7 s after the speech, Home Assistant's default
  silence) -> transcript received, and end of speech -> transcript.

    python scripts/bench_wyoming.py --model /tmp/sv --commands 20
    python scripts/bench_wyoming.py --model /tmp/sv --peer-command "sh run_peer.sh {port} {threads}" --peer-name X

The peer (--peer-command: any Wyoming STT server started in the foreground on 127.0.0.1:{port}) is
driven as ours without endpointing: audio-stop 0.7 s after the speech. One command before each run
warms the server up and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_longform import synthesize  # noqa: E402
from bench_streams import free_port, trimmed, wait_listening  # noqa: E402

SR = 16000
CHUNK = 1024  # samples per audio-chunk, as Home Assistant sends them
HA_SILENCE_S = 0.7  # Home Assistant's default end-of-command silence


def start_server(args, endpoint: bool, work: Path):
    port = free_port()
    config = work / f"wyoming-{endpoint}.yaml"
    config.write_text(f"recognizer:\n  model_dir: {args.model}\n  cpu:\n    threads: {args.threads}\n"
                      f"logging:\n  level: warning\nserver:\n  wyoming:\n    enabled: true\n"
                      f"    uri: tcp://127.0.0.1:{port}\n    zeroconf: false\n    endpoint: {str(endpoint).lower()}\n",
                      encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    wait_listening(proc, port, 60, "the Wyoming server")
    return proc, port


def start_peer(args, work: Path):
    """The peer's own server, started by the user's command line ({port} and {threads} filled in)."""
    port = free_port()
    command = args.peer_command.format(port=port, threads=args.threads)
    proc = subprocess.Popen(command, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=work,
                            start_new_session=True)
    wait_listening(proc, port, 300, "the peer")
    return proc, port


async def command(port: int, sentence: np.ndarray, endpoint: bool) -> dict:
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    audio = np.concatenate([np.zeros(int(0.3 * SR)), sentence, np.zeros(int(1.5 * SR))])
    pcm = np.clip(audio, -32768, 32767).astype("<i2").tobytes()
    speech_end = int(0.3 * SR) + len(sentence)
    stop_at = speech_end + int(HA_SILENCE_S * SR)  # where a client-side VAD would end the command
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=SR, width=2, channels=1).event())
        t0 = time.monotonic()
        got: dict = {}

        async def receive():
            while True:
                event = await client.read_event()
                if event is None or Transcript.is_type(event.type):
                    got["at"] = time.monotonic()
                    return

        receiver = asyncio.create_task(receive())
        stop_sent = None
        for i in range(0, len(audio), CHUNK):
            if receiver.done():
                break
            if not endpoint and i >= stop_at:
                await client.write_event(AudioStop().event())
                stop_sent = time.monotonic()
                break
            wait = t0 + (i + CHUNK) / SR - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await client.write_event(AudioChunk(rate=SR, width=2, channels=1, audio=pcm[2 * i:2 * (i + CHUNK)]).event())
        await receiver
    result = {"end_of_speech_to_transcript_ms": (got["at"] - (t0 + speech_end / SR)) * 1000}
    if stop_sent is not None:
        result["audio_stop_to_transcript_ms"] = (got["at"] - stop_sent) * 1000
    return result


def summary(values):
    return {"p50": round(float(np.percentile(values, 50)), 1), "p95": round(float(np.percentile(values, 95)), 1),
            "n": len(values)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--commands", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-wyoming"))
    ap.add_argument("--peer-command", help="starts another Wyoming STT server in the foreground on 127.0.0.1:{port} "
                                           "with {threads} threads; driven like ours without endpointing")
    ap.add_argument("--peer-name", default="peer")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    pool = [trimmed(s) for s in synthesize(args.work)]
    rng = np.random.default_rng(5)
    sentences = [pool[rng.integers(len(pool))] for _ in range(args.commands)]
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M"),
              "model": str(args.model), "threads": args.threads}
    runs = [("own_endpointing", True), ("client_audio_stop", False)] + ([(args.peer_name, None)]
                                                                        if args.peer_command else [])
    for name, endpoint in runs:
        proc, port = start_server(args, endpoint, args.work) if endpoint is not None else start_peer(args, args.work)
        try:
            asyncio.run(command(port, sentences[0], bool(endpoint)))  # warm-up: first loads are not latency
            results = [asyncio.run(command(port, s, bool(endpoint))) for s in sentences]
        finally:
            if endpoint is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the peer's shell and its server
            else:
                proc.terminate()
            proc.wait(30)
        report[name] = {key: summary([r[key] for r in results if key in r])
                        for key in ("end_of_speech_to_transcript_ms", "audio_stop_to_transcript_ms")
                        if any(key in r for r in results)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
