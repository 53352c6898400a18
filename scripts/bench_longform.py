#!/usr/bin/env python3
"""Long files: `stt-agent transcribe` against sherpa-onnx's VAD + offline SenseVoice recipe.

Builds a 10-minute and a 60-minute file of speech with pauses (espeak-ng sentences, English and
Mandarin, separated by 0.3-2 s of silence and now and then 3-6 s), then transcribes each with

- ours: `python -m agent transcribe FILE --json --quiet` in a fresh process;
- the peer: sherpa-onnx's vad-with-non-streaming-asr recipe (Silero VAD, min_silence_duration
  0.25 s, each segment decoded by OfflineRecognizer.from_sense_voice), reading the file in 100 ms
  chunks as it reads a microphone, in a fresh process;

on the same model and thread count, interleaved, and reports wall time, peak RSS (the child's
ru_maxrss) and segment counts, the ratios ours/peer, and 60-min/10-min wall time.

    pip install torch==2.13.0 && python scripts/export_onnx.py --random-init --out /tmp/sv --formats int8
    pip install sherpa-onnx && pip install --no-deps silero-vad    # the peer and its silero_vad.onnx
    python scripts/bench_longform.py --model /tmp/sv --threads 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SR = 16000
SENTENCES_EN = [
    "Turn on the kitchen lights please.", "What time is it in Tokyo right now?",
    "Remind me to call my sister tomorrow at nine.", "The weather looks fine for a walk this afternoon.",
    "Could you play some quiet music in the living room?", "I think the meeting moved to Thursday.",
    "How long does it take to drive to the airport?", "Please add milk, eggs and bread to the list.",
    "The north wind and the sun were disputing which was the stronger.",
    "A traveller came along wrapped in a warm cloak.", "Set a timer for twelve minutes.",
    "Tell me a short story about a dragon who loved tea.", "Is the front door locked?",
    "My flight lands at half past six in the evening.", "Lower the blinds in the bedroom.",
    "Thank you, that was very helpful.", "Which song was playing a minute ago?",
    "We should plant the tomatoes before it gets too warm.",
]
SENTENCES_ZH = ["今天天气怎么样", "请把客厅的灯打开", "明天早上八点叫我起床", "我想听一首安静的歌",
                "现在几点了", "帮我查一下去机场的路", "谢谢你的帮助", "晚饭我们吃什么"]


def synthesize(work: Path) -> list:
    """Each sentence once, as float32 16 kHz on the int16 scale."""
    import soxr

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("bench_longform: espeak-ng is needed for the test speech (apt-get install espeak-ng)")
    pool = []
    for i, (voice, text) in enumerate([("en-us", t) for t in SENTENCES_EN] + [("cmn", t) for t in SENTENCES_ZH]):
        path = work / f"s{i}.wav"
        if not path.exists():
            subprocess.run([espeak, "-v", voice, "-s", "165", "-w", str(path), text], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32)
        pool.append(soxr.resample(pcm, rate, SR))
    return pool


def build(path: Path, minutes: float, pool: list, seed: int = 1) -> dict:
    """A WAV of `minutes` of sentences and pauses, written a piece at a time; its shape."""
    if path.exists():
        with wave.open(str(path)) as w:
            return {"seconds": round(w.getnframes() / SR, 1)}
    rng = np.random.default_rng(seed)
    total, speech, turns = 0, 0, 0
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        while total < minutes * 60 * SR:
            sentence = pool[rng.integers(len(pool))]
            pause = rng.uniform(3.0, 6.0) if rng.random() < 0.1 else rng.uniform(0.3, 2.0)
            piece = np.concatenate([sentence, np.zeros(int(pause * SR), np.float32)])
            w.writeframes(np.clip(piece, -32768, 32767).astype("<i2").tobytes())
            total += len(piece)
            speech += len(sentence)
            turns += 1
    return {"seconds": round(total / SR, 1), "speech_seconds": round(speech / SR, 1), "sentences": turns}


# ----------------------------------------------------------------------------- the two runs

def run_measured(argv: list, env=None) -> dict:
    """Run argv; wall seconds, stdout, and the peak RSS of exactly this child (os.wait4)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench_longform: {' '.join(argv[:5])} ... exited {proc.returncode}:\n"
                         f"{err.decode()[-3000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "stdout": out.decode("utf-8", "replace")}


def ours(wav: Path, args, batch_size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "agent", "transcribe", str(wav), "--model", str(args.model), "--threads",
            str(args.threads), "--json", "--quiet", "--batch-size", str(batch_size)]
    r = run_measured(argv, env)
    record = json.loads(r.pop("stdout").splitlines()[-1])
    r["segments"] = len(record["segments"])
    r["decoded_audio_s"] = round(sum(s["end"] - s["start"] for s in record["segments"]), 1)
    return r


