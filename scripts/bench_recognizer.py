#!/usr/bin/env python3
"""Benchmark our SenseVoice recognizer against sherpa-onnx on the same ONNX file (CPU).

Measures, on whatever machine it runs on:

1. decode time ("samples in -> result out") per utterance length and thread count, ours vs
   sherpa-onnx, interleaved in one process (the order alternates every repeat), median / p90 /
   ratio ours/sherpa;
2. load time of each engine, in fresh subprocesses;
3. peak RSS (VmHWM) of a process that only loads one engine and decodes the longest clip;
4. end to end `python -m agent transcribe FILE.wav --json`: process start -> JSON line.

The test audio is deterministic: espeak-ng speech when espeak-ng is installed, otherwise band-limited
noise with syllable-like amplitude modulation (fixed seed). Both engines get the same waveform.

    .venv/bin/python scripts/bench_recognizer.py --model /work/cache/sensevoice-random --out-json bench.json
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SR = 16000
RANDOM_MODEL = Path("/work/cache/sensevoice-random")
DEFAULT_MODEL = RANDOM_MODEL if RANDOM_MODEL.is_dir() else REPO / "models" / "sensevoice-small-int8"
MODEL_FILES = {"int8": "model.int8.onnx", "fp32": "model.onnx", "fp16": "model.fp16.onnx"}
TEXT = (
    "The north wind and the sun were disputing which was the stronger, when a traveller came along wrapped "
    "in a warm cloak. They agreed that the one who first succeeded in making the traveller take his cloak "
    "off should be considered stronger than the other. Then the north wind blew as hard as he could, but "
    "the more he blew the more closely did the traveller fold his cloak around him; and at last the north "
    "wind gave up the attempt. Then the sun shined out warmly, and immediately the traveller took off his "
    "cloak. And so the north wind was obliged to confess that the sun was the stronger of the two. "
    "Please call Stella. Ask her to bring these things with her from the store: six spoons of fresh snow "
    "peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob."
)


# ----------------------------------------------------------------------------- audio

def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited FFT resampling (deterministic, numpy only)."""
    if src == dst:
        return x
    n_out = round(len(x) * dst / src)
    spec = np.fft.rfft(x.astype(np.float64))
    keep = min(len(spec), n_out // 2 + 1)
    out = np.fft.irfft(spec[:keep], n_out) * (n_out / len(x))
    return out


def speech_like(seconds: float) -> tuple:
    """(float32 samples on the int16 scale at 16 kHz, description)."""
    n = int(seconds * SR)
    espeak = shutil.which("espeak-ng")
    if espeak:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "tts.wav"
            subprocess.run([espeak, "-v", "en-us", "-s", "160", "-w", str(path), TEXT], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with wave.open(str(path)) as w:
                rate = w.getframerate()
                pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64)
        x = _resample(pcm, rate, SR)
        pause = np.zeros(int(0.4 * SR))
        while len(x) < n:
            x = np.concatenate([x, pause, x])
        x = x[:n]
        x *= 16000.0 / max(1.0, np.abs(x).max())  # peak at about half of full scale
        version = subprocess.run([espeak, "--version"], check=False, capture_output=True, text=True).stdout.strip()
        source = f"espeak-ng en-us -s 160 ({version}), resampled {rate}->16000 Hz"
    else:
        rng = np.random.default_rng(1234)
        t = np.arange(n) / SR
        noise = rng.standard_normal(n)
        spec = np.fft.rfft(noise)
        freqs = np.fft.rfftfreq(n, 1 / SR)
        spec[(freqs < 100) | (freqs > 4000)] = 0  # speech band
        noise = np.fft.irfft(spec, n)
        rate = 4.0  # syllables per second, with a slow phrase envelope and pauses
        env = np.clip(np.sin(2 * np.pi * rate * t + 2 * np.sin(2 * np.pi * 0.3 * t)), 0, None) ** 2
        env *= (np.sin(2 * np.pi * 0.2 * t) > -0.7)
        x = noise * env
        x *= 16000.0 / max(1e-9, np.abs(x).max())
        source = "band-limited (100-4000 Hz) noise, 4 Hz syllable-like AM, seed 1234 (espeak-ng not installed)"
    return np.round(x).astype(np.float32), source


# ----------------------------------------------------------------------------- engines

def model_file(model_dir: Path, precision: str) -> Path:
    return model_dir / MODEL_FILES[precision]


class Ours:
    name = "ours"

    def __init__(self, model_dir: Path, precision: str, threads: int, warmup: bool = True, optimized: str = ""):
        """optimized: the directory of `model optimize`'s copy, or "" for the model file itself."""
        sys.path.insert(0, str(REPO))
        from agent.recognizer import load_recognizer
        from agent.recognizer.settings import RecognizerSettings

        settings = RecognizerSettings(model_dir=str(model_dir), precision=precision)
        settings.cpu.threads = threads
        settings.cpu.optimized_cache_dir = optimized
        settings.warmup = warmup
        self.rec = load_recognizer(settings)
        if bool(optimized) != bool(self.rec.info["optimized_copy"]):
            raise RuntimeError(f"optimized copy in {optimized!r} expected, loaded {self.rec.info['optimized_copy']}")

    def __call__(self, samples: np.ndarray) -> str:
        return self.rec.recognize(samples).text


class Sherpa:
    name = "sherpa"

    def __init__(self, model_dir: Path, precision: str, threads: int):
        import sherpa_onnx

        # use_itn=True and language auto: the same prompts as our defaults, so the same graph runs.
        self.rec = sherpa_onnx.OfflineRecognizer.from_sense_voice(
            model=str(model_file(model_dir, precision)), tokens=str(model_dir / "tokens.txt"),
            num_threads=threads, use_itn=True)

    def __call__(self, samples: np.ndarray) -> str:
        stream = self.rec.create_stream()
        stream.accept_waveform(SR, samples / np.float32(32768.0))  # sherpa wants [-1, 1]
        self.rec.decode_stream(stream)
        return stream.result.text


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summary(ms):
    return {"median": statistics.median(ms), "p90": percentile(ms, 90), "min": min(ms), "max": max(ms),
            "mean": statistics.fmean(ms), "n": len(ms)}


def agreement(a: str, b: str) -> float:
    """Similarity of two transcripts' word sequences (1.0: identical). With random weights the logits are
    nearly flat, so tiny numeric differences between the two ONNX Runtime builds flip a few argmaxes."""
    import difflib

    return difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()


# ----------------------------------------------------------------------------- 1. decode

def bench_decode(args, clips):
    results = []
    for threads in args.threads:
        print(f"[decode] loading both engines with {threads} thread(s)...", file=sys.stderr, flush=True)
        engines = [Ours(args.model, args.precision, threads), Sherpa(args.model, args.precision, threads)]
        texts = {}
        for engine in engines:  # untimed warm-up at every length
            for length in args.lengths:
                texts[(engine.name, length)] = engine(clips[length])
        times = {(e.name, length): [] for e in engines for length in args.lengths}
        for rep in range(args.repeats):
            order = engines if rep % 2 == 0 else engines[::-1]
            for length in args.lengths:
                for engine in order:
                    started = time.perf_counter()
                    engine(clips[length])
                    times[(engine.name, length)].append((time.perf_counter() - started) * 1000)
            print(f"[decode] threads={threads} repeat {rep + 1}/{args.repeats}", file=sys.stderr, flush=True)
        for length in args.lengths:
            ours, sherpa = times[("ours", length)], times[("sherpa", length)]
            row = {"threads": threads, "seconds": length, "ours": summary(ours), "sherpa": summary(sherpa),
                   "ratio_median": statistics.median(ours) / statistics.median(sherpa),
                   "ratio_paired_median": statistics.median(o / s for o, s in zip(ours, sherpa)),
                   "ours_ms": ours, "sherpa_ms": sherpa,
                   "text_agreement": agreement(texts[("ours", length)], texts[("sherpa", length)]),
                   "ours_text_head": texts[("ours", length)][:60], "sherpa_text_head": texts[("sherpa", length)][:60]}
            results.append(row)
        if args.profile_repeats:
            profile_ours(args, engines[0].rec, clips, threads, results)
        del engines
        gc.collect()
    return results


def profile_ours(args, rec, clips, threads, results):
    """Where our time goes: frontend (fbank + LFR/CMVN), session.run, decoding (after the timed loop)."""
    from agent.recognizer.decoding import decode_batch

    for length in args.lengths:
        x = clips[length]
        parts = {"frontend": [], "session_run": [], "decoding": []}
        for _ in range(args.profile_repeats):
            t0 = time.perf_counter()
            rec.frontend.features(x)
            t1 = time.perf_counter()
            logits, lengths = rec.logits([x], rec.defaults)  # frontend + session.run
            t2 = time.perf_counter()
            decode_batch(rec.decoder, logits, lengths, rec.defaults, [len(x) / SR])
            t3 = time.perf_counter()
            parts["frontend"].append((t1 - t0) * 1000)
            parts["session_run"].append(((t2 - t1) - (t1 - t0)) * 1000)
            parts["decoding"].append((t3 - t2) * 1000)
        row = next(r for r in results if r["threads"] == threads and r["seconds"] == length)
        row["ours_profile_ms"] = {k: statistics.median(v) for k, v in parts.items()}
        row["ours_profile_raw_ms"] = parts


# ----------------------------------------------------------------------------- 2./3. children

def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def child(args):
    """Run in a fresh interpreter: one engine, print one JSON line."""
    started = time.perf_counter()
    import numpy  # noqa: F401  (both engines need it; count it as import time)
    if args.child_engine.startswith("ours"):
        sys.path.insert(0, str(REPO))
        import kaldi_native_fbank  # noqa: F401
        import onnxruntime  # noqa: F401

        from agent.recognizer import load_recognizer  # noqa: F401
    else:
        import sherpa_onnx  # noqa: F401
    out = {"engine": args.child_engine, "threads": args.child_threads,
           "import_ms": (time.perf_counter() - started) * 1000, "hwm_after_import_kb": _status_kb("VmHWM")}
    t0 = time.perf_counter()
    if args.child_engine.startswith("ours"):
        engine = Ours(args.model, args.precision, args.child_threads, warmup=not args.child_no_warmup,
                      optimized=args.optimized_dir if args.child_engine == "ours-opt" else "")
        out["load_ms"] = engine.rec.info["load_ms"]
        out["warmup_ms"] = engine.rec.info.get("warmup_ms")
        out["provider"] = engine.rec.info["provider"]
        out["runtime"] = engine.rec.info["runtime"]
    else:
        engine = Sherpa(args.model, args.precision, args.child_threads)
        out["load_ms"] = (time.perf_counter() - t0) * 1000
    out["construct_wall_ms"] = (time.perf_counter() - t0) * 1000
    out["ready_unix"] = time.time()  # the parent subtracts its spawn time: process start -> model ready
    out["hwm_after_load_kb"] = _status_kb("VmHWM")
    if args.child_engine == "sherpa":  # sherpa has no warm-up of its own: time its first decode of 1 s
        t1 = time.perf_counter()
        engine(np.zeros(SR, np.float32))
        out["first_1s_decode_ms"] = (time.perf_counter() - t1) * 1000
    if args.child_clip:
        # Made by the parent: synthesising 20 s of audio here would peak above the engine itself
        # (float64 FFT temporaries) and be counted in VmHWM.
        samples = np.load(args.child_clip)
        out["hwm_before_decode_kb"] = _status_kb("VmHWM")
        t1 = time.perf_counter()
        engine(samples)
        out["decode_ms"] = (time.perf_counter() - t1) * 1000
    out["vm_hwm_kb"] = _status_kb("VmHWM")
    out["vm_rss_kb"] = _status_kb("VmRSS")
    print(json.dumps(out), flush=True)


def run_child(args, engine: str, threads: int, clip: Optional[Path] = None, no_warmup: bool = False) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--model", str(args.model), "--precision",
           args.precision, "--child-engine", engine, "--child-threads", str(threads),
           "--optimized-dir", args.optimized_dir]
    if clip is not None:
        cmd += ["--child-clip", str(clip)]
    if no_warmup:
        cmd.append("--child-no-warmup")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    spawned = time.time()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"child {engine} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["start_to_ready_ms"] = (out.pop("ready_unix") - spawned) * 1000
    return out


