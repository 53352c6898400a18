"""The health file: the running agent's own verdict, for probes that are not systemd.

A container's HEALTHCHECK and a Kubernetes probe cannot ask systemd, so the watchdog thread
rewrites a small JSON file every round with what it would tell systemd (starting, running,
stalled and why, stopping) and the status fields; `stt-agent health` reads it and answers
healthy (exit 0) or unhealthy (exit 1) in one line. The file is replaced atomically, so a reader
never sees half of it; a file that stops changing means the agent (or its watchdog thread) is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import stat
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

# Directories the images and install.sh create for the service (systemd: RuntimeDirectory=).
RUN_DIR = "/run/stt-agent"
# A reader allows this many missed rounds before it calls the file stale (rounds are <= 5 s).
STALE_ROUNDS = 3
STALE_SLACK_S = 2.0


def instance_name(config_path: str | os.PathLike | None) -> str:
    """health-<id>.json, the id a hash of the config file's real path: one file per agent instance.

    Every agent on a box (a second one by hand, a test run beside the service) would otherwise
    rewrite one shared file, and `stt-agent health` would report whichever wrote last; the agent and
    `stt-agent health` find the same config by one rule (agent.settings.find_config), so both
    arrive at the same name.
    """
    key = os.path.realpath(config_path) if config_path else "(built-in defaults)"
    return f"health-{hashlib.sha256(key.encode('utf-8', 'surrogateescape')).hexdigest()[:12]}.json"


def _directories(env: Mapping[str, str]) -> list[tuple[Path, bool]]:
    """(directory, whether the agent may create it) in the order they are tried."""
    dirs = []
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:  # systemd made it for this unit
        dirs.append((Path(runtime), False))
    dirs.append((Path(RUN_DIR), False))
    if env.get("XDG_RUNTIME_DIR"):  # the user's own runtime directory (pam_systemd: /run/user/UID)
        dirs.append((Path(env["XDG_RUNTIME_DIR"]) / "stt-agent", True))
    dirs.append((Path(tempfile.gettempdir()) / f"stt-agent-{os.getuid()}", True))
    return dirs


def _usable(directory: Path, may_create: bool, create: bool) -> bool:
    """A directory this user can write, and, where it could be anyone's (/tmp), its own."""
    if create and may_create:
        with contextlib.suppress(OSError):
            directory.mkdir(mode=0o700, parents=False, exist_ok=True)
    try:
        st = os.lstat(directory)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or not os.access(directory, os.W_OK | os.X_OK):
        return False
    return not may_create or st.st_uid == os.getuid()  # another user's /tmp/stt-agent-UID is not ours


def resolve(setting: str, env: Mapping[str, str] | None = None, config_path: str | os.PathLike | None = None, *,
            reading: bool = False) -> Path | None:
    """The file `watchdog.health_file` names for the agent of `config_path`: auto, a path, or empty for none.

    auto: health-<id>.json (instance_name) in $RUNTIME_DIRECTORY (systemd), else /run/stt-agent if
    writable, else $XDG_RUNTIME_DIR/stt-agent, else /tmp/stt-agent-<uid> (created, mode 0700). A
    reader (`stt-agent health`) takes the first of those that holds the file, so an operator without
    the service's environment finds what the service wrote under /run/stt-agent.
    """
    env = os.environ if env is None else env
    if not setting:
        return None
    if setting != "auto":
        return Path(setting)
    name = instance_name(config_path)
    dirs = _directories(env)
    if reading:
        for directory, _ in dirs:
            if (directory / name).is_file():
                return directory / name
    if env.get("RUNTIME_DIRECTORY"):  # systemd's, for this unit: a write that fails there is logged, not moved
        return dirs[0][0] / name
    for directory, may_create in dirs:
        if _usable(directory, may_create, create=not reading):
            return directory / name
    return dirs[-1][0] / name  # none usable: the write fails and the watchdog says why


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
        return False, (f"no health file at {path} (no agent with this config is running, or its "
                       "watchdog.health_file differs: give --config or --file)")
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
