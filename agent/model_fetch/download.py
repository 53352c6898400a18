"""Resumable, verified HTTP downloads of one file at a time, with retries.

A ``.part`` left by an earlier run is resumed with ``Range: bytes=N-``; a server that answers 200
instead of 206 makes the download restart from zero. Connection resets, time-outs and 5xx answers are
retried with exponential backoff, resuming from what arrived; 404 and other 4xx answers are final. A
body that ends before the manifest's size is a cut even without a Content-Length (a chunked or closing
answer), and is resumed too. A file that does not verify is deleted (a resumed one is first fetched
again once from zero, in case the old part was the culprit).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from agent import __version__
from agent.errors import HubUnreachableError, ModelFetchError, ModelMismatchError
from agent.model_fetch.install import unlink
from agent.model_fetch.manifest import ENV_HF_ENDPOINT, FileSpec

CHUNK = 1 << 20
PROGRESS_INTERVAL_S = 3.0
DISK_MARGIN_BYTES = 64 << 20
USER_AGENT = f"stt-agent/{__version__} (model fetch; python-urllib)"


class Transient(Exception):
    """A failure worth retrying (connection reset, time-out, short read, 5xx, 429)."""


class _RangeNotSatisfiable(Exception):
    pass


class Net:
    """The retry policy and the HTTP client every request of one fetch shares."""

    def __init__(self, *, retries: int, backoff: float, timeout: float, say):
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.timeout = timeout
        self.say = say

    def attempt(self, fn, what: str):
        """Run fn(); retry Transient failures with exponential backoff."""
        started = time.monotonic()
        for k in range(self.retries + 1):
            try:
                return fn()
            except Transient as exc:
                if k == self.retries:
                    raise HubUnreachableError(
                        f"{what}: cannot reach the model hub: giving up after {k + 1} attempts over "
                        f"{time.monotonic() - started:.0f} s: {exc}. Check the network, set {ENV_HF_ENDPOINT} "
                        f"(or HF_ENDPOINT) to a mirror such as https://hf-mirror.com, or download the files by "
                        "hand (models/README.md, \"Manual download\")") from None
                delay = self.backoff * (2**k)
                self.say(f"{what}: {exc}; retrying in {delay:.1f} s ({k + 1}/{self.retries})")
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def open(self, url: str, headers: Optional[dict] = None):
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 - http(s) only, checked
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, url) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise ModelFetchError(f"{url}: TLS certificate verification failed: {exc.reason}") from None
            raise Transient(_describe(exc)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Transient(_describe(exc)) from None


def _http_error(exc: urllib.error.HTTPError, url: str) -> Exception:
    code = exc.code
    try:
        exc.close()
    except Exception:  # pragma: no cover
        pass
    if code >= 500 or code in (408, 425, 429):
        return Transient(f"HTTP {code} from {url}")
    if code == 416:
        return _RangeNotSatisfiable()
    reason = {401: "unauthorized", 403: "forbidden", 404: "not found"}.get(code, exc.reason or "refused")
    return ModelFetchError(f"HTTP {code} ({reason}) for {url}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed after {len(exc.partial)} more bytes"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def download_verified(spec: FileSpec, partial: Path, net: Net, say) -> None:
    """Leave a verified copy of the file at ``partial/<name>``."""
    done = partial / spec.name
    part = partial / (spec.name + ".part")
    done.parent.mkdir(parents=True, exist_ok=True)
    if done.is_file():
        actual = hashes(done)
        if done.stat().st_size == spec.size and _matches(spec, actual):
            say(f"{spec.name}: already downloaded and verified")
            return
        done.unlink()
    for restart in (False, True):
        if restart:
            say(f"{spec.name}: the resumed download did not verify; downloading it again from the start")
            unlink(part)
        resumed = _download(spec, part, net, say)
        size = part.stat().st_size
        actual = hashes(part)
        if size == spec.size and _matches(spec, actual):
            os.replace(part, done)
            say(f"{spec.name}: verified ({human(size)})")
            return
        if resumed and not restart:
            continue
        unlink(part)
        raise ModelMismatchError(_mismatch(spec, size, actual))


def hashes(path: Path) -> dict:
    """sha256 and git blob id (sha1 of ``b"blob <size>\\0" + content``) of a file."""
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1()  # noqa: S324 - git blob ids are sha1; this is what the hub publishes
    sha1.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as fh:
        while True:
            block = fh.read(CHUNK)
            if not block:
                break
            sha256.update(block)
            sha1.update(block)
    return {"sha256": sha256.hexdigest(), "git_blob": sha1.hexdigest()}


def _matches(spec: FileSpec, actual: dict) -> bool:
    if spec.sha256 is not None:
        return actual["sha256"] == spec.sha256
    return spec.git_blob is not None and actual["git_blob"] == spec.git_blob


def _mismatch(spec: FileSpec, size: int, actual: dict) -> str:
    if spec.sha256 is not None:
        want, got = f"sha256 {spec.sha256}", f"sha256 {actual['sha256']}"
    else:
        want, got = f"git blob {spec.git_blob}", f"git blob {actual['git_blob']}"
    return (
        f"{spec.name} from {spec.url} failed verification: expected {spec.size} bytes, {want}; "
        f"got {size} bytes, {got}"
    )


def _download(spec: FileSpec, part: Path, net: Net, say) -> bool:
    """Bring ``part`` to spec.size bytes (not verified). True if it resumed earlier bytes."""
    expected = spec.size
    state = {"resumed": False, "last": 0.0, "start_at": None}

    def once():
        have = part.stat().st_size if part.exists() else 0
        if expected is not None and have > expected:
            say(f"{spec.name}: the partial file is longer than expected; starting again")
            unlink(part)
            have = 0
        if expected is not None and have == expected:
            return
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            resp = net.open(spec.url, headers)
        except _RangeNotSatisfiable:
            say(f"{spec.name}: the server refused to resume (HTTP 416); starting again")
            unlink(part)
            raise Transient("range not satisfiable") from None
        with resp:
            status = getattr(resp, "status", 200)
            mode = "ab"
            if have and status == 206:
                start = _content_range_start(resp.headers.get("Content-Range"))
                if start != have:
                    say(f"{spec.name}: the server resumed at byte {start}, not {have}; starting again")
                    unlink(part)
                    raise Transient("unexpected Content-Range")
                state["resumed"] = True
                say(f"{spec.name}: resuming at {human(have)}")
            elif have:
                say(f"{spec.name}: the server ignored the range request (HTTP {status}); starting again")
                mode, have = "wb", 0
            else:
                say(f"{spec.name}: downloading {human(expected) if expected is not None else ''} from {spec.url}")
            length = resp.headers.get("Content-Length")
            remaining = int(length) if length and length.isdigit() else None
            got = 0
            t0 = time.monotonic()
            with open(part, mode) as out:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise Transient(_describe(exc)) from None
                    if not block:
                        break
                    try:
                        out.write(block)
                    except OSError as exc:
                        raise _write_error(exc, part, have + got, expected) from None
                    got += len(block)
                    if expected is not None and have + got > expected:
                        break  # longer than it should be: stop, verification will report it
                    now = time.monotonic()
                    if now - state["last"] >= PROGRESS_INTERVAL_S:
                        if state["last"]:
                            say(_progress_line(spec.name, have + got, expected, got, now - t0))
                        state["last"] = now
            if remaining is not None and got < remaining:
                raise Transient(f"connection closed after {got} of {remaining} bytes")
            if remaining is None and expected is not None and have + got < expected:
                # no Content-Length (a chunked or closing answer): the manifest's size says the body was cut
                raise Transient(f"connection closed after {have + got} of {expected} bytes")

    net.attempt(once, f"{spec.name} ({spec.url})")
    return state["resumed"]


def _write_error(exc: OSError, part: Path, done: int, expected: Optional[int]) -> ModelFetchError:
    """A write that failed: a full disk keeps what was downloaded, for the next run to resume."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        total = f" of {human(expected)}" if expected is not None else ""
        return ModelFetchError(f"the disk holding {part.parent} is full: {human(done)}{total} of {part.name[:-5]} "
                               "downloaded and kept; free some space and run the same command again to resume")
    return ModelFetchError(f"cannot write {part}: {exc.strerror or exc}")