def child_engines(args):
    """ours (the model file), ours-opt (the copy `model optimize` saved) and sherpa, in fresh processes."""
    return ("ours", "ours-opt", "sherpa") if args.optimized_dir else ("ours", "sherpa")


def bench_load(args):
    rows = []
    engines = child_engines(args)
    for threads in args.threads:
        runs = {engine: [] for engine in engines}
        for rep in range(args.load_repeats):
            for engine in engines[rep % len(engines):] + engines[:rep % len(engines)]:
                runs[engine].append(run_child(args, engine, threads))
            print(f"[load] threads={threads} repeat {rep + 1}/{args.load_repeats}", file=sys.stderr, flush=True)
        row = {"threads": threads, "runs": runs}
        for key in ("import_ms", "load_ms", "warmup_ms", "construct_wall_ms", "first_1s_decode_ms",
                    "start_to_ready_ms"):
            for engine, items in runs.items():
                values = [r[key] for r in items if r.get(key) is not None]
                if values:
                    row[f"{engine}_{key}"] = statistics.median(values)
        rows.append(row)
    return rows


def bench_rss(args, clip: np.ndarray):
    size = model_file(args.model, args.precision).stat().st_size
    rows = []
    clip_path = Path(tempfile.mkdtemp(prefix="bench-rss-")) / "clip.npy"
    np.save(clip_path, clip)
    try:
        for engine in child_engines(args):
            rows.append(_rss_row(args, engine, clip_path, size))
    finally:
        shutil.rmtree(clip_path.parent, ignore_errors=True)
    return rows


