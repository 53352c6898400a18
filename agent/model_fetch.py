"""`stt-agent model fetch NAME`: download a published SenseVoiceSmall ONNX export into models/.

Standard library only (urllib, hashlib, json, tempfile, os), so it works on a bare edge box.

What a fetch does, in order:

1. Look NAME up in the manifest (``models/manifest.json``): a list of files, each with a URL and,
   where a public source publishes them, its size and sha256.
2. For a Hugging Face file whose size or sha256 the manifest leaves out, ask the hub at fetch time:
   ``GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`` answers ``siblings`` of the form
   ``{"rfilename", "size", "blobId", "lfs": {"sha256", "size", "pointerSize"}}`` (the shape
   huggingface_hub's ``model_info(files_metadata=True)`` parses). An LFS file is checked against
   ``lfs.sha256``; a plain git file, which the hub describes only by its git blob id, against that
   blob id (sha1 of ``b"blob <size>\\0" + content``). A file with no hash from anywhere is refused.
3. Download every file to ``<models_dir>/.partial/<name>/<file>.part``. A ``.part`` left by an
   earlier run is resumed with ``Range: bytes=N-``; a server that answers 200 instead of 206 makes
   the download restart from zero. Connection resets, time-outs and 5xx answers are retried with
   exponential backoff, resuming from what arrived; 404 and other 4xx answers are final.
4. Check size and hash. A mismatch deletes the ``.part`` (a resumed file is first re-fetched once
   from zero, in case the old part was the culprit) and fails naming the file, URL, expected and
   actual size and hash.
5. Assemble the complete directory in a temporary directory inside models_dir and ``os.rename`` it
   to ``<models_dir>/<target>``. An existing install is left alone (reported as already present);
   with ``force`` the new directory replaces it by two renames, so ``<target>`` is always either the
   old complete model or the new complete model (or, for an instant, absent), never half-written.

The Hugging Face endpoint comes from the ``endpoint`` argument, else ``STT_AGENT_HF_ENDPOINT``, else
``HF_ENDPOINT`` (as huggingface_hub reads it, e.g. https://hf-mirror.com), else https://huggingface.co.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from agent.errors import AgentError

try:  # POSIX only; on other systems concurrent fetches of one name are simply not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ModelFetchError",
    "ModelMismatchError",
    "UnknownModelError",
    "fetch_model",
    "list_models",
    "load_manifest",
    "default_manifest_path",
    "default_models_dir",
    "add_subparser",
    "run",
]

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_MODELSCOPE_ENDPOINT = "https://modelscope.cn"
ENV_HF_ENDPOINT = "STT_AGENT_HF_ENDPOINT"
ENV_MODELSCOPE_ENDPOINT = "STT_AGENT_MODELSCOPE_ENDPOINT"
ENV_MODELS_DIR = "STT_AGENT_MODELS_DIR"
ENV_MANIFEST = "STT_AGENT_MODEL_MANIFEST"

PARTIAL_DIR = ".partial"
INSTALL_MARKER = ".stt-agent-fetch.json"
CHUNK = 1 << 20
PROGRESS_INTERVAL_S = 3.0
DISK_MARGIN_BYTES = 64 << 20

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_HF_RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")

try:
    from agent import __version__ as _VERSION
except Exception:  # pragma: no cover
    _VERSION = "0"
USER_AGENT = f"stt-agent/{_VERSION} (model fetch; python-urllib)"


class ModelFetchError(AgentError):
    """A download or verification failed; the message is one line naming file, URL and values."""

    exit_code = 1


class HubUnreachableError(ModelFetchError):
    """The hub (or a mirror) could not be reached or kept failing: nothing about the model is wrong."""

    exit_code = 69  # sysexits EX_UNAVAILABLE, as agent.errors.EXIT_UNAVAILABLE


class ModelMismatchError(ModelFetchError):
    """A file is not the one the manifest pins (size or hash), downloaded or as the hub describes it."""

    exit_code = 66  # sysexits EX_NOINPUT, as agent.errors.EXIT_NOINPUT


class UnknownModelError(ModelFetchError):
    """NAME is not in the manifest (a usage error); the message lists the known names."""

    exit_code = 2


class _Transient(Exception):
    """A failure worth retrying (connection reset, time-out, short read, 5xx, 429)."""


# --------------------------------------------------------------------------------------- manifest


@dataclass
class _FileSpec:
    name: str
    url: str  # with the endpoint placeholders substituted
    size: Optional[int]
    sha256: Optional[str]
    git_blob: Optional[str] = None  # sha1 git blob id, from the hub, for non-LFS files
    hf: Optional[tuple[str, str, str]] = None  # (repo, revision, path in repo), for hub look-ups


def default_models_dir() -> Path:
    """``$STT_AGENT_MODELS_DIR``, else ``./models``."""
    return Path(os.environ.get(ENV_MODELS_DIR) or "models")


def default_manifest_path(models_dir: "os.PathLike[str] | str | None" = None) -> Path:
    """Where the manifest is looked for when none is given.

    ``$STT_AGENT_MODEL_MANIFEST``, else ``<models_dir>/manifest.json``, else the
    ``models/manifest.json`` next to this package in a source checkout.
    """
    env = os.environ.get(ENV_MANIFEST)
    if env:
        return Path(env)
    candidates = []
    if models_dir is not None:
        candidates.append(Path(models_dir) / "manifest.json")
    candidates.append(default_models_dir() / "manifest.json")
    candidates.append(Path(__file__).resolve().parent.parent / "models" / "manifest.json")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[-1]


def load_manifest(manifest_path: "os.PathLike[str] | str | None" = None) -> dict:
    """Read and check the manifest; raise ModelFetchError naming the first problem."""
    path = Path(manifest_path) if manifest_path is not None else default_manifest_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFetchError(f"model manifest not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ModelFetchError(f"model manifest {path} is unreadable: {exc}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not models:
        raise ModelFetchError(f"model manifest {path}: expected an object with a non-empty 'models' object")
    for name, entry in models.items():
        _check_entry(path, name, entry)
    return data


def _check_entry(path: Path, name: str, entry) -> None:
    where = f"model manifest {path}: models.{name}"
    if not _NAME_RE.match(name):
        raise ModelFetchError(f"{where}: the name must match {_NAME_RE.pattern}")
    if not isinstance(entry, dict):
        raise ModelFetchError(f"{where}: expected an object")
    target = entry.get("target", name)
    if not isinstance(target, str) or not _NAME_RE.match(target):
        raise ModelFetchError(f"{where}.target: expected a plain directory name matching {_NAME_RE.pattern}")
    files = entry.get("files")
    if not isinstance(files, list) or not files:
        raise ModelFetchError(f"{where}.files: expected a non-empty list")
    seen = set()
    for i, f in enumerate(files):
        fwhere = f"{where}.files[{i}]"
        if not isinstance(f, dict):
            raise ModelFetchError(f"{fwhere}: expected an object")
        fname = f.get("name")
        if not isinstance(fname, str) or not _safe_relative(fname):
            raise ModelFetchError(f"{fwhere}.name: expected a relative file name without '..' or a leading '.'")
        if fname in seen:
            raise ModelFetchError(f"{fwhere}.name: {fname!r} is listed twice")
        seen.add(fname)
        url = f.get("url")
        if not isinstance(url, str) or not (
            url.startswith(("http://", "https://", "{hf_endpoint}/", "{modelscope_endpoint}/"))
        ):
            raise ModelFetchError(f"{fwhere}.url: expected an http(s) URL or one starting with {{hf_endpoint}}/")
        size = f.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ModelFetchError(f"{fwhere}.size: expected a non-negative integer")
        sha = f.get("sha256")
        if sha is not None and (not isinstance(sha, str) or not _SHA256_RE.match(sha)):
            raise ModelFetchError(f"{fwhere}.sha256: expected 64 lowercase hex digits")
        if not url.startswith("{hf_endpoint}/") and (sha is None or size is None):
            raise ModelFetchError(
                f"{fwhere}: a file outside the Hugging Face hub needs both 'size' and 'sha256' in the manifest"
            )


def _safe_relative(name: str) -> bool:
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name:
        return False
    parts = name.split("/")
    return all(p and p not in (".", "..") and not p.startswith(".") for p in parts)


def list_models(manifest_path: "os.PathLike[str] | str | None" = None, *, models_dir=None) -> list[dict]:
    """The manifest's models, for ``stt-agent model list``.

    Each item: name, description, flavour, precision, target, default (bool), size (total bytes,
    None where the manifest does not know every size) and, when ``models_dir`` is given,
    installed (bool).
    """
    data = load_manifest(manifest_path)
    default = data.get("default")
    out = []
    for name, entry in data["models"].items():
        sizes = [f.get("size") for f in entry["files"]]
        item = {
            "name": name,
            "description": entry.get("description", ""),
            "flavour": entry.get("flavour", ""),
            "precision": entry.get("precision", ""),
            "target": entry.get("target", name),
            "default": name == default,
            "size": sum(sizes) if all(isinstance(s, int) for s in sizes) else None,
        }
        if models_dir is not None:
            item["installed"] = _installed_state(Path(models_dir) / item["target"], entry)[0] == "complete"
        out.append(item)
    return out


# ------------------------------------------------------------------------------------------- fetch


def fetch_model(
    name: str,
    models_dir: "os.PathLike[str] | str",
    *,
    manifest_path: "os.PathLike[str] | str | None" = None,
    endpoint: Optional[str] = None,
    progress: Optional[Callable[[str], None]] = None,
    force: bool = False,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> Path:
    """Download, verify and install model NAME into ``<models_dir>/<target>``; return that path.

    ``progress`` receives one-line status messages (default: printed to stderr, byte counts at most
    every few seconds). ``retries`` is the number of extra attempts per request for transient
    errors, waiting ``backoff * 2**k`` seconds before attempt k+1. Raises ModelFetchError
    (UnknownModelError for a name that is not in the manifest).
    """
    say = progress if progress is not None else _stderr
    models_dir = Path(models_dir)
    if manifest_path is None:
        manifest_path = default_manifest_path(models_dir)
    data = load_manifest(manifest_path)
    models = data["models"]
    if name not in models:
        known = ", ".join(sorted(models))
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}")
    entry = models[name]
    target = models_dir / entry.get("target", name)
    hf_endpoint = _endpoint(endpoint)
    ms_endpoint = (os.environ.get(ENV_MODELSCOPE_ENDPOINT) or DEFAULT_MODELSCOPE_ENDPOINT).rstrip("/")
    net = _Net(retries=retries, backoff=backoff, timeout=timeout, say=say)

    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFetchError(f"cannot create the models directory {models_dir}: {exc.strerror or exc}") from None
    partial = models_dir / PARTIAL_DIR / name
    partial.mkdir(parents=True, exist_ok=True)

    with _Lock(models_dir / PARTIAL_DIR / f".{name}.lock", name):
        _recover_interrupted_swap(models_dir, target)
        if not force:
            state, detail = _installed_state(target, entry)
            if state == "complete":
                say(f"{name}: already present at {target} (use --force to download it again)")
                _remove_tree(partial)
                return target
            if state == "foreign":
                raise ModelFetchError(
                    f"{target} already exists but {detail}; move it away or use --force to replace it"
                )

        specs = [_file_spec(f, hf_endpoint, ms_endpoint) for f in entry["files"]]
        _fill_from_hub(specs, hf_endpoint, net, say)
        _check_disk_space(models_dir, partial, specs)

        for spec in specs:
            _download_verified(spec, partial, net, say)

        _install(name, entry, specs, partial, models_dir, target, say)
        _remove_tree(partial)
        _rmdir_if_empty(models_dir / PARTIAL_DIR)
    return target


def _endpoint(endpoint: Optional[str]) -> str:
    ep = endpoint or os.environ.get(ENV_HF_ENDPOINT) or os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT
    return ep.rstrip("/")


def _file_spec(f: dict, hf_endpoint: str, ms_endpoint: str) -> _FileSpec:
    raw = f["url"]
    hf = None
    if raw.startswith("{hf_endpoint}/"):
        rest = raw[len("{hf_endpoint}") :]
        m = _HF_RESOLVE_RE.match(rest)
        if m:
            hf = (m["repo"], m["rev"], urllib.parse.unquote(m["path"]))
        url = hf_endpoint + rest
    elif raw.startswith("{modelscope_endpoint}/"):
        url = ms_endpoint + raw[len("{modelscope_endpoint}") :]
    else:
        url = raw
    return _FileSpec(name=f["name"], url=url, size=f.get("size"), sha256=f.get("sha256"), hf=hf)


# --------------------------------------------------------------------------------- install state


def _installed_state(target: Path, entry: dict) -> tuple[str, str]:
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


# ------------------------------------------------------------------------------------------ hub


def _fill_from_hub(specs: list[_FileSpec], hf_endpoint: str, net: "_Net", say) -> None:
    """Ask the hub for the size and hash of every file the manifest does not fully describe."""
    wanted: dict[tuple[str, str], list[_FileSpec]] = {}
    for spec in specs:
        if spec.size is None or spec.sha256 is None:
            if spec.hf is None:  # load_manifest guarantees this cannot happen for non-hub URLs
                raise ModelFetchError(f"{spec.name}: no size/sha256 in the manifest and {spec.url} is not a hub URL")
            wanted.setdefault(spec.hf[:2], []).append(spec)
    for (repo, rev), group in wanted.items():
        api = f"{hf_endpoint}/api/models/{repo}/revision/{urllib.parse.quote(rev, safe='')}?blobs=true"
        say(f"asking {hf_endpoint} for the sizes and hashes of {repo}@{rev}")
        info = net.get_json(api, what=f"file list of {repo}@{rev}")
        got_sha = info.get("sha") if isinstance(info, dict) else None
        if _SHA1_RE.match(rev) and isinstance(got_sha, str) and got_sha != rev:
            raise ModelFetchError(f"{api} describes commit {got_sha}, not the pinned revision {rev}")
        siblings = info.get("siblings") if isinstance(info, dict) else None
        if not isinstance(siblings, list):
            raise ModelFetchError(f"{api}: unexpected answer (no 'siblings' list)")
        by_name = {s.get("rfilename"): s for s in siblings if isinstance(s, dict)}
        for spec in group:
            s = by_name.get(spec.hf[2])
            if s is None:
                raise ModelFetchError(f"{spec.name}: {repo}@{rev} has no file {spec.hf[2]!r} ({api})")
            lfs = s.get("lfs") if isinstance(s.get("lfs"), dict) else None
            hub_size = (lfs or {}).get("size", s.get("size"))
            hub_sha = None
            if lfs:  # model_info spells it "sha256"; the tree API spells it "oid"
                hub_sha = lfs.get("sha256") or lfs.get("oid")
                if isinstance(hub_sha, str) and hub_sha.startswith("sha256:"):
                    hub_sha = hub_sha[len("sha256:") :]
            if isinstance(hub_size, int) and not isinstance(hub_size, bool):
                if spec.size is not None and spec.size != hub_size:
                    raise ModelMismatchError(
                        f"{spec.name}: the manifest says {spec.size} bytes but {api} says {hub_size}"
                    )
                spec.size = hub_size
            if isinstance(hub_sha, str) and _SHA256_RE.match(hub_sha.lower()):
                hub_sha = hub_sha.lower()
                if spec.sha256 is not None and spec.sha256 != hub_sha:
                    raise ModelMismatchError(
                        f"{spec.name}: the manifest says sha256 {spec.sha256} but {api} says {hub_sha}"
                    )
                spec.sha256 = hub_sha
            elif spec.sha256 is None:
                blob = s.get("blobId")
                if isinstance(blob, str) and _SHA1_RE.match(blob.lower()):
                    spec.git_blob = blob.lower()
            if spec.size is None:
                raise ModelFetchError(f"{spec.name}: neither the manifest nor {api} gives its size; refusing")
            if spec.sha256 is None and spec.git_blob is None:
                raise ModelFetchError(f"{spec.name}: neither the manifest nor {api} gives a hash; refusing")


# ------------------------------------------------------------------------------------- download


class _Net:
    def __init__(self, *, retries: int, backoff: float, timeout: float, say):
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.timeout = timeout
        self.say = say

    def attempt(self, fn, what: str):
        """Run fn(); retry _Transient failures with exponential backoff."""
        started = time.monotonic()
        for k in range(self.retries + 1):
            try:
                return fn()
            except _Transient as exc:
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
            raise _Transient(_describe(exc)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(_describe(exc)) from None

    def get_json(self, url: str, what: str):
        def once():
            with self.open(url, {"Accept": "application/json"}) as resp:
                try:
                    body = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(_describe(exc)) from None
            try:
                return json.loads(body.decode("utf-8"))
            except ValueError:
                raise ModelFetchError(f"{url}: the answer is not JSON") from None

        return self.attempt(once, what)


def _http_error(exc: urllib.error.HTTPError, url: str) -> Exception:
    code = exc.code
    try:
        exc.close()
    except Exception:  # pragma: no cover
        pass
    if code >= 500 or code in (408, 425, 429):
        return _Transient(f"HTTP {code} from {url}")
    if code == 416:
        return _RangeNotSatisfiable()
    reason = {401: "unauthorized", 403: "forbidden", 404: "not found"}.get(code, exc.reason or "refused")
    return ModelFetchError(f"HTTP {code} ({reason}) for {url}")


class _RangeNotSatisfiable(Exception):
    pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed after {len(exc.partial)} more bytes"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def _download_verified(spec: _FileSpec, partial: Path, net: _Net, say) -> None:
    """Leave a verified copy of the file at ``partial/<name>``."""
    done = partial / spec.name
    part = partial / (spec.name + ".part")
    done.parent.mkdir(parents=True, exist_ok=True)
    if done.is_file():
        actual = _hashes(done)
        if done.stat().st_size == spec.size and _matches(spec, actual):
            say(f"{spec.name}: already downloaded and verified")
            return
        done.unlink()
    for restart in (False, True):
        if restart:
            say(f"{spec.name}: the resumed download did not verify; downloading it again from the start")
            _unlink(part)
        resumed = _download(spec, part, net, say)
        size = part.stat().st_size
        actual = _hashes(part)
        if size == spec.size and _matches(spec, actual):
            os.replace(part, done)
            say(f"{spec.name}: verified ({_human(size)})")
            return
        if resumed and not restart:
            continue
        _unlink(part)
        raise ModelMismatchError(_mismatch(spec, size, actual))


def _hashes(path: Path) -> dict:
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


def _matches(spec: _FileSpec, actual: dict) -> bool:
    if spec.sha256 is not None:
        return actual["sha256"] == spec.sha256
    return spec.git_blob is not None and actual["git_blob"] == spec.git_blob


def _mismatch(spec: _FileSpec, size: int, actual: dict) -> str:
    if spec.sha256 is not None:
        want, got = f"sha256 {spec.sha256}", f"sha256 {actual['sha256']}"
    else:
        want, got = f"git blob {spec.git_blob}", f"git blob {actual['git_blob']}"
    return (
        f"{spec.name} from {spec.url} failed verification: expected {spec.size} bytes, {want}; "
        f"got {size} bytes, {got}"
    )


def _download(spec: _FileSpec, part: Path, net: _Net, say) -> bool:
    """Bring ``part`` to spec.size bytes (not verified). True if it resumed earlier bytes."""
    expected = spec.size
    state = {"resumed": False, "last": 0.0, "start_at": None}

    def once():
        have = part.stat().st_size if part.exists() else 0
        if expected is not None and have > expected:
            say(f"{spec.name}: the partial file is longer than expected; starting again")
            _unlink(part)
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
            _unlink(part)
            raise _Transient("range not satisfiable") from None
        with resp:
            status = getattr(resp, "status", 200)
            mode = "ab"
            if have and status == 206:
                start = _content_range_start(resp.headers.get("Content-Range"))
                if start != have:
                    say(f"{spec.name}: the server resumed at byte {start}, not {have}; starting again")
                    _unlink(part)
                    raise _Transient("unexpected Content-Range")
                state["resumed"] = True
                say(f"{spec.name}: resuming at {_human(have)}")
            elif have:
                say(f"{spec.name}: the server ignored the range request (HTTP {status}); starting again")
                mode, have = "wb", 0
            else:
                say(f"{spec.name}: downloading {_human(expected) if expected is not None else ''} from {spec.url}")
            length = resp.headers.get("Content-Length")
            remaining = int(length) if length and length.isdigit() else None
            got = 0
            t0 = time.monotonic()
            with open(part, mode) as out:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _Transient(_describe(exc)) from None
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
                raise _Transient(f"connection closed after {got} of {remaining} bytes")
            if remaining is None and expected is not None and have + got < expected:
                # no Content-Length (a chunked or closing answer): the manifest's size says the body was cut
                raise _Transient(f"connection closed after {have + got} of {expected} bytes")

    net.attempt(once, f"{spec.name} ({spec.url})")
    return state["resumed"]


def _write_error(exc: OSError, part: Path, done: int, expected: Optional[int]) -> ModelFetchError:
    """A write that failed: a full disk keeps what was downloaded, for the next run to resume."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        total = f" of {_human(expected)}" if expected is not None else ""
        return ModelFetchError(f"the disk holding {part.parent} is full: {_human(done)}{total} of {part.name[:-5]} "
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
        return f"{name}: {_human(done)} of {_human(total)} ({pct:.0f}%, {_human(rate)}/s{eta})"
    return f"{name}: {_human(done)} ({_human(rate)}/s)"


def _human(n: Optional[float]) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _check_disk_space(models_dir: Path, partial: Path, specs: list[_FileSpec]) -> None:
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
            f"not enough free space in {models_dir}: {_human(need)} still to download, {_human(free)} free"
        )