def peer(wav: Path, args) -> dict:
    argv = [sys.executable, __file__, "--as-peer", str(wav), "--model", str(args.model), "--threads", str(args.threads),
            "--silero-vad", str(args.silero_vad)]
    r = run_measured(argv)
    r.update(json.loads(r.pop("stdout").splitlines()[-1]))
    return r


def peer_main(wav: Path, args):
    """sherpa-onnx's recipe, applied to a file read in 100 ms chunks."""
    import sherpa_onnx

    model = next(p for p in (args.model / "model.int8.onnx", args.model / "model.onnx") if p.exists())
    recognizer = sherpa_onnx.OfflineRecognizer.from_sense_voice(
        model=str(model), tokens=str(args.model / "tokens.txt"), num_threads=args.threads, use_itn=True)
    config = sherpa_onnx.VadModelConfig()
    config.silero_vad.model = str(args.silero_vad)
    config.silero_vad.min_silence_duration = 0.25
    config.sample_rate = SR
    window = config.silero_vad.window_size
    vad = sherpa_onnx.VoiceActivityDetector(config, buffer_size_in_seconds=100)
    segments, decoded, buffer = 0, 0.0, np.zeros(0, np.float32)

    def drain():
        nonlocal segments, decoded
        while not vad.empty():
            stream = recognizer.create_stream()
            stream.accept_waveform(SR, vad.front.samples)
            decoded += len(vad.front.samples) / SR
            vad.pop()
            recognizer.decode_stream(stream)
            segments += 1

    with wave.open(str(wav)) as w:
        while True:
            raw = w.readframes(SR // 10)
            if not raw:
                break
            buffer = np.concatenate([buffer, np.frombuffer(raw, "<i2").astype(np.float32) / 32768])
            while len(buffer) > window:
                vad.accept_waveform(buffer[:window])
                buffer = buffer[window:]
            drain()
    vad.flush()
    drain()
    print(json.dumps({"segments": segments, "decoded_audio_s": round(decoded, 1)}))


def find_silero() -> Path | None:
    spec = importlib.util.find_spec("silero_vad")  # finds the package without importing it (it imports torch)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.onnx"
    return path if path.exists() else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model directory (full-size, e.g. random weights)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--minutes", default="10,60", help="file lengths, comma separated")
    ap.add_argument("--batch-sizes", default="1", help="ours: batch sizes to try, comma separated")
    ap.add_argument("--runs", type=int, default=1, help="interleaved runs of each")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-longform"), help="where the audio is kept")
    ap.add_argument("--silero-vad", type=Path, default=None, help="silero_vad.onnx for the peer")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--as-peer", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.as_peer:
        peer_main(args.as_peer, args)
        return
    args.silero_vad = args.silero_vad or find_silero()
    if not args.no_peer and args.silero_vad is None:
        raise SystemExit("bench_longform: no silero_vad.onnx for the peer: pip install --no-deps silero-vad, "
                         "or --silero-vad PATH, or --no-peer")
    args.work.mkdir(parents=True, exist_ok=True)
    pool = synthesize(args.work)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
              "date": time.strftime("%Y-%m-%d"), "model": str(args.model), "threads": args.threads, "files": {}}
    for minutes in [float(m) for m in args.minutes.split(",")]:
        wav = args.work / f"speech-{minutes:g}min.wav"
        shape = build(wav, minutes, pool)
        runs = {f"ours_batch{b}": [] for b in batch_sizes}
        if not args.no_peer:
            runs["sherpa"] = []
        for _ in range(args.runs):
            for b in batch_sizes:
                runs[f"ours_batch{b}"].append(ours(wav, args, b))
            if not args.no_peer:
                runs["sherpa"].append(peer(wav, args))
        summary = {name: {"wall_s": statistics.median(r["wall_s"] for r in rs),
                          "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                          "segments": rs[0]["segments"], "decoded_audio_s": rs[0]["decoded_audio_s"],
                          "runs": [r["wall_s"] for r in rs]} for name, rs in runs.items()}
        if "sherpa" in summary:
            for name in summary:
                if name != "sherpa":
                    summary[name]["wall_ratio_vs_sherpa"] = round(summary[name]["wall_s"] / summary["sherpa"]["wall_s"], 3)
        report["files"][f"{minutes:g} min"] = {"audio": shape, "results": summary}
        print(json.dumps(report["files"][f"{minutes:g} min"], indent=1), file=sys.stderr)
    lengths = list(report["files"])
    if len(lengths) == 2:
        short, long_ = (report["files"][k]["results"] for k in lengths)
        report["long_over_short_wall"] = {name: round(long_[name]["wall_s"] / short[name]["wall_s"], 2)
                                          for name in short if name in long_}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
