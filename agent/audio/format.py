"""The one rate and the one PCM conversion: audio files, WebSocket devices and Wyoming clients all end up
here as mono float32 samples on the int16 scale (full scale = +/-32768, what the Kaldi fbank expects)
at 16 kHz, the rate the VAD and the recognizer take."""

from __future__ import annotations

import numpy as np

RATE = 16000
WIDTHS = (1, 2, 3, 4)  # bytes per integer sample; 1 is unsigned (WAV's 8-bit, Wyoming's width 1)


def pcm_to_float(buf, width: int, channels: int = 1, *, floating: bool = False) -> np.ndarray:
    """Whole interleaved little-endian frames -> mono float32 on the int16 scale (channels averaged).

    `floating`: IEEE float samples (width 4 or 8). NaN becomes 0 and infinities full scale; finite
    values are clipped to full scale, as any conversion to integer PCM would. Count them first with
    `non_finite` to report them.
    """
    if floating:
        x = np.nan_to_num(np.frombuffer(buf, "<f4" if width == 4 else "<f8"), nan=0.0, posinf=1.0, neginf=-1.0)
        samples = (np.clip(x, -1.0, 1.0) * 32768).astype(np.float32)
    elif width == 1:  # unsigned, centred on 128
        samples = (np.frombuffer(buf, np.uint8).astype(np.float32) - 128) * 256
    elif width == 2:
        samples = np.frombuffer(buf, "<i2").astype(np.float32)
    elif width == 3:
        # Each 3-byte sample in the top of an int32 (low byte zero): value = x * 256.
        quads = np.zeros((len(buf) // 3, 4), np.uint8)
        quads[:, 1:] = np.frombuffer(buf, np.uint8).reshape(-1, 3)
        samples = quads.view("<i4").ravel().astype(np.float32) / 65536
    else:
        # Scaling by a power of two after the float32 cast rounds exactly like x / 65536 would.
        samples = np.frombuffer(buf, "<i4").astype(np.float32) / 65536
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return samples


def frames_to_float(frames: np.ndarray) -> np.ndarray:
    """Decoded frames, shape (n, channels), as libsndfile gives them: int32 with the sample in its top bits
    (any integer encoding: exact on the int16 scale after / 65536) or float (full scale 1.0) -> mono float32
    on the int16 scale, by pcm_to_float."""
    frames = np.ascontiguousarray(frames, frames.dtype.newbyteorder("<"))
    channels = frames.shape[1] if frames.ndim == 2 else 1
    return pcm_to_float(frames, frames.dtype.itemsize, channels, floating=frames.dtype.kind == "f")


def non_finite(buf, width: int) -> int:
    """How many float samples in `buf` are NaN or infinite."""
    return int(np.count_nonzero(~np.isfinite(np.frombuffer(buf, "<f4" if width == 4 else "<f8"))))


class Resampler:
    """A stream at `rate` -> 16 kHz, chunk by chunk, keeping the filter state across chunks (no clicks at
    chunk edges); a pass-through at 16 kHz."""

    def __init__(self, rate: int):
        self.rate = rate
        self._stream = None
        if rate != RATE:
            import soxr

            self._stream = soxr.ResampleStream(rate, RATE, 1, dtype="float32", quality="HQ")

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        return samples if self._stream is None else self._stream.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        """What the filter still holds, at the end of the stream."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)


def _g711_tables():
    """ITU-T G.711 expansion of every 8-bit code, on the int16 scale (what telephony and OpenAI's realtime
    g711_ulaw / g711_alaw audio carry, at 8 kHz)."""
    codes = np.arange(256, dtype=np.int32)
    u = ~codes & 0xFF
    mu = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    mulaw = np.where(u & 0x80, 0x84 - mu, mu - 0x84)
    a = codes ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    alaw = np.where(a & 0x80, magnitude, -magnitude)
    return mulaw.astype(np.float32), alaw.astype(np.float32)


ULAW, ALAW = _g711_tables()


def g711_to_float(buf: bytes, table: np.ndarray) -> np.ndarray:
    """G.711 bytes (ULAW or ALAW) -> float32 samples on the int16 scale, at the stream's rate (8 kHz)."""
    return table[np.frombuffer(buf, np.uint8)]
