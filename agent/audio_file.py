"""Read WAV files into mono float32 samples for the recognizer.

Samples come out on the int16 scale (full scale = +/-32768) because the Kaldi fbank
frontend expects that scale. A small RIFF parser is used instead of the ``wave``
module, which on Python 3.10 rejects IEEE float and WAVE_FORMAT_EXTENSIBLE files.
"""
from __future__ import annotations

import logging
import os
import struct
import uuid
from typing import NamedTuple

import numpy as np
import soxr

from agent.audio.format import non_finite as _non_finite
from agent.audio.format import pcm_to_float
from agent.errors import EXIT_NOINPUT, AgentError

log = logging.getLogger(__name__)

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
# KSDATAFORMAT_SUBTYPE_* GUIDs are the format tag followed by this fixed tail.
_SUBTYPE_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
# Streaming writers (ffmpeg/sox to a pipe) cannot seek back to fill in the size.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
# Below 8 kHz there is no speech band left to recognize, and a header claiming 1 Hz would turn a
# 20 KB file into 10,000 s (2.2 GB) of resampled audio. 768 kHz is the highest rate audio hardware uses.
MIN_RATE, MAX_RATE = 8000, 768000


class WavFormat(NamedTuple):
    tag: int  # _PCM or _FLOAT (EXTENSIBLE resolved to its subformat)
    channels: int
    rate: int
    width: int  # bytes per sample

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.width


class AudioFileError(AgentError):
    """A file that cannot be read as audio; the message names the file and the problem."""

    exit_code = EXIT_NOINPUT


def parse_fmt(name: str, body: bytes) -> WavFormat:
    """The sample format a fmt chunk describes; AudioFileError for what the recognizer cannot take."""
    if len(body) < 16:
        raise AudioFileError(f"{name}: fmt chunk too short ({len(body)} bytes, expected at least 16)")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise AudioFileError(f"{name}: EXTENSIBLE fmt chunk too short ({len(body)} bytes, expected 40)")
        sub = body[24:40]
        if sub[2:] != _SUBTYPE_TAIL or struct.unpack_from("<H", sub)[0] not in (_PCM, _FLOAT):
            raise AudioFileError(
                f"{name}: unsupported EXTENSIBLE subformat {uuid.UUID(bytes_le=bytes(sub))} "
                "(expected PCM or IEEE float)")
        tag = struct.unpack_from("<H", sub)[0]
    if tag not in (_PCM, _FLOAT):
        raise AudioFileError(
            f"{name}: unsupported WAVE format tag 0x{tag:04X} "
            "(expected PCM 1, IEEE float 3 or EXTENSIBLE with a PCM/float subformat)")
    if channels == 0:
        raise AudioFileError(f"{name}: header says 0 channels")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioFileError(f"{name}: header says sample rate {rate} Hz (expected {MIN_RATE} to {MAX_RATE} Hz; "
                             f"speech needs at least {MIN_RATE} Hz)")
    # Samples narrower than their container (e.g. 12 or 20 bits) are left-justified in it,
    # so decoding by container width gives the right scale.
    width = (bits + 7) // 8
    if width not in ((1, 2, 3, 4) if tag == _PCM else (4, 8)):
        kind = "PCM" if tag == _PCM else "IEEE float"
        raise AudioFileError(f"{name}: unsupported {bits}-bit {kind} "
                             f"(expected {'8/16/24/32' if tag == _PCM else '32/64'}-bit)")
    if block_align != width * channels:
        log.warning("%s: block align %d does not match %d channels x %d bytes; using the latter",
                    name, block_align, channels, width)
    return WavFormat(tag, channels, rate, width)


def decode_frames(buf, fmt: WavFormat) -> np.ndarray:
    """Whole interleaved frames -> mono float32 on the int16 scale (channels averaged); see pcm_to_float."""
    return pcm_to_float(buf, fmt.width, fmt.channels, floating=fmt.tag == _FLOAT)


def non_finite(buf, fmt: WavFormat) -> int:
    """How many float samples in `buf` are NaN or infinite (0 for integer PCM)."""
    return _non_finite(buf, fmt.width) if fmt.tag == _FLOAT else 0


