"""Settings of the live pipeline's decode scheduling."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config_schema import setting


@dataclass
class PipelineSettings:
    partial_interval_ms: int = setting(
        400, "Re-decode the open utterance this often for partial results (0 = no partials).", min=0, max=10000)
    duty_budget: float = setting(
        0.5, "Largest share of time partial decodes may keep the model busy; the partial interval "
             "stretches by itself as decodes of a long utterance get slower.", min=0.05, max=1.0)
    speculative_final: bool = setting(
        True, "Start decoding at the first silence; if it lasts to the endpoint, that decode is the "
              "final, published at once (the final costs the endpoint silence, not endpoint + decode).")
    speculative_after_ms: int = setting(
        160, "When the model serves several streams (serve): how long a silence lasts before its speculative "
             "decode starts. Pauses between words are mostly shorter: with 12 streams, decodes started at every "
             "first silent frame took 5 times the model time of the finals. A stream alone on the model "
             "speculates at once. Keep it below endpoint_silence_ms minus a decode.", min=0, max=2000)
    drain_timeout_s: float = setting(
        5.0, "On stop: how long to wait for pending finals to be decoded and published.", min=0.0, max=120.0)
