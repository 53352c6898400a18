"""The manifest of known models (``models/manifest.json``): where it is, what a valid one holds, and the
file specs a fetch works through."""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from agent.errors import ModelFetchError

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_MODELSCOPE_ENDPOINT = "https://modelscope.cn"
ENV_HF_ENDPOINT = "STT_AGENT_HF_ENDPOINT"
ENV_MODELSCOPE_ENDPOINT = "STT_AGENT_MODELSCOPE_ENDPOINT"
ENV_MODELS_DIR = "STT_AGENT_MODELS_DIR"
ENV_MANIFEST = "STT_AGENT_MODEL_MANIFEST"

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HF_RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


@dataclass
class FileSpec:
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
    candidates.append(Path(__file__).resolve().parents[2] / "models" / "manifest.json")
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
    if not NAME_RE.match(name):
        raise ModelFetchError(f"{where}: the name must match {NAME_RE.pattern}")
    if not isinstance(entry, dict):
        raise ModelFetchError(f"{where}: expected an object")
    target = entry.get("target", name)
    if not isinstance(target, str) or not NAME_RE.match(target):
        raise ModelFetchError(f"{where}.target: expected a plain directory name matching {NAME_RE.pattern}")
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
        if sha is not None and (not isinstance(sha, str) or not SHA256_RE.match(sha)):
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


def hf_endpoint(endpoint: Optional[str] = None) -> str:
    """``endpoint``, else ``$STT_AGENT_HF_ENDPOINT``, else ``$HF_ENDPOINT`` (a mirror, as huggingface_hub reads
    it, e.g. https://hf-mirror.com), else https://huggingface.co; read at each fetch, not at import."""
    ep = endpoint or os.environ.get(ENV_HF_ENDPOINT) or os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT
    return ep.rstrip("/")


def modelscope_endpoint() -> str:
    return (os.environ.get(ENV_MODELSCOPE_ENDPOINT) or DEFAULT_MODELSCOPE_ENDPOINT).rstrip("/")


def file_spec(f: dict, hf_endpoint: str, ms_endpoint: str) -> FileSpec:
    """A manifest file entry with its URL's endpoint placeholder filled in."""
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
    return FileSpec(name=f["name"], url=url, size=f.get("size"), sha256=f.get("sha256"), hf=hf)