def _rss_row(args, engine, clip_path, size):
    runs = [run_child(args, engine, args.rss_threads, clip=clip_path) for _ in range(args.rss_repeats)]
    peak_kb = max(r["vm_hwm_kb"] for r in runs)
    budget = 1.1 * size + 150 * 2 ** 20
    print(f"[rss] {engine}: {peak_kb / 1024:.0f} MiB", file=sys.stderr, flush=True)
    return {"engine": engine, "threads": args.rss_threads, "decode_seconds": max(args.lengths),
            "model_bytes": size, "peak_rss_bytes": peak_kb * 1024, "budget_bytes": budget,
            "meets": peak_kb * 1024 <= budget, "runs": runs}


# ----------------------------------------------------------------------------- 4. end to end

def _transcribe_once(cmd, cache_directory: str):
    env = dict(os.environ, CACHE_DIRECTORY=cache_directory)  # what `auto` resolves first, as under systemd
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO), env=env)
    record, to_line = None, None
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{"):
            to_line = (time.perf_counter() - started) * 1000
            record = json.loads(line)
            break
    proc.stdout.read()
    err = proc.stderr.read()
    proc.wait()
    exit_ms = (time.perf_counter() - started) * 1000
    if record is None or proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {err.strip()[-1500:]}")
    return {"to_json_ms": to_line, "exit_ms": exit_ms, "cli_decode_ms": record.get("decode_ms")}


def bench_e2e(args, clip10):
    """`transcribe` of a 10 s WAV, each run followed by its references measured at (nearly) the same time:
    a no-warm-up load in a fresh process and three warm 10 s decodes in this process (whose recognizer
    is loaded once, before the first run). On a noisy machine references taken minutes apart mislead.
    With an optimized copy, each repeat runs both variants: the model file, then the copy."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    empty_cache = tmp / "no-cache"  # CACHE_DIRECTORY without a copy: the CLI loads the model file
    variants = {"model file": (str(empty_cache), "ours")}
    if args.optimized_dir:
        variants["optimized copy"] = (str(Path(args.optimized_dir).parent), "ours-opt")
    path = tmp / "clip10s.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(np.clip(clip10, -32768, 32767).astype("<i2").tobytes())
    cmd = [str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").is_dir() else sys.executable,
           "-m", "agent", "transcribe", str(path), "--model", str(args.model), "--json"]
    threads = 2 if 2 in args.threads else args.threads[0]  # 2: the settings default
    cmd += ["--threads", str(threads)]
    if args.e2e_extra:
        cmd += args.e2e_extra.split()
    engine = Ours(args.model, args.precision, threads)
    engine(clip10)
    runs = {name: [] for name in variants}
    try:
        for rep in range(args.e2e_repeats):
            for name, (cache_directory, reference) in variants.items():
                time.sleep(0.3)  # let this process's ORT worker threads stop spinning
                try:
                    run = _transcribe_once(cmd, cache_directory)
                except RuntimeError as exc:
                    return [{"variant": name, "error": str(exc), "command": " ".join(cmd)}]
                load = run_child(args, reference, threads, no_warmup=True)  # the CLI loads without warm-up
                decodes = []
                for _ in range(3):
                    started = time.perf_counter()
                    engine(clip10)
                    decodes.append((time.perf_counter() - started) * 1000)
                run.update(load_ms=load["load_ms"], start_to_ready_ms=load["start_to_ready_ms"],
                           import_ms=load["import_ms"], decode_ms=statistics.median(decodes))
                run["target_ms"] = run["load_ms"] + 1.2 * run["decode_ms"]
                run["target_from_start_ms"] = run["start_to_ready_ms"] + 1.2 * run["decode_ms"]
                runs[name].append(run)
                print(f"[e2e] {rep + 1}/{args.e2e_repeats} ({name}): {run['to_json_ms']:.0f} ms to JSON, target "
                      f"{run['target_ms']:.0f} ms", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        del engine
    command = " ".join(cmd).replace(str(path), "clip10s.wav")
    return [_e2e_summary(name, command, threads, items) for name, items in runs.items()]


def _e2e_summary(variant, command, threads, runs):
    def med(key):
        return statistics.median(r[key] for r in runs)

    out = {"variant": variant, "command": command, "runs": runs, "threads": threads,
           "median_to_json_ms": med("to_json_ms"), "median_exit_ms": med("exit_ms"),
           "median_cli_decode_ms": med("cli_decode_ms"), "load_no_warmup_ms": med("load_ms"),
           "import_ms": med("import_ms"), "start_to_ready_no_warmup_ms": med("start_to_ready_ms"),
           "decode_10s_ms": med("decode_ms")}
    out["target_ms"] = out["load_no_warmup_ms"] + 1.2 * out["decode_10s_ms"]
    out["meets"] = out["median_to_json_ms"] <= out["target_ms"]
    # The same target with "load" read as process start -> model ready (interpreter, imports, load).
    out["target_from_start_ms"] = out["start_to_ready_no_warmup_ms"] + 1.2 * out["decode_10s_ms"]
    out["meets_from_start"] = out["median_to_json_ms"] <= out["target_from_start_ms"]
    out["paired_ratio_median"] = statistics.median(r["to_json_ms"] / r["target_ms"] for r in runs)
    return out


def measure(args, report, clips, skip):
    if "decode" not in skip:
        report["decode"] = bench_decode(args, clips)
    if "load" not in skip:
        report["load"] = bench_load(args)
    if "rss" not in skip:
        report["rss"] = bench_rss(args, clips[max(args.lengths)])
    if "e2e" not in skip:
        report["e2e"] = bench_e2e(args, clips[10])


def build_optimized_copy(args) -> str:
    """`stt-agent model optimize` into a temporary cache (its ~780 MiB peak stays out of this process)."""
    cache = Path(tempfile.mkdtemp(prefix="bench-optimized-"))
    proc = subprocess.run([sys.executable, "-m", "agent", "model", "optimize", "--model", str(args.model),
                           "--precision", args.precision], check=False, capture_output=True, text=True,
                          cwd=str(REPO), env=dict(os.environ, CACHE_DIRECTORY=str(cache)))
    if proc.returncode != 0:
        raise RuntimeError(f"model optimize failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    print(f"[optimize] {proc.stderr.strip()}", file=sys.stderr, flush=True)
    return str(Path(proc.stdout.strip()).parent)


# ----------------------------------------------------------------------------- report

def git_state():
    """The commit measured, and whether the recognizer's files differ from it (read-only git calls)."""
    try:
        def git(*argv):
            return subprocess.run(["git", *argv], check=False, capture_output=True, text=True,
                                  cwd=str(REPO)).stdout.strip()

        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "agent/recognizer")
        return {"commit": head, "recognizer_modified": bool(dirty)}
    except OSError:
        return {}


