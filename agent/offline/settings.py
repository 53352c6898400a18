"""Settings of decoding whole files (`transcribe`, `run --fast`): how segments are batched."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config_schema import setting


@dataclass
class OfflineSettings:
    batch_size: int = setting(
        0, "Segments of a long file decoded in one model run. 0 = auto: 4 on the CPU provider (a 60-minute file "
           "in 94% of the time of one at a time on 2 cores, docs/benchmarks/longform.md), 8 on CUDA/TensorRT.",
        min=0, max=64)
    max_batch_seconds: float = setting(
        120.0, "Most audio one batched run may compute: the longest segment in it times the batch size "
               "(padding included). Bounds the memory of a batch.", min=1.0, max=1200.0)

    def resolved_batch_size(self, provider: str) -> int:
        if self.batch_size:
            return self.batch_size
        return 4 if provider == "cpu" else 8
