"""The ``stt-agent model fetch|list`` subcommands: their arguments and what they print.

Errors are raised, not mapped: cli.main turns each into one line and its exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.errors import UsageError
from agent.model_fetch import default_manifest_path, default_models_dir, fetch_model, list_models
from agent.model_fetch.download import human
from agent.model_fetch.manifest import ENV_HF_ENDPOINT, ENV_MODELS_DIR


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
    """Run ``model fetch`` / ``model list``: 0, or an agent.errors error for cli.main to report."""
    models_dir = Path(args.models_dir) if getattr(args, "models_dir", None) else default_models_dir()
    manifest = getattr(args, "manifest", None)
    command = getattr(args, "model_command", None)
    if command == "list":
        return _list(models_dir, manifest)
    if command != "fetch":
        raise UsageError("stt-agent model: expected 'fetch NAME' or 'list'")
    try:
        path = fetch_model(args.name, models_dir, manifest_path=manifest, force=bool(getattr(args, "force", False)))
    except KeyboardInterrupt:
        print("stt-agent model fetch: interrupted; run the same command again to resume", file=sys.stderr)
        raise
    print(path)
    return 0


def _list(models_dir: Path, manifest) -> int:
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
        size = human(i["size"]) if i["size"] is not None else "size from hub"
        tail = f" [{', '.join(flags)}]" if flags else ""
        print(f"{i['name']:<{width}}  {i['flavour']:<11} {i['precision']:<5} {size:>10}  {i['description']}{tail}")
    return 0