# -------------------------------------------------------------------------------------- install


def _install(name: str, entry: dict, specs: list[_FileSpec], partial: Path, models_dir: Path, target: Path, say):
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
                {"name": s.name, "size": s.size, "sha256": s.sha256 or _hashes(tmp / s.name)["sha256"], "url": s.url}
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
            _remove_tree(old)
            say(f"{name}: replaced the previous install at {target}")
        else:
            say(f"{name}: installed at {target}")
    except OSError as exc:
        _remove_tree(tmp)
        raise ModelFetchError(f"cannot install {name} into {target}: {exc.strerror or exc}") from None


def _recover_interrupted_swap(models_dir: Path, target: Path) -> None:
    """Tidy up after a fetch that died mid-install (only ever called under the name's lock)."""
    olds = sorted(models_dir.glob(f".old-{target.name}-*"))
    if olds and not target.exists():
        os.rename(olds.pop(), target)  # a --force swap died between its two renames: put it back
    for p in olds + sorted(models_dir.glob(f".tmp-{target.name}-*")):
        _remove_tree(p)


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        _unlink(path)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class _Lock:
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


class _StderrProgress:
    def __call__(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)


_stderr = _StderrProgress()


# ------------------------------------------------------------------------------------------ CLI


def add_subparser(subparsers, extra=None) -> argparse.ArgumentParser:
    """Add ``model fetch NAME [--models-dir DIR] [--force]`` and ``model list`` to a CLI.

    `extra(sub)` may add more ``model`` subcommands (the CLI adds ``optimize``)."""
    model = subparsers.add_parser(
        "model",
        help="download and list SenseVoiceSmall ONNX models" + (" (and optimize them)" if extra else ""),
        description="Download a published SenseVoiceSmall ONNX export into the models directory, verified.",
    )
    sub = model.add_subparsers(dest="model_command")
    sub.required = True
    fetch = sub.add_parser(
        "fetch",
        help="download, verify and install a model",
        description="Download NAME (see 'stt-agent model list'), check sizes and sha256, and install it "
        "atomically into DIR/<target>. Interrupted downloads resume. The Hugging Face endpoint can be "
        f"changed with ${ENV_HF_ENDPOINT} (or $HF_ENDPOINT), e.g. https://hf-mirror.com.",
    )
    fetch.add_argument("name", metavar="NAME", help="model name from the manifest")
    _add_common(fetch)
    fetch.add_argument("--force", action="store_true", help="download again and replace an existing install")
    lst = sub.add_parser("list", help="list the models that can be fetched")
    _add_common(lst)
    if extra is not None:
        extra(sub)
    sub.metavar = "{" + ",".join(sub.choices) + "}"  # argparse names a missing subcommand by its dest otherwise
    model.set_defaults(func=run)
    return model


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models-dir",
        metavar="DIR",
        default=None,
        help=f"where models live (default: ${ENV_MODELS_DIR} or ./models)",
    )
    p.add_argument("--manifest", metavar="FILE", default=None, help="model manifest (default: DIR/manifest.json)")


