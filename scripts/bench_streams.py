#!/usr/bin/env python3
"""How many real-time device streams one box holds: `stt-agent serve` under N simulated devices.

Each device streams its own conversation (espeak-ng sentences, English and Mandarin, with
0.6-2.5 s pauses) at real-time pace in 100 ms frames over WebSocket, starts staggered over the
first seconds. Measured at the client: end of speech (the last sample of an utterance's last sentence, sent
at its real-time instant) -> final received, p50/p95 (a sentence followed by more speech after a pause
shorter than the endpoint is inside an utterance: counted as covered, not as an end of speech); finals lost (an utterance the server ended,
speech_end, without its final; or a sentence no final covers); partials per utterance. Measured
on the server process: CPU (utime + stime over wall) and peak RSS.

    python scripts/bench_streams.py --model /tmp/sv --threads 2 --streams 1,2,4,8,16,24,32
    python scripts/bench_streams.py --model /tmp/sv --streams 20 --batch-sizes 1,4   # batching off vs on

The peer, side by side (--peer-server DIR --peer-python PY): what a user would run instead, sherpa-onnx's
batching WebSocket server (python-api-examples/non_streaming_server.py from a sherpa-onnx checkout,
--max-batch-size 3; its own websockets<14 and sherpa-onnx in PY's environment), with each device
running Silero VAD itself (sherpa-onnx's VoiceActivityDetector, 0.4 s minimum silence, as our endpoint)
and sending each finished utterance. Neither its code nor a script building it is part of this repo.

The model is the full-size architecture with random weights (scripts/export_onnx.py --random-init):
real compute, meaningless text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_longform import synthesize  # noqa: E402 - the same espeak-ng sentence pool

SR = 16000
LATE, BLOCKED, FAILED = [], [], []  # per run: send lag, send blocking, connections refused or dropped
# A final ending this long after a sentence's end covers the next sentence too (the pause between them was
# shorter than the endpoint): measured on 8 streams, finals end 0.16-0.21 s after the utterance's last
# sentence and 2.3-3.7 s after one inside it.
INSIDE_S = 1.0
FRAME = SR // 10  # 100 ms


def trimmed(sentence: np.ndarray) -> np.ndarray:
    """The sentence without espeak-ng's own leading and trailing silence: its end is the last voiced sample."""
    loud = np.flatnonzero(np.abs(sentence) > 300)  # -40 dBFS
    return sentence[loud[0]:loud[-1] + 1] if len(loud) else sentence


# talk: one sentence after another, 0.6-2.5 s apart (about 60% of the time speech);
# conversation: a person talking to an avatar: turns of 1-3 sentences 0.3-0.8 s apart, then 3-8 s while the
# avatar answers (about half of the time speech with this sentence pool; the report gives the share).
WORKLOADS = ("talk", "conversation")