def machine():
    info = {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        for line in subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    try:
        import onnxruntime
        import sherpa_onnx
        info["onnxruntime"] = onnxruntime.__version__
        info["sherpa_onnx"] = getattr(sherpa_onnx, "__version__", "?")
    except ImportError:
        pass
    return info


def markdown(report) -> str:
    lines = []
    d = report["decode"]
    if d:
        lines += ["### Decode time (ms, samples in -> result out)", "",
                  ("| threads | audio s | ours median | ours p90 | sherpa median | sherpa p90 | ours/sherpa (medians) "
                   "| ours/sherpa (paired) | ours RTF | text agreement |"),
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in d:
            lines.append(f"| {r['threads']} | {r['seconds']:g} | {r['ours']['median']:.0f} | {r['ours']['p90']:.0f} | "
                         f"{r['sherpa']['median']:.0f} | {r['sherpa']['p90']:.0f} | {r['ratio_median']:.3f} | "
                         f"{r['ratio_paired_median']:.3f} | {r['ours']['median'] / 1000 / r['seconds']:.3f} | "
                         f"{r['text_agreement']:.2f} |")
        lines.append("")
    prof = [r for r in d if "ours_profile_ms" in r]
    if prof:
        lines += ["### Where our decode time goes (ms, median; measured after the interleaved runs)", "",
                  "| threads | audio s | frontend (fbank + LFR/CMVN) | session.run | decoding (argmax, posteriors) |",
                  "|---:|---:|---:|---:|---:|"]
        for r in prof:
            q = r["ours_profile_ms"]
            lines.append(f"| {r['threads']} | {r['seconds']:g} | {q['frontend']:.0f} | {q['session_run']:.0f} | "
                         f"{q['decoding']:.0f} |")
        lines.append("")
    if report["load"]:
        lines += ["### Load time (ms, fresh process, median)", "",
                  ("| threads | ours import | ours load_ms | ours warmup_ms | ours start -> ready | "
                   "ours (optimized copy) load_ms | ours (optimized copy) start -> ready | sherpa import "
                   "| sherpa construct | sherpa first 1 s decode | sherpa start -> ready |"),
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in report["load"]:
            def g(key, r=r):
                return f"{r[key]:.0f}" if r.get(key) is not None else "-"
            lines.append(f"| {r['threads']} | {g('ours_import_ms')} | {g('ours_load_ms')} | {g('ours_warmup_ms')} | "
                         f"{g('ours_start_to_ready_ms')} | {g('ours-opt_load_ms')} | {g('ours-opt_start_to_ready_ms')} | "
                         f"{g('sherpa_import_ms')} | {g('sherpa_load_ms')} | "
                         f"{g('sherpa_first_1s_decode_ms')} | {g('sherpa_start_to_ready_ms')} |")
        lines.append("")
    if report["rss"]:
        lines += ["### Peak RSS (load + decode of the longest clip)", "",
                  ("| engine | threads | model file MiB | VmHWM after imports MiB | VmHWM after load MiB | "
                   "peak VmHWM MiB (max of runs) | all runs MiB | budget 1.1 x file + 150 MiB | meets |"),
                  "|---|---:|---:|---:|---:|---:|---|---:|:-:|"]
        for r in report["rss"]:
            run = max(r["runs"], key=lambda x: x["vm_hwm_kb"])
            lines.append(f"| {r['engine']} | {r['threads']} | {r['model_bytes'] / 2 ** 20:.1f} | "
                         f"{run['hwm_after_import_kb'] / 1024:.0f} | {run['hwm_after_load_kb'] / 1024:.0f} | "
                         f"{r['peak_rss_bytes'] / 2 ** 20:.0f} | "
                         f"{', '.join(str(round(x['vm_hwm_kb'] / 1024)) for x in r['runs'])} | "
                         f"{r['budget_bytes'] / 2 ** 20:.0f} | "
                         f"{'yes' if r['meets'] else 'no'} |")
        lines.append("")
    rows = report["e2e"] or []
    if rows:
        lines += ["### End to end `transcribe` of a 10 s WAV (ms)", "",
                  ("| loads | runs | threads | e2e median (start -> JSON) | e2e median (to exit) | CLI decode_ms (cold) | "
                   "load_ms (no warm-up) | start -> ready (no warm-up) | decode 10 s (warm, same time) | "
                   "load_ms + 1.2 x decode | meets | e2e / target (paired median) | start -> ready + 1.2 x decode | "
                   "meets |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|---:|---:|:-:|"]
    for e in rows:
        if "error" in e:
            lines += [f"Not measured: `{e['command']}` failed: {e['error']}"]
        else:
            dec = e["decode_10s_ms"]
            lines += [(f"| {e['variant']} | {len(e['runs'])} | {e['threads']} | {e['median_to_json_ms']:.0f} | "
                       f"{e['median_exit_ms']:.0f} | {e['median_cli_decode_ms']:.0f} | {e['load_no_warmup_ms']:.0f} | "
                       f"{e['start_to_ready_no_warmup_ms']:.0f} | {'-' if dec is None else round(dec)} | "
                       f"{e.get('target_ms', float('nan')):.0f} | {'yes' if e.get('meets') else 'no'} | "
                       f"{e.get('paired_ratio_median', float('nan')):.3f} | "
                       f"{e.get('target_from_start_ms', float('nan')):.0f} | "
                       f"{'yes' if e.get('meets_from_start') else 'no'} |")]
    if rows:
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"model directory (default {DEFAULT_MODEL})")
    p.add_argument("--precision", default="int8", choices=sorted(MODEL_FILES))
    p.add_argument("--repeats", type=int, default=15, help="decode repeats per length and engine")
    p.add_argument("--threads", default="1,2", help="comma-separated CPU thread counts")
    p.add_argument("--lengths", default="2,5,10,20", help="comma-separated utterance lengths in seconds")
    p.add_argument("--profile-repeats", type=int, default=5, help="repeats of the per-stage profile (0: skip)")
    p.add_argument("--load-repeats", type=int, default=3, help="fresh processes per engine and thread count")
    p.add_argument("--rss-repeats", type=int, default=5, help="fresh processes per engine for peak RSS")
    p.add_argument("--rss-threads", type=int, default=2)
    p.add_argument("--e2e-repeats", type=int, default=5)
    p.add_argument("--e2e-extra", default="", help="extra arguments for the transcribe command")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: decode,load,rss,e2e")
    p.add_argument("--out-json", type=Path, help="write every raw number here")
    p.add_argument("--no-optimized-copy", action="store_true",
                   help="do not build `model optimize`'s copy, nor measure loads from it")
    p.add_argument("--optimized-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--child-engine", choices=("ours", "ours-opt", "sherpa"), help=argparse.SUPPRESS)
    p.add_argument("--child-threads", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--child-clip", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-no-warmup", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model = args.model.resolve()
    if args.child_engine:
        child(args)
        return 0
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.lengths = [float(s) if "." in s else int(s) for s in args.lengths.split(",") if s]
    skip = set(filter(None, args.skip.split(",")))
    if not model_file(args.model, args.precision).is_file():
        p.error(f"{model_file(args.model, args.precision)} does not exist")

    random_init = (args.model / "WARNING_NOT_A_REAL_MODEL.txt").exists()
    clips = {}
    for length in sorted(set(args.lengths) | {10}):
        clips[length], source = speech_like(length)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(), "git": git_state(), "model_dir": str(args.model),
              "model_file": MODEL_FILES[args.precision],
              "model_bytes": model_file(args.model, args.precision).stat().st_size,
              "random_weights": random_init, "audio": source,
              "audio_sha256": {str(k): hashlib.sha256(v.tobytes()).hexdigest()[:16] for k, v in clips.items()},
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                       if not k.startswith("child")},
              "decode": [], "load": [], "rss": [], "e2e": None}
    if not args.no_optimized_copy and not {"load", "rss", "e2e"} <= skip:
        args.optimized_dir = build_optimized_copy(args)
    try:
        measure(args, report, clips, skip)
    finally:
        if args.optimized_dir:
            shutil.rmtree(Path(args.optimized_dir).parent, ignore_errors=True)
    report["optimized_copy"] = bool(args.optimized_dir)
    m = report["machine"]
    print(f"Machine: {m.get('cpu', '?')}, nproc {m['nproc']}, {m.get('mem_total_gib', '?')} GiB RAM; "
          f"onnxruntime {m.get('onnxruntime')}, sherpa-onnx {m.get('sherpa_onnx')}; model {args.model} "
          f"({report['model_file']}, {report['model_bytes'] / 2 ** 20:.1f} MiB"
          f"{', RANDOM weights' if random_init else ''}); audio: {source}; commit {report['git'].get('commit')}"
          f"{' (agent/recognizer modified)' if report['git'].get('recognizer_modified') else ''}\n")
    print(markdown(report))
    if args.out_json:
        args.out_json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
