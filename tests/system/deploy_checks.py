"""Helpers for the deployment checks (tests/system/*.sh): test inputs, and what the journal must hold.

    deploy_checks.py tiny-model DIR            a model directory with SenseVoice's I/O contract (needs onnx)
    deploy_checks.py speech-wav OUT            spoken English (espeak-ng) followed by 1 s of silence
    deploy_checks.py journal FILE --finals N   checks on `journalctl -u stt-agent -o json` output
    deploy_checks.py ready FILE --invocation ID --exec-start USEC --active-enter USEC

Everything but tiny-model needs only the standard library (the host's python3 runs it).
Each check prints one line; a failed one exits 1 with what was found.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import wave
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The tiny model's text (tests/tiny_models.py PATTERN_TEXT) and the shape of an event line: neither
# may reach the journal (logging.log_text is false; stdout is not an event sink under systemd).
FORBIDDEN = ("hello world", "你好", '"type":', '"utterance_id":')
# Fields the final's journal entry carries (agent/pipeline/live.py), which operators filter on.
FINAL_FIELDS = ("EVENT", "UTTERANCE_ID", "LATENCY_MS", "DECODE_MS", "LANGUAGE", "EMOTION")
# What a run process may write to stderr under systemd: faulthandler's dump on the watchdog's SIGABRT.
# (Its blank lines too.)
FAULTHANDLER = ("Fatal Python error", "Thread 0x", "Current thread 0x", "  File ", "Extension modules")


def die(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(1)


def tiny_model(out: str) -> None:
    sys.path.insert(0, str(HERE.parent))
    import tiny_models

    tiny_models.write_sherpa(Path(out))
    print(out)


def speech_wav(out: str) -> None:
    """Two sentences, then 1.0 s of silence: the segmenter's endpoint (400 ms) ends the utterance
    inside the stream, so the final does not wait for the writer's close."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), "Hello there. Please turn on the kitchen lights."],
                       check=True)
        with wave.open(str(raw)) as w:
            params, frames = w.getparams(), w.readframes(w.getnframes())
    with wave.open(out, "wb") as w:
        w.setparams(params)
        w.writeframes(frames + bytes(params.sampwidth * params.nchannels * params.framerate))
    print(f"{out}: {len(frames) / params.sampwidth / params.framerate:.1f} s of speech at {params.framerate} Hz + 1.0 s")


def load(path: str) -> list[dict]:
    entries = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            entries.append(json.loads(line))
    return entries


def text(value) -> str:
    if isinstance(value, list):  # journalctl gives binary fields as byte lists
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def journal(path: str, finals: int) -> None:
    entries = load(path)
    agent = [e for e in entries if e.get("_PID") != "1"]  # PID 1: systemd's own lines about the unit
    if not agent:
        die(f"{path}: no entries from the agent")
    # 1. Neither speech text nor event JSON anywhere, in any field.
    for e in entries:
        for key, value in e.items():
            v = text(value)
            for bad in FORBIDDEN:
                if bad in v:
                    die(f"the journal holds {bad!r} in {key}: {v[:200]}")
    # 2. Each record exactly once. Run processes are those that logged through the journal protocol.
    by_pid: dict[str, dict[str, list]] = defaultdict(lambda: {"journal": [], "stdout": []})
    for e in agent:
        by_pid[e["_PID"]][e.get("_TRANSPORT", "?")].append(e)
    runs = {pid: d for pid, d in by_pid.items() if d["journal"]}
    if not runs:
        die("no entry came through the journal protocol: systemd-python's JournalHandler is not in use")
    records = 0
    for pid, d in runs.items():
        messages = [text(e.get("MESSAGE", "")) for e in d["journal"]]
        records += len(messages)
        seen = Counter((m, e.get("CODE_FILE"), e.get("CODE_LINE"), e.get("_SOURCE_REALTIME_TIMESTAMP"))
                       for m, e in zip(messages, d["journal"]))
        twice = [k[0] for k, n in seen.items() if n > 1]
        if twice:
            die(f"pid {pid}: a record reached the journal twice: {twice[0]!r}")
        # A second handler would resend a record at once: the same message from one source line within 50 ms.
        stamps = defaultdict(list)
        for m, e in zip(messages, d["journal"]):
            stamps[(m, e.get("CODE_LINE"))].append(int(e["__MONOTONIC_TIMESTAMP"]))
        for (m, _), ts in stamps.items():
            ts.sort()
            if any(b - a < 50_000 for a, b in zip(ts, ts[1:])):
                die(f"pid {pid}: the same record twice within 50 ms: {m!r}")
        for e in d["stdout"]:  # stderr/stdout lines of the same process
            line = text(e.get("MESSAGE", ""))
            dup = next((m for m in messages if m and m in line), None)
            if dup is not None:
                die(f"pid {pid}: a record went to the journal and to stderr: {line!r}")
            if line.strip() and not line.startswith(FAULTHANDLER):
                die(f"pid {pid}: a line on stderr/stdout instead of a journal record: {line!r}")
        for what, event in (("the ready record", "ready"), ("the config record", "config")):
            n = sum(1 for e in d["journal"] if e.get("EVENT") == event)
            if n != 1:
                die(f"pid {pid}: {what} (EVENT={event}) {n} times, expected once")
    # 3. The structured fields operators query.
    final = [e for e in agent if e.get("EVENT") == "final"]
    if len(final) != finals:
        die(f"{len(final)} EVENT=final entries in the journal, but {finals} finals reached the broker")
    for e in final:
        missing = [f for f in FINAL_FIELDS if f not in e]
        if missing:
            die(f"an EVENT=final entry lacks {', '.join(missing)}: {json.dumps(e)[:300]}")
        float(e["LATENCY_MS"]), int(e["UTTERANCE_ID"])
    ready = [e for e in agent if e.get("EVENT") == "ready"]
    if not all("PROVIDER" in e for e in ready):
        die("an EVENT=ready entry lacks PROVIDER")
    print(f"{records} records from {len(runs)} agent process(es), each once; {len(final)} EVENT=final entries "
          f"with {', '.join(FINAL_FIELDS[1:])}; PROVIDER={ready[0]['PROVIDER']} on EVENT=ready; "
          "no speech text or event JSON")


