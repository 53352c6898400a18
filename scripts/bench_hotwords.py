#!/usr/bin/env python3
"""Decode time with hotwords against greedy search, side by side in one process (CPU).

For a clip of --seconds (band-limited noise with a syllable-like envelope, fixed seed: the full-size
random-weight model's text is meaningless anyway), on --threads intra-op threads:

1. "samples in -> result out" per configuration: greedy (no hotwords), the biased search with 0 phrases
   (an empty graph: the search's own cost), and 10, 100, 1000 phrases; the configurations alternate
   every repeat; median and p90, and the ratio to greedy;
2. the decoder alone on the same logits (the model run left out), per configuration;
3. building the graph of 1000 phrases (spelling them included): time (median of 3), nodes, and
   memory (tracemalloc: what the graph keeps, and the peak while building it).

Phrases are words of the model's vocabulary, 1-3 per phrase; up to a quarter of them are two-word runs
of the greedy text, so the graph is walked, not only consulted.

    .venv/bin/python scripts/bench_hotwords.py --model /work/cache/sensevoice-random
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SR = 16000


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * (np.fft.rfftfreq(n, 1 / SR) < 4000), n)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / SR) ** 2
    return (noise / np.abs(noise).max() * 8000 * envelope).astype(np.float32)


def phrases(vocab, greedy_ids, count: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    words = [p[1:] for p in vocab.pieces if p.startswith("\u2581") and len(p) > 1 and not p.startswith("\u2581<")]
    spoken = [vocab.pieces[i][1:] for i in greedy_ids if vocab.pieces[i].startswith("\u2581")]
    runs = list(dict.fromkeys(f"{a} {b}" for a, b in zip(spoken, spoken[1:])))
    out = dict.fromkeys(runs[: count // 4])
    while len(out) < count:
        out[" ".join(rng.choice(words, int(rng.integers(1, 4))))] = None
    return tuple((p, 1.0) for p in out)


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="/work/cache/sensevoice-random")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out-json")
    args = parser.parse_args()

    from agent.recognizer.context_graph import ContextGraph
    from agent.recognizer.decoding import PROMPT_FRAMES
    from agent.recognizer.sensevoice import SenseVoiceRecognizer
    from agent.recognizer.settings import RecognizerSettings

    settings = RecognizerSettings(model_dir=args.model, warmup=False)
    settings.cpu.threads = args.threads
    rec = SenseVoiceRecognizer(settings)
    audio = clip(args.seconds)
    greedy = rec.recognize(audio)
    decoder = rec.decoder
    configs = {"greedy": rec.options()}
    for n in (10, 100, 1000):
        configs[f"{n} phrases"] = rec.options(hotwords=phrases(decoder.vocab, [t.id for t in greedy.tokens], n))
    # The search with an empty graph: what beam search itself costs beside greedy.
    empty = ContextGraph([], configs["greedy"].hotwords_score)
    beam_only = configs["0 phrases (beam)"] = rec.options(hotwords=(("\u2581", 1.0),))
    decoder.hotwords._graphs[(beam_only.hotwords, beam_only.hotwords_score)] = empty

    logits, lengths = rec.logits([audio], [configs["greedy"]])
    n_frames = int(lengths[0])
    rows = logits[0, :n_frames]
    for options in configs.values():  # graphs built and cached; first-call costs out of the timings
        rec.recognize(audio, options)
    totals = {name: [] for name in configs}
    search = {name: [] for name in configs}
    for r in range(args.repeats):
        names = list(configs) if r % 2 == 0 else list(configs)[::-1]
        for name in names:
            totals[name] += timed(lambda: rec.recognize(audio, configs[name]), 1)
            search[name] += timed(lambda: decoder.decode(rows, configs[name], args.seconds), 1)

    results = {}
    greedy_ms = statistics.median(totals["greedy"])
    for name in configs:
        result = rec.recognize(audio, configs[name])
        results[name] = {
            "median_ms": round(statistics.median(totals[name]), 1),
            "p90_ms": round(float(np.percentile(totals[name], 90)), 1),
            "ratio_to_greedy": round(statistics.median(totals[name]) / greedy_ms, 3),
            "decoder_only_median_ms": round(statistics.median(search[name]), 2),
            "tokens": len(result.tokens), "phrases_matched": len(result.hotwords_matched),
            "same_text_as_greedy": result.text == greedy.text,
        }

    # Graph build and memory at 1000 phrases (a fresh search object: nothing cached).
    from agent.recognizer.hotwords import HotwordSearch

    def fresh():
        return HotwordSearch(decoder.vocab, decoder.blank_id, np.asarray(decoder.vocab.is_special, bool))

    thousand = configs["1000 phrases"].hotwords
    builds = []
    for _ in range(3):
        search_object = fresh()
        builds += timed(lambda: search_object.graph(thousand, 1.5), 1)
    build_ms = statistics.median(builds)
    search_object = fresh()
    tracemalloc.start()  # slows the build: its time is the one above
    graph = search_object.graph(thousand, 1.5)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    blank_p = np.exp(rows[PROMPT_FRAMES:, decoder.blank_id] - np.log(np.exp(
        rows[PROMPT_FRAMES:].astype(np.float64)).sum(axis=1)))
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "onnxruntime": rec.info.get("runtime")},
        "model": str(Path(args.model) / rec.info["model_file"]), "seconds": args.seconds,
        "threads": args.threads, "repeats": args.repeats, "text_frames": n_frames - PROMPT_FRAMES,
        "frames_blank_over_0.999": int((blank_p > 0.999).sum()),
        "configs": results,
        "graph_1000": {"phrases": len(thousand), "nodes": len(graph), "build_ms": round(build_ms, 1),
                       "memory_kib": round(current / 1024), "peak_kib": round(peak / 1024)},
    }
    print(json.dumps(report, indent=2))
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
