"""The health file: the running agent's own verdict, for probes that are not systemd.

A container's HEALTHCHECK and a Kubernetes probe cannot ask systemd, so the watchdog thread
rewrites a small JSON file every round with what it would tell systemd (starting, running,
stalled and why, stopping) and the status fields; `stt-agent health` reads it and answers
healthy (exit 0) or unhealthy (exit 1) in one line. The file is replaced atomically, so a reader
never sees half of it; a file that stops changing means the agent (or its watchdog thread) is gone.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

FILE_NAME = "health.json"
# Without systemd's $RUNTIME_DIRECTORY: the directory the images create, else one under /tmp.
RUN_DIR = "/run/stt-agent"
FALLBACK = "/tmp/stt-agent-health.json"
# A reader allows this many missed rounds before it calls the file stale (rounds are <= 5 s).
STALE_ROUNDS = 3
STALE_SLACK_S = 2.0


def resolve(setting: str, env: Mapping[str, str] | None = None) -> Path | None:
    """The file `watchdog.health_file` names: auto, a path, or empty for none."""
    env = os.environ if env is None else env
    if not setting:
        return None
    if setting != "auto":
        return Path(setting)
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / FILE_NAME
    if os.path.isdir(RUN_DIR) and os.access(RUN_DIR, os.W_OK | os.X_OK):
        return Path(RUN_DIR) / FILE_NAME
    if os.path.isfile(Path(RUN_DIR) / FILE_NAME):  # written by the service, read by an operator
        return Path(RUN_DIR) / FILE_NAME
    return Path(FALLBACK)


_WRITES = itertools.count()


def write(path: Path, record: dict) -> None:
    """Replace `path` with `record` as JSON, atomically (a temporary file renamed over it).

    Each write has its own temporary file: a write from a signal handler may interrupt another.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_WRITES)}")
    try:
        tmp.write_text(json.dumps(record, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def judge(path: Path, now: float | None = None) -> tuple[bool, str]:
    """(healthy, one line saying why) from the file the running agent keeps."""
    now = time.time() if now is None else now
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        updated, period = float(record["updated"]), float(record["period_s"])
        state = str(record["state"])
    except FileNotFoundError:
        return False, f"no health file at {path} (the agent is not running, or watchdog.health_file differs)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"cannot read the health file {path}: {exc}"
    age = now - updated
    if age > STALE_ROUNDS * period + STALE_SLACK_S:
        return False, f"the health file {path} was last updated {age:.0f} s ago (the agent hung or stopped)"
    status = record.get("status") or ""
    detail = f" ({status})" if status else ""
    if state == "running":
        return True, f"running{detail}"
    if state == "stalled":
        return False, f"stalled: {record.get('reason') or 'no reason given'}"
    if state == "starting":
        return False, "starting (loading the model)"
    return False, f"{state}{detail}"
