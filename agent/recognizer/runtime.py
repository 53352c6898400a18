"""ONNX Runtime sessions: which providers load, and in which order (which package is installed: ort_env.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple, Optional

from agent.errors import ConfigError, ModelError
from agent.recognizer import ort_cache
from agent.recognizer.ort_env import (  # noqa: F401 - installed_runtimes: asked of this module too
    first_line, import_onnxruntime, installed_runtimes, pin_malloc_mmap_threshold)
from agent.recognizer.settings import RecognizerSettings

log = logging.getLogger(__name__)
EP_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def provider_options(name: str, settings: RecognizerSettings) -> dict:
    if name == "tensorrt":
        trt = settings.tensorrt
        return {"device_id": trt.device_id, "trt_fp16_enable": trt.fp16, "trt_engine_cache_enable": True,
                "trt_engine_cache_path": trt.engine_cache_dir, "trt_timing_cache_enable": True,
                "trt_timing_cache_path": trt.engine_cache_dir,
                "trt_max_workspace_size": trt.workspace_mb * 1024 * 1024}
    if name == "cuda":
        return {"device_id": settings.cuda.device_id}
    return {}


def device_kind(settings: RecognizerSettings) -> str:
    """Where the model will most likely run, for picking the model file before the session exists."""
    ort, _ = import_onnxruntime()
    available = set(ort.get_available_providers())
    for name in settings.providers:
        if EP_NAMES[name] in available:
            return "cpu" if name == "cpu" else "gpu"
    return "cpu"


class Session(NamedTuple):
    session: object  # onnxruntime.InferenceSession
    provider: str  # the provider in use: tensorrt, cuda or cpu
    package: str  # the ONNX Runtime distribution, e.g. "onnxruntime 1.32.0"
    optimized: Optional[Path]  # the optimized copy loaded instead of the model file, if any


def create_session(path: Path, settings: RecognizerSettings) -> Session:
    """Load `path` (or its optimized copy) with the first provider that works."""
    pin_malloc_mmap_threshold()
    ort, package = import_onnxruntime()
    available = ort.get_available_providers()
    chain = []
    for name in settings.providers:
        ep = EP_NAMES[name]
        if ep in available:
            chain.append((ep, provider_options(name, settings)))
        else:
            log.warning("provider %s is not in this ONNX Runtime build (%s offers %s); trying the next one",
                        name, package, ", ".join(available))
    if not chain:
        raise ConfigError(f"recognizer.providers: none of {', '.join(settings.providers)} is available in {package} "
                          f"(it offers {', '.join(available)}); add cpu to recognizer.providers, or install "
                          "'stt-agent[gpu]' for cuda/tensorrt")
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.cpu.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The memory pattern is planned and kept per input shape, i.e. per utterance length: a live
    # stream of ever new lengths grew RSS by ~0.07 MiB per new length (about 35 MiB before all
    # lengths up to max_utterance_s are seen). Without it RSS stays flat; decode time is unchanged
    # within 2% (docs/benchmarks/pipeline.md).
    options.enable_mem_pattern = False
    options.log_severity_level = 3  # ORT's own warnings are noise for operators; failures are reported below
    session = None
    optimized = _optimized_copy(path, settings, chain, ort.__version__)
    if optimized is not None:
        try:
            session = _build(ort, optimized, options, chain)
        except Exception as exc:
            ort_cache.discard(optimized, first_line(exc))
            optimized = None
    if session is None:
        try:
            session = _build(ort, path, options, chain)
        except Exception as exc:  # ORT raises its own pybind types (InvalidProtobuf, Fail, ...)
            size = path.stat().st_size if path.exists() else 0
            raise ModelError(f"{path}: cannot load the ONNX model ({size} bytes; corrupt or truncated? download "
                             f"it again): {first_line(exc)}") from None
    loaded = session.get_providers()
    for ep, _ in chain:
        if ep not in loaded:
            log.warning("provider %s failed to load (its libraries, e.g. CUDA, cuDNN or TensorRT, are missing or "
                        "do not match %s); trying the next one", ep, package)
    used = next(name for name, ep in EP_NAMES.items() if ep == loaded[0])
    return Session(session, used, package, optimized)


def _build(ort, path: Path, options, chain):
    return ort.InferenceSession(str(path), sess_options=options, providers=[ep for ep, _ in chain],
                                provider_options=[opts for _, opts in chain])


def _optimized_copy(path: Path, settings: RecognizerSettings, chain, ort_version: str) -> Optional[Path]:
    """The saved CPU-optimized copy of `path`, when the CPU provider is the only one to try."""
    if [ep for ep, _ in chain] != [EP_NAMES["cpu"]]:
        return None  # GPU providers optimize for themselves (TensorRT keeps its own engine cache)
    directory = ort_cache.cache_dir(settings.cpu.optimized_cache_dir)
    if directory is None:
        return None
    copy = ort_cache.lookup(path, directory, ort_version)
    if copy is None:
        log.info("no optimized copy of %s for onnxruntime %s: 'stt-agent model optimize' makes loading it "
                 "about 40%% faster", path, ort_version)
    return copy
