"""The ONNX Runtime package this process has, and how the process is set up for it: below both the session
builder (runtime.py) and the optimized-copy cache (ort_cache.py), which use it and not each other."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import List

from agent.errors import UnavailableError

log = logging.getLogger(__name__)
_M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h

# All of these install the same `onnxruntime` module; two at once overwrite each other's files.
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                         "onnxruntime-qnn", "onnxruntime-training")


def installed_runtimes() -> List[str]:
    """Installed ONNX Runtime distributions, as "name version".

    Read from the *.dist-info directory names on sys.path: importlib.metadata gives the same
    answer but its import alone is ~15 ms of every `transcribe` start.
    """
    found = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # zip files, missing directories
            continue
        for name in names:
            if not name.endswith(".dist-info"):
                continue
            dist, _, version = name[: -len(".dist-info")].partition("-")
            canonical = dist.lower().replace("_", "-").replace(".", "-")
            if canonical in RUNTIME_DISTRIBUTIONS:
                found.setdefault(canonical, f"{canonical} {version}")
    return [found[name] for name in RUNTIME_DISTRIBUTIONS if name in found]


def import_onnxruntime():
    runtimes = installed_runtimes()
    if len(runtimes) > 1:
        log.warning("several ONNX Runtime packages are installed (%s); they overwrite each other's files: "
                    "pip uninstall -y %s, then install one ('stt-agent[cpu]' or 'stt-agent[gpu]')",
                    ", ".join(runtimes), " ".join(r.split()[0] for r in runtimes))
    try:
        import onnxruntime
    except ImportError as exc:
        raise UnavailableError("ONNX Runtime is not installed: pip install 'stt-agent[cpu]' (or 'stt-agent[gpu]' "
                               f"on a CUDA/Jetson box) ({exc})") from None
    return onnxruntime, (runtimes[0] if runtimes else f"onnxruntime {onnxruntime.__version__}")


def pin_malloc_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Keep glibc's mmap threshold fixed so large buffers go back to the OS when freed.

    glibc raises the threshold each time a large mmapped block is freed (reading tokens.txt is
    enough); ONNX Runtime's load-time buffers then come from the heap and stay resident: measured
    +120-180 MB peak RSS with the full-size int8 model. Setting it explicitly turns that off.
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): no dynamic threshold to pin
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
