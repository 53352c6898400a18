"""SenseVoice's frontend: Kaldi fbank -> low frame rate stacking (LFR) -> CMVN.

Matches FunASR's WavFrontend as its C++ runtime runs it: 80 mel bins, 25/10 ms hamming frames,
dither 0 (the Python funasr_onnx default of dither 1.0 makes results non-deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.audio.format import RATE as SAMPLE_RATE

MIN_SAMPLES = 400  # one 25 ms frame; shorter audio is zero-padded so the model sees one frame


@dataclass(frozen=True)
class FrontendConfig:
    neg_mean: np.ndarray  # (lfr_m * mel_bins,)
    inv_stddev: np.ndarray  # (lfr_m * mel_bins,)
    lfr_m: int = 7
    lfr_n: int = 6
    mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "hamming"
    normalize_samples: bool = False  # True: the model wants samples in [-1, 1], not the int16 scale

    @property
    def feature_dim(self) -> int:
        return self.lfr_m * self.mel_bins

    @property
    def seconds_per_frame(self) -> float:
        """Audio time covered by one output frame of the model (60 ms for SenseVoice)."""
        return self.frame_shift_ms * self.lfr_n / 1000.0


class Frontend:
    def __init__(self, config: FrontendConfig):
        import kaldi_native_fbank as knf  # lazy: heavy native import

        self.config = config
        opts = knf.FbankOptions()
        opts.frame_opts.samp_freq = SAMPLE_RATE
        opts.frame_opts.dither = 0.0
        opts.frame_opts.window_type = config.window
        opts.frame_opts.frame_length_ms = config.frame_length_ms
        opts.frame_opts.frame_shift_ms = config.frame_shift_ms
        opts.frame_opts.snip_edges = True
        opts.mel_opts.num_bins = config.mel_bins
        opts.energy_floor = 0.0
        self._opts = opts
        self._knf = knf
        self._scale = np.float32(1.0 / 32768.0 if config.normalize_samples else 1.0)
        self._neg_mean = config.neg_mean.astype(np.float32)
        self._inv_stddev = config.inv_stddev.astype(np.float32)

    def fbank(self, samples: np.ndarray) -> np.ndarray:
        """(frames, mel_bins) log-mel energies; samples are float on the int16 scale."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.size < MIN_SAMPLES:
            samples = np.concatenate([samples, np.zeros(MIN_SAMPLES - samples.size, np.float32)])
        if self._scale != 1.0:
            samples = samples * self._scale
        fbank = self._knf.OnlineFbank(self._opts)
        fbank.accept_waveform(SAMPLE_RATE, samples)
        fbank.input_finished()
        return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)]).astype(np.float32, copy=False)

    def features(self, samples: np.ndarray) -> np.ndarray:
        """(ceil(frames / lfr_n), lfr_m * mel_bins) model input."""
        return self.lfr_cmvn(self.fbank(samples))

    def lfr_cmvn(self, fbank: np.ndarray) -> np.ndarray:
        m, n = self.config.lfr_m, self.config.lfr_n
        frames = fbank.shape[0]
        out_frames = -(-frames // n)
        # FunASR pads (m - 1) // 2 copies of the first frame on the left and repeats the last frame
        # to fill the right; clamping the stacked indices to the last row is the same padding.
        left = (m - 1) // 2
        rows = np.arange(out_frames)[:, None] * n + np.arange(m)[None, :] - left
        np.clip(rows, 0, frames - 1, out=rows)
        stacked = fbank[rows].reshape(out_frames, m * fbank.shape[1])
        stacked += self._neg_mean
        stacked *= self._inv_stddev
        return stacked