def ready(path: str, invocation: str, exec_start: int, active_enter: int) -> None:
    """The unit became active only after the agent loaded the model and logged EVENT=ready.

    With Type=simple it would be active right at fork (before the config and the model were read).
    """
    entries = [e for e in load(path) if e.get("_SYSTEMD_INVOCATION_ID") == invocation and e.get("_PID") != "1"]
    config = [e for e in entries if e.get("EVENT") == "config"]  # the first record, before the model load
    loaded = [e for e in entries if "loaded on" in text(e.get("MESSAGE", ""))] or config
    marks = [e for e in entries if e.get("EVENT") == "ready"]
    if not config or not marks:
        die(f"invocation {invocation}: no EVENT=config or EVENT=ready record in the journal")
    loaded_at, ready_at = int(loaded[0]["__MONOTONIC_TIMESTAMP"]), int(marks[0]["__MONOTONIC_TIMESTAMP"])
    if not exec_start < int(config[0]["__MONOTONIC_TIMESTAMP"]) <= loaded_at < active_enter:
        die(f"the unit was active {(active_enter - exec_start) / 1e3:.0f} ms after its start, before the model "
            f"load was logged ({(loaded_at - exec_start) / 1e3:.0f} ms): not gated on READY=1")
    # The record is sent just before READY=1; journald may stamp it a little after systemd handles READY.
    if ready_at > active_enter + 500_000:
        die(f"EVENT=ready logged {(ready_at - active_enter) / 1e3:.0f} ms after the unit became active")
    print(f"main process start -> model loaded {(loaded_at - exec_start) / 1e6:.2f} s -> "
          f"active (READY=1) {(active_enter - exec_start) / 1e6:.2f} s")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tiny-model").add_argument("dir")
    sub.add_parser("speech-wav").add_argument("out")
    j = sub.add_parser("journal")
    j.add_argument("file")
    j.add_argument("--finals", type=int, required=True)
    r = sub.add_parser("ready")
    r.add_argument("file")
    r.add_argument("--invocation", required=True)
    r.add_argument("--exec-start", type=int, required=True)
    r.add_argument("--active-enter", type=int, required=True)
    a = p.parse_args(argv)
    if a.cmd == "tiny-model":
        tiny_model(a.dir)
    elif a.cmd == "speech-wav":
        speech_wav(a.out)
    elif a.cmd == "journal":
        journal(a.file, a.finals)
    else:
        ready(a.file, a.invocation, a.exec_start, a.active_enter)


if __name__ == "__main__":
    main()
