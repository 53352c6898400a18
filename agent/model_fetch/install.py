"""Installing a fetched model: the state of its target directory, the atomic rename into place, the
per-name lock, and tidying up after a fetch that died half-way."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from agent.errors import ModelFetchError

try:  # POSIX only; on other systems concurrent fetches of one name are simply not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

PARTIAL_DIR = ".partial"
INSTALL_MARKER = ".stt-agent-fetch.json"


def installed_state(target: Path, entry: dict) -> tuple[str, str]:
    """('absent'|'complete'|'foreign', detail) for the directory a model installs into."""
    if not target.exists() and not target.is_symlink():
        return "absent", ""
    if not target.is_dir():
        return "foreign", "is not a directory"
    marker = target / INSTALL_MARKER
    recorded = {}
    if marker.is_file():
        try:
            recorded = {f["name"]: f for f in json.loads(marker.read_text(encoding="utf-8")).get("files", [])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            recorded = {}
    for f in entry["files"]:
        p = target / f["name"]
        if not p.is_file():
            return "foreign", f"has no {f['name']}"
        size = f.get("size") or recorded.get(f["name"], {}).get("size")
        if isinstance(size, int) and p.stat().st_size != size:
            return "foreign", f"has {f['name']} of {p.stat().st_size} bytes, not {size}"
        sha = f.get("sha256")
        rec_sha = recorded.get(f["name"], {}).get("sha256")
        if sha and rec_sha and sha != rec_sha:
            return "foreign", f"holds a different {f['name']} (sha256 {rec_sha}, manifest {sha})"
    return "complete", ""


def install(name: str, entry: dict, specs: list, partial: Path, models_dir: Path, target: Path, say, sha256_of):
    """Move the verified files from ``partial`` into ``target`` as one rename (two with an old install).

    ``target`` is always either the old complete model or the new one (or, for an instant, absent).
    ``sha256_of(path)`` hashes a file the manifest and hub gave only a git blob id for, for the marker.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=models_dir))
    try:
        for spec in specs:
            dest = tmp / spec.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial / spec.name, dest)
        marker = {
            "name": name,
            "flavour": entry.get("flavour"),
            "precision": entry.get("precision"),
            "source": entry.get("source"),
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": [
                {"name": s.name, "size": s.size, "sha256": s.sha256 or sha256_of(tmp / s.name), "url": s.url}
                for s in specs
            ],
        }
        (tmp / INSTALL_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        old = None
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=models_dir))
            os.rmdir(old)
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except OSError:
            if old is not None:
                os.rename(old, target)
            raise
        if old is not None:
            remove_tree(old)
            say(f"{name}: replaced the previous install at {target}")
        else:
            say(f"{name}: installed at {target}")
    except OSError as exc:
        remove_tree(tmp)
        raise ModelFetchError(f"cannot install {name} into {target}: {exc.strerror or exc}") from None


def recover_interrupted_swap(models_dir: Path, target: Path) -> None:
    """Tidy up after a fetch that died mid-install (only ever called under the name's lock)."""
    olds = sorted(models_dir.glob(f".old-{target.name}-*"))
    if olds and not target.exists():
        os.rename(olds.pop(), target)  # a --force swap died between its two renames: put it back
    for p in olds + sorted(models_dir.glob(f".tmp-{target.name}-*")):
        remove_tree(p)


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        unlink(path)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class Lock:
    """An exclusive, non-blocking lock on one model name, so two fetches do not share .part files."""

    def __init__(self, path: Path, name: str):
        self.path, self.name, self.fh = path, name, None

    def __enter__(self):
        if fcntl is None:  # pragma: no cover
            return self
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self.fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ModelFetchError(f"another fetch of {self.name} is running (lock {self.path})") from None
            raise
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            try:
                fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            finally:
                self.fh.close()
        return False
