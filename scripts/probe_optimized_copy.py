"""What `stt-agent model optimize`'s copy changes: load time, peak RSS (saving and loading), logits, decode time.

    .venv/bin/python scripts/probe_optimized_copy.py --model /work/cache/sensevoice-random [--repeats 5]

Each load is a fresh process (VmHWM is per process); the decode comparison loads both sessions in one
process and interleaves them. Uses agent.recognizer.runtime.create_session, i.e. the daemon's options.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def hwm_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def feed(frames: int, seed: int = 0) -> dict:
    x = np.random.default_rng(seed).standard_normal((1, frames, 560)).astype(np.float32)
    return {"x": x, "x_length": np.array([frames], np.int32), "language": np.array([0], np.int32),
            "text_norm": np.array([14], np.int32)}


def settings(cache: str, threads: int = 2):
    from agent.recognizer.settings import RecognizerSettings

    s = RecognizerSettings()
    s.cpu.threads = threads
    s.cpu.optimized_cache_dir = cache
    return s


def child(args) -> dict:
    from agent.recognizer import ort_cache
    from agent.recognizer.runtime import create_session

    model = Path(args.model_file)
    if args.child == "save":
        started = time.perf_counter()
        done = ort_cache.build(model, args.cache)
        return {"build_and_check_ms": (time.perf_counter() - started) * 1000, "hwm_mib": hwm_mib(),
                "copy": done["optimized"], "bytes": done["bytes"]}
    started = time.perf_counter()
    session = create_session(model, settings(args.cache if args.child == "copy" else ""))
    out = {"load_ms": (time.perf_counter() - started) * 1000, "hwm_after_load_mib": hwm_mib(),
           "optimized": str(session.optimized)}
    session.session.run(None, feed(334))  # 20 s of audio: 2000 fbank frames -> 334 LFR frames
    out["hwm_after_20s_mib"] = hwm_mib()
    return out


def spawn(args, what: str) -> dict:
    cmd = [sys.executable, __file__, "--model-file", args.model_file, "--cache", args.cache, "--child", what]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_decode(args) -> dict:
    from agent.recognizer.runtime import create_session

    plain = create_session(Path(args.model_file), settings("")).session
    copy = create_session(Path(args.model_file), settings(args.cache))
    assert copy.optimized is not None
    times = {"model file": [], "copy": []}
    same = True
    for rep in range(args.repeats * 2):
        order = [("model file", plain), ("copy", copy.session)]
        for name, session in order if rep % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            (logits,) = session.run(None, feed(167, seed=rep))  # 10 s
            times[name].append((time.perf_counter() - started) * 1000)
            if name == "model file":
                reference = logits
            else:
                copy_logits = logits
        same = same and np.array_equal(reference, copy_logits)
    return {"decode_10s_ms_median": {k: statistics.median(v) for k, v in times.items()},
            "logits_bit_identical": same}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="model directory (sherpa-onnx export, int8)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model-file", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--child", choices=("save", "file", "copy"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    args.model_file = str((args.model / "model.int8.onnx").resolve())
    with tempfile.TemporaryDirectory(prefix="probe-optimized-") as cache:
        args.cache = cache
        report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "nproc": os.cpu_count(),
                  "save": spawn(args, "save"), "file": [], "copy": []}
        for _ in range(args.repeats):
            for what in ("file", "copy"):
                report[what].append(spawn(args, what))
        report["decode"] = compare_decode(args)
    for what in ("file", "copy"):
        runs = report[what]
        print(f"{what}: load_ms median {statistics.median(r['load_ms'] for r in runs):.0f} "
              f"({', '.join(str(round(r['load_ms'])) for r in runs)}), VmHWM after load "
              f"{max(r['hwm_after_load_mib'] for r in runs):.0f} MiB, after a 20 s run "
              f"{max(r['hwm_after_20s_mib'] for r in runs):.0f} MiB")
    save = report["save"]
    print(f"save: {save['build_and_check_ms']:.0f} ms (build + check load), VmHWM {save['hwm_mib']:.0f} MiB, "
          f"{save['bytes'] / 2 ** 20:.1f} MiB written")
    d = report["decode"]
    print(f"decode 10 s, 2 threads, interleaved x{args.repeats * 2}: " + ", ".join(
        f"{k} {v:.0f} ms" for k, v in d["decode_10s_ms_median"].items()) +
        f"; logits bit-identical: {d['logits_bit_identical']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