def conversation(pool: list, seconds: float, seed: int, workload: str = "talk"):
    """(s16le bytes, [(sentence start, end) in samples]) of about `seconds` of talk and pauses."""
    rng = np.random.default_rng(seed)
    parts, turns, pos = [np.zeros(int(rng.uniform(0.2, 1.0) * SR), np.float32)], [], 0
    pos = len(parts[0])
    left_in_turn = 0
    while pos < seconds * SR:
        sentence = pool[rng.integers(len(pool))]
        turns.append((pos, pos + len(sentence)))
        if workload == "talk":
            pause_s = rng.uniform(0.6, 2.5)
        else:
            if left_in_turn <= 0:
                left_in_turn = int(rng.integers(1, 4))
            left_in_turn -= 1
            pause_s = rng.uniform(0.3, 0.8) if left_in_turn else rng.uniform(3.0, 8.0)
        pause = np.zeros(int(pause_s * SR), np.float32)
        parts += [sentence, pause]
        pos += len(sentence) + len(pause)
    audio = np.concatenate(parts)
    return np.clip(audio, -32768, 32767).astype("<i2").tobytes(), turns


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc, port: int, seconds: float, what: str) -> None:
    """Until `proc` listens on 127.0.0.1:PORT; exits the benchmark if it dies or takes over `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} did not listen within {seconds:g} s") from None
            time.sleep(0.1)


class Server:
    def __init__(self, args, batch_size: int, work: Path):
        self.port = free_port()
        config = work / f"serve-{batch_size}.yaml"
        config.write_text(
            f"recognizer:\n  model_dir: {args.model}\n  cpu:\n    threads: {args.threads}\n"
            f"vad:\n  kind: silero\nlogging:\n  level: info\n"
            f"server:\n  host: 127.0.0.1\n  port: {self.port}\n  auth: none\n  max_streams: 256\n"
            f"  admission_load: 1.0\n  batch_size: {batch_size}\n{args.extra_config}", encoding="utf-8")
        repo = args.repo or REPO
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=repo,
                                     env={**os.environ, "PYTHONPATH": str(repo)})
        wait_listening(self.proc, self.port, 60, "bench_streams: serve")
        self.rss_mib = 0.0
        self.threads = 0
        self._cpu0 = self.cpu_seconds()

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def sample(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        self.rss_mib = max(self.rss_mib, int(status["VmRSS"].split()[0]) / 1024)
        self.threads = max(self.threads, int(status["Threads"]))

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode("utf-8", "replace")


async def device(port: int, name: str, audio: bytes, turns: list, delay: float, out: dict, protocol: str = "ws"):
    await asyncio.sleep(delay)
    events, started = [], {"t0": time.monotonic()}
    try:
        await (_stream if protocol == "ws" else _stream_realtime)(port, name, audio, events, started)
    except Exception as exc:  # noqa: BLE001 - a refused or dropped connection is a result: reported
        FAILED.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
    out[name] = (started["t0"], turns, events)


async def _stream(port: int, name: str, audio: bytes, events: list, started: dict):
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/ws/stt/{name}", max_size=None) as ws:
        t0 = started["t0"] = time.monotonic()

        async def receive():
            async for message in ws:
                events.append((time.monotonic(), json.loads(message)))

        reader = asyncio.create_task(receive())
        for i in range(0, len(audio), 2 * FRAME):
            at = t0 + (i // 2 + FRAME) / SR  # a microphone delivers a frame when its last sample is recorded
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            before = time.monotonic()
            await ws.send(audio[i:i + 2 * FRAME])
            LATE.append(time.monotonic() - at)  # this client's own lag: sending late, or the server not reading
            BLOCKED.append(time.monotonic() - before)
        await ws.send(json.dumps({"type": "stop"}))
        await reader


async def _stream_realtime(port: int, name: str, audio: bytes, events: list, started: dict):
    """The same device through OpenAI's realtime transcription API, as its clients send audio: base64 PCM16
    at 24 kHz in 100 ms appends; its completed transcripts are counted as finals."""
    import base64

    import soxr
    from websockets.asyncio.client import connect

    pcm = np.frombuffer(audio, "<i2").astype(np.float32)
    audio24 = np.clip(soxr.resample(pcm, SR, 24000), -32768, 32767).astype("<i2").tobytes()
    frame24 = 2 * 2400
    url = f"ws://127.0.0.1:{port}/v1/realtime?intent=transcription&device_id={name}"
    async with connect(url, max_size=None) as ws:
        await ws.recv()  # session.created
        t0 = started["t0"] = time.monotonic()

        async def receive():
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "conversation.item.input_audio_transcription.completed":
                    events.append((time.monotonic(), {"type": "final", "audio_start": event["audio_start"],
                                                      "audio_end": event["audio_end"], "timing": event["timing"]}))
                elif event["type"] == "input_audio_buffer.speech_stopped":
                    events.append((time.monotonic(), {"type": "speech_end"}))
                elif event["type"] == "conversation.item.input_audio_transcription.delta":
                    events.append((time.monotonic(), {"type": "partial"}))

        reader = asyncio.create_task(receive())
        for i in range(0, len(audio24), frame24):
            at = t0 + (i // 2 + 2400) / 24000
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            before = time.monotonic()
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(audio24[i:i + frame24]).decode()}))
            LATE.append(time.monotonic() - at)
            BLOCKED.append(time.monotonic() - before)
        await asyncio.sleep(2.0)  # the last turn's endpoint and final
        await ws.close()
        await reader


def analyse(results: dict) -> dict:
    latencies, lost, unmatched, partials, utterances, inside = [], 0, 0, 0, 0, 0
    server = {"endpoint_delay_ms": [], "queue_ms": [], "decode_ms": []}  # the server's own account of each
    for t0, turns, events in results.values():
        finals = [(t, e) for t, e in events if e["type"] == "final"]
        ends = [e for _, e in events if e["type"] == "speech_end"]
        lost += max(0, len(ends) - len(finals))
        partials += sum(1 for _, e in events if e["type"] == "partial")
        utterances += len(finals)
        for start, end in turns:
            # The final that ends at this sentence's end (its audio ends a tail pad after it), if any.
            ending = [(abs(e["audio_end"] * SR - end), t, e) for t, e in finals
                      if e["audio_start"] * SR <= end and -0.3 * SR <= e["audio_end"] * SR - end <= INSIDE_S * SR]
            if not ending:
                if any(e["audio_start"] * SR <= end < e["audio_end"] * SR for _, e in finals):
                    inside += 1  # speech went on after a short pause: this sentence's end is no end of speech
                    continue
                unmatched += 1
                if os.environ.get("BENCH_DEBUG"):
                    near = [(round(e["audio_start"], 2), round(e["audio_end"], 2)) for _, e in finals
                            if abs(e["audio_end"] * SR - end) < 5 * SR]
                    print(f"no final covers {start / SR:.2f}-{end / SR:.2f}: {near}", file=sys.stderr)
                continue
            _, received, final = min(ending, key=lambda item: item[0])
            latencies.append((received - (t0 + end / SR)) * 1000)
            for key, values in server.items():
                if final.get("timing", {}).get(key) is not None:
                    values.append(final["timing"][key])
    pct = (lambda q: float(np.percentile(latencies, q))) if latencies else (lambda q: float("nan"))
    return {"sentences": sum(len(r[1]) for r in results.values()), "finals": utterances, "finals_lost": lost,
            "sentences_without_final": unmatched, "sentences_inside_an_utterance": inside,
            "end_of_speech_to_final_ms": {"p50": round(pct(50), 1), "p95": round(pct(95), 1),
                                          "max": round(max(latencies), 1) if latencies else None},
            "partials_per_utterance": round(partials / utterances, 2) if utterances else None,
            "server_timing_p50_p95": {key: [round(float(np.percentile(v, q)), 1) for q in (50, 95)]
                                      for key, v in server.items() if v}}


async def run_n(args, n: int, batch_size: int, conversations: list, work: Path) -> dict:
    server = Server(args, batch_size, work)
    results: dict = {}
    stagger = min(args.stagger_s, 0.5 * n)
    tasks = [asyncio.create_task(device(server.port, f"dev{i:02d}", *conversations[i], i * stagger / n, results,
                                        args.protocol))
             for i in range(n)]
    started = time.monotonic()
    try:
        while not all(t.done() for t in tasks):
            server.sample()
            await asyncio.sleep(0.5)
        for t in tasks:
            t.result()
    except BaseException:
        server.stop()  # never leave a server decoding behind the next run
        raise
    wall = time.monotonic() - started
    cpu = server.cpu_seconds() - server._cpu0
    err = server.stop()
    report = analyse(results)
    report["client_send_late_ms_p50_p95_max"] = [round(1000 * float(np.percentile(LATE, q)), 1) for q in (50, 95, 100)]
    report["client_send_blocked_ms_p95_max"] = [round(1000 * float(np.percentile(BLOCKED, q)), 1) for q in (95, 100)]
    report["connections_failed"] = list(FAILED)
    LATE.clear(), BLOCKED.clear(), FAILED.clear()
    report.update(streams=n, batch_size=batch_size, wall_s=round(wall, 1), cpu_percent=round(100 * cpu / wall, 1),
                  peak_rss_mib=round(server.rss_mib, 1), peak_threads=server.threads)
    totals = [line for line in err.splitlines() if "model time by kind of decode" in line]
    if totals:
        report["model_time"] = totals[-1].split("decode: ", 1)[1].split(" EVENT=")[0]
    if "Traceback" in err:
        report["server_errors"] = err[-2000:]
    return report


async def run_idle(args, n: int, work: Path) -> dict:
    """`n` devices connected (a start message each, then nothing) for --idle-seconds: the server's CPU then is
    what holding connections costs, with no audio to process."""
    from websockets.asyncio.client import connect

    server = Server(args, 0, work)
    sockets = []
    try:
        for i in range(n):
            ws = await connect(f"ws://127.0.0.1:{server.port}/ws/stt/idle{i:02d}")
            await ws.send(json.dumps({"type": "start"}))
            sockets.append(ws)
        await asyncio.sleep(2.0)  # every stream set up
        cpu0, started = server.cpu_seconds(), time.monotonic()
        while time.monotonic() - started < args.idle_seconds:
            server.sample()
            await asyncio.sleep(0.5)
        cpu = server.cpu_seconds() - cpu0
        wall = time.monotonic() - started
    finally:
        for ws in sockets:
            await ws.close()
        server.stop()
    return {"idle_devices": n, "seconds": round(wall, 1), "cpu_percent": round(100 * cpu / wall, 2),
            "peak_rss_mib": round(server.rss_mib, 1), "peak_threads": server.threads}


class PeerServer(Server):
    """sherpa-onnx's non_streaming_server.py, run from a checkout the user points at."""

    def __init__(self, args, work: Path):
        self.port = free_port()
        model = next(p for p in (args.model / "model.int8.onnx", args.model / "model.onnx") if p.exists())
        self.proc = subprocess.Popen(
            [str(args.peer_python), str(args.peer_server / "non_streaming_server.py"), "--sense-voice", str(model),
             "--tokens", str(args.model / "tokens.txt"), "--num-threads", str(args.threads), "--max-batch-size", "3",
             "--port", str(self.port), "--doc-root", str(args.peer_server / "web")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=work,
            env={**os.environ, "PYTHONPATH": str(args.peer_server)})
        wait_listening(self.proc, self.port, 60, "bench_streams: the peer server")
        self.rss_mib = 0.0
        self._cpu0 = self.cpu_seconds()


async def peer_device(port: int, name: str, audio: bytes, turns: list, delay: float, out: dict, silero: Path):
    """A device doing its own VAD and sending each finished utterance, as with sherpa-onnx's server."""
    await asyncio.sleep(delay)
    events, started = [], {"t0": time.monotonic()}
    try:
        await _peer_stream(port, audio, events, started, silero)
    except Exception as exc:  # noqa: BLE001 - a dropped connection is a result: reported
        FAILED.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
    out[name] = (started["t0"], turns, events)


async def _peer_stream(port: int, audio: bytes, events: list, started: dict, silero: Path):
    import sherpa_onnx
    from websockets.asyncio.client import connect

    config = sherpa_onnx.VadModelConfig()
    config.silero_vad.model = str(silero)
    config.silero_vad.min_silence_duration = 0.4
    config.sample_rate = SR
    vad = sherpa_onnx.VoiceActivityDetector(config, buffer_size_in_seconds=60)
    window = config.silero_vad.window_size
    pending = asyncio.Queue()
    samples = np.frombuffer(audio, "<i2").astype(np.float32) / 32768
    async with connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
        started["t0"] = t0 = time.monotonic()

        async def send_and_receive():
            while True:
                item = await pending.get()
                if item is None:
                    return
                start, segment = item
                header = SR.to_bytes(4, "little", signed=True) + (len(segment) * 4).to_bytes(4, "little", signed=True)
                await ws.send(header + segment.astype("<f4").tobytes())
                text = await ws.recv()
                events.append((time.monotonic(), {"type": "final", "text": text, "audio_start": start / SR,
                                                  "audio_end": (start + len(segment)) / SR}))

        worker = asyncio.create_task(send_and_receive())
        fed = 0  # samples handed to the VAD: whole windows only, the rest waits for the next frame
        for i in range(0, len(samples), FRAME):
            wait = t0 + (i + FRAME) / SR - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            while fed + window <= min(i + FRAME, len(samples)):
                vad.accept_waveform(samples[fed:fed + window])
                fed += window
            while not vad.empty():
                pending.put_nowait((vad.front.start, np.array(vad.front.samples, np.float32)))
                vad.pop()
        vad.flush()
        while not vad.empty():
            pending.put_nowait((vad.front.start, np.array(vad.front.samples, np.float32)))
            vad.pop()
        pending.put_nowait(None)
        await worker
        await ws.send("Done")


async def run_peer(args, n: int, conversations: list, work: Path) -> dict:
    server = PeerServer(args, work)
    results: dict = {}
    stagger = min(args.stagger_s, 0.5 * n)
    tasks = [asyncio.create_task(peer_device(server.port, f"dev{i:02d}", *conversations[i], i * stagger / n,
                                             results, args.silero_vad)) for i in range(n)]
    started = time.monotonic()
    try:
        while not all(t.done() for t in tasks):
            server.sample()
            await asyncio.sleep(0.5)
        for t in tasks:
            t.result()
    except BaseException:
        server.stop()  # never leave a server decoding behind the next run
        raise
    wall = time.monotonic() - started
    cpu = server.cpu_seconds() - server._cpu0
    server.stop()
    report = analyse(results)
    report["connections_failed"] = list(FAILED)
    FAILED.clear()
    report.update(streams=n, peer="sherpa-onnx non_streaming_server.py, batch 3, device-side Silero VAD",
                  wall_s=round(wall, 1), server_cpu_percent=round(100 * cpu / wall, 1),
                  peak_rss_mib=round(server.rss_mib, 1))
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", default="1,2,4,8,16,24,32")
    ap.add_argument("--batch-sizes", default="0", help="server.batch_size values (0: the auto default)")
    ap.add_argument("--seconds", type=float, default=60.0, help="each device's conversation")
    ap.add_argument("--workload", choices=WORKLOADS, default="talk")
    ap.add_argument("--extra-config", default="", help="YAML appended to the server's config (e.g. pipeline settings)")
    ap.add_argument("--stagger-s", type=float, default=8.0, help="device starts spread over this long")
    ap.add_argument("--target-p95-ms", type=float, default=1500.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-streams"))
    ap.add_argument("--peer-server", type=Path, help="python-api-examples of a sherpa-onnx checkout")
    ap.add_argument("--peer-python", type=Path, default=Path(sys.executable))
    ap.add_argument("--peer-streams", help="stream counts for the peer (default: --streams)")
    ap.add_argument("--silero-vad", type=Path, help="silero_vad.onnx for the peer's devices")
    ap.add_argument("--protocol", choices=("ws", "realtime"), default="ws",
                    help="how devices stream: /ws/stt, or OpenAI's realtime transcription API at 24 kHz")
    ap.add_argument("--repo", type=Path, help="the checkout whose `serve` is measured (default: this one)")
    ap.add_argument("--idle", type=int, help="only measure this many connected devices that send nothing")
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    args = ap.parse_args()
    if args.idle:
        args.extra_config += "  idle_timeout_s: 600\n"
        args.work.mkdir(parents=True, exist_ok=True)
        print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "repo": str(args.repo or REPO),
                          "date": time.strftime("%Y-%m-%d %H:%M"), **asyncio.run(run_idle(args, args.idle, args.work))}))
        return
    if args.peer_server and args.silero_vad is None:
        from bench_longform import find_silero

        args.silero_vad = find_silero()
    args.work.mkdir(parents=True, exist_ok=True)
    pool = [trimmed(s) for s in synthesize(args.work)]
    counts = [int(x) for x in args.streams.split(",")]
    most = max(counts + [int(x) for x in (args.peer_streams or "0").split(",")])
    conversations = [conversation(pool, args.seconds, seed=100 + i, workload=args.workload) for i in range(most)]
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M"),
              "repo": str(args.repo or REPO), "protocol": args.protocol,
              "model": str(args.model), "threads": args.threads, "seconds_per_device": args.seconds,
              "workload": args.workload, "speech_share": round(float(np.mean(
                  [sum(e - b for b, e in c[1]) / (len(c[0]) / 2) for c in conversations])), 2), "runs": []}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        for n in counts:
            result = asyncio.run(run_n(args, n, batch_size, conversations, args.work))
            report["runs"].append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    held = [r["streams"] for r in report["runs"] if r["end_of_speech_to_final_ms"]["p95"] <= args.target_p95_ms
            and r["finals_lost"] == 0]
    report["most_streams_within_target"] = max(held) if held else 0
    if args.peer_server:
        report["peer"] = []
        for n in [int(x) for x in (args.peer_streams or args.streams).split(",")]:
            result = asyncio.run(run_peer(args, n, conversations, args.work))
            report["peer"].append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
        held = [r["streams"] for r in report["peer"] if r["end_of_speech_to_final_ms"]["p95"] <= args.target_p95_ms]
        report["peer_most_streams_within_target"] = max(held) if held else 0
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
