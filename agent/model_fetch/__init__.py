"""`stt-agent model fetch NAME`: download a published SenseVoiceSmall ONNX export into models/, verified.

What a fetch does, in order, and where each step lives:

1. Look NAME up in the manifest (``models/manifest.json``; manifest.py): a list of files, each with
   a URL and, where a public source publishes them, its size and sha256.
2. For a Hugging Face file whose size or sha256 the manifest leaves out, ask the hub (hub.py, on
   huggingface_hub).
3. Download every file to ``<models_dir>/.partial/<name>/<file>.part``, resuming what an earlier
   run left, and check its size and hash (download.py).
4. Assemble the complete directory next to the target and rename it into place (install.py).

Every failure is an agent.errors.ModelFetchError (or a subclass) carrying its exit code; cli.main
turns it into one line and that code, as for every other command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Optional

from agent.errors import HubUnreachableError, ModelFetchError, ModelMismatchError, UnknownModelError
from agent.model_fetch import download, hub, install
from agent.model_fetch.install import INSTALL_MARKER, PARTIAL_DIR
from agent.model_fetch.manifest import (default_manifest_path, default_models_dir, file_spec, hf_endpoint,
                                        load_manifest, modelscope_endpoint)

__all__ = [
    "HubUnreachableError",
    "INSTALL_MARKER",
    "ModelFetchError",
    "ModelMismatchError",
    "UnknownModelError",
    "default_manifest_path",
    "default_models_dir",
    "fetch_model",
    "list_models",
    "load_manifest",
]


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
            item["installed"] = install.installed_state(Path(models_dir) / item["target"], entry)[0] == "complete"
        out.append(item)
    return out


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
    say = progress if progress is not None else _to_stderr
    models_dir = Path(models_dir)
    data = load_manifest(manifest_path if manifest_path is not None else default_manifest_path(models_dir))
    models = data["models"]
    if name not in models:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(models))}")
    try:
        return _fetch(name, models[name], models_dir, endpoint, say, force,
                      download.Net(retries=retries, backoff=backoff, timeout=timeout, say=say))
    except OSError as exc:  # the models directory itself: read-only, gone, full while tidying up
        raise ModelFetchError(f"{exc.filename or models_dir}: {exc.strerror or exc}") from None


def _fetch(name: str, entry: dict, models_dir: Path, endpoint, say, force: bool, net) -> Path:
    target = models_dir / entry.get("target", name)
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFetchError(f"cannot create the models directory {models_dir}: {exc.strerror or exc}") from None
    partial = models_dir / PARTIAL_DIR / name
    partial.mkdir(parents=True, exist_ok=True)

    with install.Lock(models_dir / PARTIAL_DIR / f".{name}.lock", name):
        install.recover_interrupted_swap(models_dir, target)
        if not force:
            state, detail = install.installed_state(target, entry)
            if state == "complete":
                say(f"{name}: already present at {target} (use --force to download it again)")
                install.remove_tree(partial)
                return target
            if state == "foreign":
                raise ModelFetchError(f"{target} already exists but {detail}; move it away or use --force to replace it")

        hf = hf_endpoint(endpoint)
        specs = [file_spec(f, hf, modelscope_endpoint()) for f in entry["files"]]
        hub.fill_from_hub(specs, hf, net, say)  # imports huggingface_hub only when a file is unpinned
        download.check_disk_space(models_dir, partial, specs)
        for spec in specs:
            download.download_verified(spec, partial, net, say)
        install.install(name, entry, specs, partial, models_dir, target, say,
                        sha256_of=lambda path: download.hashes(path)["sha256"])
        install.remove_tree(partial)
        install.rmdir_if_empty(models_dir / PARTIAL_DIR)
    return target


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