class WavFile:
    """An open WAV file whose header has been read: its format and where its samples are.

    The samples are read all at once (`read_all`) or a block at a time (`blocks`): a long recording
    is never held whole in memory (a 2-hour 16 kHz file is 230 MB as int16, 460 MB as float32).
    """

    def __init__(self, path: str | os.PathLike):
        self.name = os.fspath(path)
        try:
            self._file = open(path, "rb")  # noqa: SIM115 - closed by close() / the context manager
        except FileNotFoundError:
            raise AudioFileError(f"{self.name}: no such file") from None
        except OSError as e:
            raise AudioFileError(f"{self.name}: cannot read: {e.strerror or e}") from None
        try:
            self.fmt, self.data_offset, self.data_size = self._read_header()
        except BaseException:
            self._file.close()
            raise

    @property
    def rate(self) -> int:
        return self.fmt.rate

    @property
    def duration(self) -> float:
        """Seconds of audio in the file."""
        return self.data_size / self.fmt.frame_bytes / self.fmt.rate

    def _read(self, n: int) -> bytes:
        try:
            return self._file.read(n)
        except OSError as e:
            raise AudioFileError(f"{self.name}: cannot read: {e.strerror or e}") from None

    def _read_header(self) -> tuple[WavFormat, int, int]:
        name = self.name
        file_size = os.fstat(self._file.fileno()).st_size
        head = self._read(12)
        if not head:
            raise AudioFileError(f"{name}: empty file")
        if head[:4] in (b"RF64", b"BW64"):
            raise AudioFileError(f"{name}: {head[:4].decode()} (64-bit WAV) files are not supported")
        if head[:4] == b"RIFX":
            raise AudioFileError(f"{name}: big-endian RIFX files are not supported")
        if head[:4] != b"RIFF":
            raise AudioFileError(f"{name}: not a RIFF/WAVE file (starts with {head[:4]!r})")
        if len(head) < 12:
            raise AudioFileError(f"{name}: RIFF header truncated ({len(head)} bytes, expected 12)")
        if head[8:12] != b"WAVE":
            raise AudioFileError(f"{name}: not a RIFF/WAVE file (RIFF form type {head[8:12]!r})")
        fmt = None
        pos = 12  # the RIFF size field is ignored: streaming writers leave it wrong
        while pos + 8 <= file_size:
            self._file.seek(pos)
            cid, size = struct.unpack("<4sI", self._read(8))
            pos += 8
            if cid == b"fmt ":
                if pos + size > file_size:
                    raise AudioFileError(f"{name}: fmt chunk truncated: header says {size} bytes, "
                                         f"file has {file_size - pos}")
                fmt = parse_fmt(name, self._read(size))
            elif cid == b"data":
                if fmt is None:
                    raise AudioFileError(f"{name}: data chunk before any fmt chunk")
                return fmt, pos, self._data_size(size, file_size - pos, fmt)
            pos += size + (size & 1)  # chunks are padded to an even length
        raise AudioFileError(f"{name}: no {'data' if fmt else 'fmt'} chunk")

    def _data_size(self, size: int, rest: int, fmt: WavFormat) -> int:
        name, frame = self.name, fmt.frame_bytes
        if size in _UNKNOWN_SIZES:
            size = rest
        elif size > rest:
            if rest % frame:
                raise AudioFileError(f"{name}: data chunk truncated: header says {size} bytes, file has {rest}")
            log.warning("%s: data chunk truncated: header says %d bytes, file has %d; reading %d frames",
                        name, size, rest, rest // frame)
            size = rest
        if size % frame:
            log.warning("%s: dropping %d trailing bytes of a partial frame", name, size % frame)
            size -= size % frame
        return size

    def _decoded(self, raw: bytes) -> np.ndarray:
        bad = non_finite(raw, self.fmt)
        if bad:
            raise AudioFileError(f"{self.name}: {bad} of {len(raw) // self.fmt.width} float samples are NaN or "
                                 "infinite (a corrupt file)")
        return decode_frames(raw, self.fmt)

    def read_all(self) -> np.ndarray:
        """Every sample: mono float32 on the int16 scale, at the file's rate."""
        self._file.seek(self.data_offset)
        return self._decoded(self._read(self.data_size))

    def blocks(self, seconds: float = 1.0, rate: int = 16000):
        """Mono float32 blocks on the int16 scale, resampled to `rate` as they are read (soxr's
        streaming resampler: no seams at block edges)."""
        frames = max(1, int(self.fmt.rate * seconds))
        stream = None if self.fmt.rate == rate else soxr.ResampleStream(self.fmt.rate, rate, 1, dtype="float32",
                                                                        quality="HQ")
        self._file.seek(self.data_offset)
        left = self.data_size
        while left > 0:
            raw = self._read(min(left, frames * self.fmt.frame_bytes))
            if not raw:
                break
            left -= len(raw)
            samples = self._decoded(raw[: len(raw) - len(raw) % self.fmt.frame_bytes])
            yield samples if stream is None else stream.resample_chunk(samples, last=left <= 0)
        if stream is not None and left > 0:  # the file shrank under us: flush what the filter holds
            yield stream.resample_chunk(np.zeros(0, np.float32), last=True)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> WavFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a WAV file as (mono float32 samples on the int16 scale, sample rate).

    Multi-channel audio is downmixed by averaging the channels.
    """
    with WavFile(path) as wav:
        return wav.read_all(), wav.rate


def resample(samples: np.ndarray, from_rate: int, to_rate: int = 16000) -> np.ndarray:
    """Resample float32 samples with soxr (HQ); returns the input unchanged if rates match."""
    if from_rate == to_rate:
        return samples
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    return soxr.resample(np.asarray(samples, np.float32), from_rate, to_rate, quality="HQ")


def load_audio(path: str | os.PathLike, target_rate: int = 16000) -> np.ndarray:
    """Read a WAV file as mono float32 samples on the int16 scale at ``target_rate``."""
    samples, rate = read_wav(path)
    return resample(samples, rate, target_rate)
