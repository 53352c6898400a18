"""An optimized copy of the model file for the CPU provider, so later loads skip most of the build.

Building a CPU session spends about 40% of its time rewriting the graph (fusions, constant
folding). ONNX Runtime can save the rewritten graph ("offline mode" in its documentation); loaded
again, it gives bit-identical output in about 60% of the time, and a lower peak RSS. It is saved at
the extended level, which ONNX Runtime keeps free of hardware-specific nodes; the layout passes that
depend on the CPU still run at every load. On x86-64 with VNNI an int8 model's uint8 weights are stored
as int8 in the copy first (signed_weights.py: the same output, 30% less model time).

Saving needs about twice the memory of a normal load (780 MiB for the int8 model), so the daemon
never does it: `stt-agent model optimize` does, once, and the loader only looks the copy up. A copy
is named after the model file's path, size and mtime and the ONNX Runtime version, so a replaced
model or an upgraded runtime simply misses and the original is loaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from pathlib import Path

from agent.errors import ModelError

log = logging.getLogger(__name__)
SUBDIR = "onnxruntime"
_HASH_LEN = 12
X86_64 = ("x86_64", "amd64")


def cache_dir(setting: str) -> Path | None:
    """The directory a recognizer.cpu.optimized_cache_dir value names; None when disabled ("")."""
    if not setting:
        return None
    if setting != "auto":
        return Path(os.path.expanduser(setting))
    systemd = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]  # set by the unit's CacheDirectory=
    if systemd:
        return Path(systemd) / SUBDIR
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg if xdg else os.path.expanduser("~/.cache")) / "stt-agent" / SUBDIR


def _prefix(model: Path) -> str:
    return hashlib.sha1(str(model.resolve()).encode("utf-8")).hexdigest()[:_HASH_LEN] + "-"


def entry_path(model: Path, directory: Path, ort_version: str) -> Path:
    """Where the optimized copy of `model` for this ONNX Runtime version lives."""
    stat = model.stat()
    return directory / f"{_prefix(model)}{model.stem}-{stat.st_size}-{stat.st_mtime_ns}-ort{ort_version}.onnx"


def lookup(model: Path, directory: Path, ort_version: str) -> Path | None:
    try:
        path = entry_path(model, directory, ort_version)
    except OSError:  # the model file itself is missing: the normal load reports that
        return None
    return path if path.is_file() else None


def discard(path: Path, reason: str) -> None:
    log.warning("optimized model copy %s is unusable (%s); removed it, loading the original model "
                "(run 'stt-agent model optimize' to rebuild it)", path, reason)
    try:
        path.unlink()
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)


def build(model: Path, setting: str, force: bool = False) -> dict:
    """Write the optimized copy of `model` (atomically), check that it loads; return what was done.

    An existing copy for this model file and runtime is kept unless `force` ("up_to_date" says so)."""
    from agent.recognizer.ort_env import first_line, import_onnxruntime, pin_malloc_mmap_threshold

    directory = cache_dir(setting)
    if directory is None:
        raise ModelError("recognizer.cpu.optimized_cache_dir is empty (optimized copies are disabled); "
                         "set it to a directory or to auto")
    ort, package = import_onnxruntime()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        target = entry_path(model, directory, ort.__version__)
    except OSError as exc:
        raise ModelError(f"cannot use the optimized-model cache {directory}: {exc}") from None
    if target.is_file() and not force:
        return {"optimized": str(target), "up_to_date": True}
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    signed, signed_tensors = _signed_source(model, partial)
    pin_malloc_mmap_threshold()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(partial)
    options.log_severity_level = 3
    started = time.perf_counter()
    try:
        ort.InferenceSession(str(signed or model), sess_options=options, providers=["CPUExecutionProvider"])
        build_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        check = ort.SessionOptions()
        check.log_severity_level = 3
        ort.InferenceSession(str(partial), sess_options=check, providers=["CPUExecutionProvider"])
        load_ms = (time.perf_counter() - started) * 1000
        os.replace(partial, target)
    except Exception as exc:  # noqa: BLE001 - ORT's own pybind error types, disk full, ...
        partial.unlink(missing_ok=True)
        raise ModelError(f"{model}: cannot write an optimized copy to {directory}: {first_line(exc)}") from None
    finally:
        if signed is not None:
            signed.unlink(missing_ok=True)
    removed = _prune(target)
    return {"optimized": str(target), "up_to_date": False, "bytes": target.stat().st_size, "runtime": package,
            "build_ms": round(build_ms), "load_ms": round(load_ms), "removed": [str(p) for p in removed],
            "signed_tensors": signed_tensors}


def signed_kernels_exact(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernel is exact here: x86-64 with VNNI (AVX-512 VNNI or AVX-VNNI),
    whose dot product accumulates in int32. Without VNNI that kernel's VPMADDUBSW saturates int16 sums (the
    reason ONNX Runtime's quantization guide gives for reduce_range), and ARM's kernels were not measured."""
    if platform.machine().lower() not in X86_64:
        return False
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _signed_source(model: Path, partial: Path):
    """Where signed kernels are exact, a copy of an int8 model with signed weights to optimize instead
    (signed_weights.py: the same output on the faster kernels); (None, 0) where there is nothing to sign
    or the kernels are not known to be exact."""
    if not signed_kernels_exact():
        return None, 0
    from agent.recognizer.signed_weights import write_signed

    path = partial.with_name(partial.name + ".signed.onnx")
    try:
        count = write_signed(model, path)
    except (OSError, ValueError, IndexError) as exc:  # a full disk, a file it cannot follow (truncated, not protobuf)
        path.unlink(missing_ok=True)
        log.warning("%s: weights left unsigned (%s); the copy is optimized as it is", model, exc)
        return None, 0
    return (path, count) if count else (None, 0)


def _prune(keep: Path):
    """Remove older copies of the same model file (other mtime, size or runtime version) and
    what interrupted builds of it left behind."""
    prefix = keep.name[: _HASH_LEN + 1]
    removed = []
    for path in [*keep.parent.glob(f"{prefix}*.onnx"), *keep.parent.glob(f".{prefix}*.partial"),
                 *keep.parent.glob(f".{prefix}*.partial.signed.onnx")]:
        if path != keep:
            try:
                path.unlink()
                removed.append(path)
            except OSError as exc:
                log.warning("cannot remove the stale optimized copy %s: %s", path, exc)
    return removed