def _content_range_start(value: Optional[str]) -> Optional[int]:
    m = re.match(r"^\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*$", value or "")
    return int(m.group(1)) if m else None


def _progress_line(name: str, done: int, total: Optional[int], got: int, elapsed: float) -> str:
    rate = got / elapsed if elapsed > 0 else 0.0
    if total:
        pct = 100.0 * done / total
        eta = f", {(total - done) / rate:.0f} s left" if rate > 0 else ""
        return f"{name}: {human(done)} of {human(total)} ({pct:.0f}%, {human(rate)}/s{eta})"
    return f"{name}: {human(done)} ({human(rate)}/s)"


def human(n: Optional[float]) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def check_disk_space(models_dir: Path, partial: Path, specs: list[FileSpec]) -> None:
    need = 0
    for spec in specs:
        have = 0
        for p in (partial / spec.name, partial / (spec.name + ".part")):
            if p.is_file():
                have = max(have, p.stat().st_size)
        need += max(0, (spec.size or 0) - have)
    if not need:
        return
    try:
        free = shutil.disk_usage(models_dir).free
    except OSError:  # pragma: no cover
        return
    if free < need + DISK_MARGIN_BYTES:
        raise ModelFetchError(
            f"not enough free space in {models_dir}: {human(need)} still to download, {human(free)} free"
        )