def run(args: argparse.Namespace) -> int:
    """Run ``model fetch`` / ``model list``; return the exit code (0 ok, 1 failure, 2 usage, 66 a download
    that does not verify, 69 the hub unreachable: README's table)."""
    models_dir = Path(args.models_dir) if getattr(args, "models_dir", None) else default_models_dir()
    manifest = getattr(args, "manifest", None)
    command = getattr(args, "model_command", None)
    try:
        if command == "list":
            return _run_list(models_dir, manifest)
        if command == "fetch":
            path = fetch_model(args.name, models_dir, manifest_path=manifest, force=bool(getattr(args, "force", False)))
            print(path)
            return 0
        print("stt-agent model: expected 'fetch NAME' or 'list'", file=sys.stderr)
        return 2
    except UnknownModelError as exc:
        print(f"stt-agent model fetch: {exc}", file=sys.stderr)
        return 2
    except ModelFetchError as exc:
        print(f"stt-agent model {command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the models directory itself: read-only, gone, full while installing
        print(f"stt-agent model {command}: {exc.filename or models_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stt-agent model: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _run_list(models_dir: Path, manifest) -> int:
    if manifest is None:
        manifest = default_manifest_path(models_dir)
    items = list_models(manifest, models_dir=models_dir)
    width = max(len(i["name"]) for i in items)
    for i in items:
        flags = []
        if i["default"]:
            flags.append("default")
        if i.get("installed"):
            flags.append("installed")
        size = _human(i["size"]) if i["size"] is not None else "size from hub"
        tail = f" [{', '.join(flags)}]" if flags else ""
        print(f"{i['name']:<{width}}  {i['flavour']:<11} {i['precision']:<5} {size:>10}  {i['description']}{tail}")
    return 0


def main(argv=None) -> int:  # pragma: no cover - convenience: python -m agent.model_fetch fetch NAME
    parser = argparse.ArgumentParser(prog="stt-agent")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
