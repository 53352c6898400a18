"""Read audio files into mono float32 samples for the recognizer.

libsndfile (bundled in the soundfile wheel, aarch64 too) reads the containers and codecs: WAV in
every encoding users meet (8-32-bit int, 32/64-bit float, mu-law, A-law, ADPCM, EXTENSIBLE, RF64,
big-endian RIFX), FLAC, Ogg Vorbis and Opus, MP3, AIFF, CAF, AU, W64. Samples come out on the
int16 scale (full scale = +/-32768) because the Kaldi fbank frontend expects that scale; the one
conversion is agent/audio/format.py's.

What is left of a RIFF parser here: the fmt chunk of the streaming stdin source (`parse_fmt`,
`decode_frames`), the words for a WAV header libsndfile refuses (it says "No 'data' chunk marker"
for a missing fmt chunk, a truncated one and a data chunk before it alike), and the data sizes
streaming writers leave unknown.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import stat
import struct
import sys
import tempfile
import uuid
from typing import NamedTuple, Optional

import numpy as np

from agent.audio.format import RATE, Resampler, frames_to_float, pcm_to_float
from agent.audio.format import non_finite as _non_finite
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
STDIN = "-"
# Bytes per sample of the encodings whose WAV data sizes are checked here; libsndfile gives every integer
# encoding as int32 (the sample in its top bits: exact on the int16 scale after / 65536), floats as they are.
_WIDTHS = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "ULAW": 1, "ALAW": 1,
           "FLOAT": 4, "DOUBLE": 8}
_DTYPES = {"FLOAT": "float32", "DOUBLE": "float64", **{k: "int32" for k in _WIDTHS if k not in ("FLOAT", "DOUBLE")}}
_FORMAT_NOT_RECOGNISED, _UNSUPPORTED_ENCODING = 1, 4  # libsndfile's error numbers (sf_error_number)


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


def accepted_formats() -> str:
    """The formats this libsndfile reads, in the words users know them by."""
    import soundfile

    mp3 = ", MP3" if "MP3" in soundfile.available_formats() else ""  # libsndfile >= 1.1
    return f"WAV (int, float, mu-law, A-law), FLAC, Ogg Vorbis/Opus{mp3}, AIFF, CAF, AU, W64, RF64"


def convert_hint(name: str) -> str:
    """The ffmpeg command that turns `name` into a WAV this reads, for error messages."""
    if name == "stdin":
        return "ffmpeg -i IN -ar 16000 -ac 1 -f wav - | stt-agent transcribe -"
    out = os.path.splitext(os.path.basename(name))[0] + ".16k.wav"  # never the input's own name, even for a .wav
    return f"ffmpeg -i {shlex.quote(name)} -ar 16000 -ac 1 {shlex.quote(out)}"


def _not_read(name: str, problem: str) -> AudioFileError:
    return AudioFileError(f"{name}: {problem}; formats read: {accepted_formats()}; convert others with: "
                          f"{convert_hint(name)}")


def parse_fmt(name: str, body: bytes) -> WavFormat:
    """The sample format a fmt chunk describes; AudioFileError for what the stdin source cannot take."""
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
    _check_rate(name, rate)
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


def _check_rate(name: str, rate: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioFileError(f"{name}: header says sample rate {rate} Hz (expected {MIN_RATE} to {MAX_RATE} Hz; "
                             f"speech needs at least {MIN_RATE} Hz)")


def decode_frames(buf, fmt: WavFormat) -> np.ndarray:
    """Whole interleaved frames -> mono float32 on the int16 scale (channels averaged); see pcm_to_float."""
    return pcm_to_float(buf, fmt.width, fmt.channels, floating=fmt.tag == _FLOAT)


def non_finite(buf, fmt: WavFormat) -> int:
    """How many float samples in `buf` are NaN or infinite (0 for integer PCM)."""
    return _non_finite(buf, fmt.width) if fmt.tag == _FLOAT else 0


class _Layout(NamedTuple):
    fmt: bytes  # the fmt chunk's body
    data_offset: int
    data_size: int  # as the header says


def _riff_layout(name: str, fd: int, file_size: int) -> _Layout:
    """Where a RIFF/WAVE file's fmt and data chunks are; AudioFileError naming what is broken. Read with
    pread: libsndfile reads the same descriptor and expects its offset where it left it."""
    head = os.pread(fd, 12, 0)
    if head[:4] != b"RIFF":
        raise AudioFileError(f"{name}: not a little-endian RIFF file (starts with {head[:4]!r})")
    if len(head) < 12:
        raise AudioFileError(f"{name}: RIFF header truncated ({len(head)} bytes, expected 12)")
    if head[8:12] != b"WAVE":
        raise _not_read(name, f"not a RIFF/WAVE file (RIFF form type {head[8:12]!r})")
    fmt = None
    pos = 12  # the RIFF size field is ignored: streaming writers leave it wrong
    while pos + 8 <= file_size:
        cid, size = struct.unpack("<4sI", os.pread(fd, 8, pos))
        pos += 8
        if cid == b"fmt ":
            if pos + size > file_size:
                raise AudioFileError(f"{name}: fmt chunk truncated: header says {size} bytes, "
                                     f"file has {file_size - pos}")
            fmt = os.pread(fd, size, pos)
        elif cid == b"data":
            if fmt is None:
                raise AudioFileError(f"{name}: data chunk before any fmt chunk")
            return _Layout(fmt, pos, size)
        pos += size + (size & 1)  # chunks are padded to an even length
    raise AudioFileError(f"{name}: no {'data' if fmt else 'fmt'} chunk")


def _explain_refused_wav(name: str, fd: int, file_size: int) -> None:
    """Raise what is wrong with a RIFF file libsndfile refused, in the words of its header (if it can tell)."""
    layout = _riff_layout(name, fd, file_size)
    body = layout.fmt
    if len(body) < 16:
        raise AudioFileError(f"{name}: fmt chunk too short ({len(body)} bytes, expected at least 16)")
    tag, channels, rate = struct.unpack_from("<HHI", body)
    if channels == 0:
        raise AudioFileError(f"{name}: header says 0 channels")
    _check_rate(name, rate)
    if tag not in (_PCM, _FLOAT, _EXTENSIBLE):
        raise _not_read(name, f"unsupported WAVE format tag 0x{tag:04X} (decoded: PCM, IEEE float, mu-law, A-law, "
                              "IMA/MS ADPCM, GSM 6.10, in plain or EXTENSIBLE headers)")
    parse_fmt(name, body)  # the widths and subformats no decoder takes


class AudioFile:
    """An open audio file: its rate, length and samples, read all at once (`read_all`) or a block at a
    time at 16 kHz (`blocks`): a long recording is never held whole in memory (a 2-hour 16 kHz file is
    230 MB as int16, 460 MB as float32). `-` is standard input; it and any other pipe are copied to a
    temporary file first (libsndfile seeks in FLAC and Ogg: a FLAC read from a pipe lost sync)."""

    def __init__(self, path: str | os.PathLike):
        import soundfile

        self.path = os.fspath(path)
        self.name = "stdin" if self.path == STDIN else self.path
        self._raw = self._open()
        self._sf = None
        try:
            size = os.fstat(self._raw.fileno()).st_size
            if size == 0:
                raise AudioFileError(f"{self.name}: empty file" if self.path != STDIN else
                                     "stdin: nothing was piped in (e.g. `stt-agent transcribe - < talk.flac`)")
            self._raw.seek(0)
            try:
                self._sf = soundfile.SoundFile(self._raw.fileno(), closefd=False)
            except soundfile.LibsndfileError as exc:
                raise self._refused(exc, size) from None
            _check_rate(self.name, self._sf.samplerate)
            if self._sf.format in ("WAV", "WAVEX"):
                self._check_wav_sizes(size)
        except BaseException:
            self.close()
            raise
        self.rate = self._sf.samplerate
        self.channels = self._sf.channels
        self.format, self.subtype = self._sf.format, self._sf.subtype
        self._dtype = _DTYPES.get(self.subtype, "float32")  # lossy and ADPCM codecs decode to float
        self._frames_read = 0

    def _open(self):
        if self.path == STDIN:
            return _spool_stdin()
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed by close() / the context manager
            if stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return f
        except FileNotFoundError:
            raise AudioFileError(f"{self.name}: no such file") from None
        except OSError as e:
            raise AudioFileError(f"{self.name}: cannot read: {e.strerror or e}") from None
        with f:  # a pipe: `transcribe <(ffmpeg ...)` names /dev/fd/63
            return _spool(f, self.name)

    def _refused(self, exc, size: int) -> AudioFileError:
        head = os.pread(self._raw.fileno(), 12, 0)
        if head[:4] == b"RIFF":
            _explain_refused_wav(self.name, self._raw.fileno(), size)  # raises where the header says what is wrong
        if exc.code == _FORMAT_NOT_RECOGNISED:
            return _not_read(self.name, f"not an audio format stt-agent reads (the file starts with {head[:4]!r})")
        if exc.code == _UNSUPPORTED_ENCODING:
            return _not_read(self.name, "an encoding libsndfile cannot decode")
        return AudioFileError(f"{self.name}: cannot read it as audio: {exc.error_string}")

    def _check_wav_sizes(self, file_size: int) -> None:
        """The data size a WAV header gives, against the file: streaming writers leave it 0 or 0xFFFFFFFF,
        and a cut download is shorter than it says."""
        width = _WIDTHS.get(self._sf.subtype)
        if width is None:
            return  # ADPCM and GSM: blocks of many samples, not frames of one
        try:
            layout = _riff_layout(self.name, self._raw.fileno(), file_size)
        except AudioFileError:
            return  # big-endian RIFX, or a layout libsndfile reads and this walk does not: its reading stands
        name, frame, size = self.name, width * self._sf.channels, layout.data_size
        rest = file_size - layout.data_offset
        if size in _UNKNOWN_SIZES:
            if size == 0 and rest >= frame:  # libsndfile reads a 0 as no samples at all
                self._sf.close()
                self._sf = _raw_from(self._raw, layout.data_offset, self._sf)
            size = rest
        elif size > rest:
            if rest % frame:
                raise AudioFileError(f"{name}: data chunk truncated: header says {size} bytes, file has {rest}")
            log.warning("%s: data chunk truncated: header says %d bytes, file has %d; reading %d frames",
                        name, size, rest, rest // frame)
            size = rest
        if size % frame:
            log.warning("%s: dropping %d trailing bytes of a partial frame", name, size % frame)

    @property
    def duration(self) -> float:
        """Seconds of audio in the file (as its header says; MP3's is counted by libsndfile)."""
        return self._sf.frames / self.rate

    def _decode(self, frames: int) -> Optional[np.ndarray]:
        """The next `frames` frames as libsndfile decodes them, (frames, channels); None at the end."""
        import soundfile

        try:
            data = self._sf.read(frames, dtype=self._dtype, always_2d=True)
        except soundfile.LibsndfileError as exc:
            raise AudioFileError(f"{self.name}: cannot decode the audio after {self._frames_read / self.rate:.1f} s: "
                                 f"{exc.error_string}") from None
        except OSError as e:
            raise AudioFileError(f"{self.name}: cannot read: {e.strerror or e}") from None
        self._frames_read += len(data)
        return data if len(data) else None

    def _non_finite(self, data: np.ndarray) -> int:
        return _non_finite(data, data.itemsize) if self.subtype in ("FLOAT", "DOUBLE") else 0

    def _corrupt(self, bad: int, total: int) -> AudioFileError:
        return AudioFileError(f"{self.name}: {bad} of {total} float samples are NaN or infinite (a corrupt file)")

    def read_all(self) -> np.ndarray:
        """Every sample: mono float32 on the int16 scale, at the file's rate."""
        parts, bad, total = [], 0, 0
        while (data := self._decode(10 * self.rate)) is not None:
            bad, total = bad + self._non_finite(data), total + data.size
            parts.append(frames_to_float(data))
        if bad:
            raise self._corrupt(bad, total)
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def blocks(self, seconds: float = 1.0):
        """Mono float32 blocks on the int16 scale at 16 kHz, `seconds` of the file at a time, resampled
        as they are read (the Resampler keeps its filter across blocks: no seams at block edges)."""
        frames = max(1, int(self.rate * seconds))
        resample = Resampler(self.rate)
        while (data := self._decode(frames)) is not None:
            bad = self._non_finite(data)
            if bad:
                raise self._corrupt(bad, data.size)
            out = resample(frames_to_float(data))
            if len(out):
                yield out
        tail = resample.flush()
        if len(tail):
            yield tail

    def close(self) -> None:
        if self._sf is not None:
            self._sf.close()
        self._raw.close()

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _From:
    """A file seen from `offset` on, for libsndfile to read a WAV's data chunk as raw samples."""

    def __init__(self, f, offset: int):
        self._f, self._offset = f, offset
        f.seek(offset)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos + self._offset if whence == 0 else pos, whence) - self._offset

    def tell(self) -> int:
        return self._f.tell() - self._offset

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)


def _raw_from(f, offset: int, like):
    import soundfile

    return soundfile.SoundFile(_From(f, offset), format="RAW", samplerate=like.samplerate, channels=like.channels,
                               subtype=like.subtype, endian="LITTLE")


def _spool_stdin():
    if sys.stdin is None or sys.stdin.closed:
        raise AudioFileError("stdin: standard input is closed (transcribe - reads an audio file piped in)")
    if sys.stdin.isatty():
        raise AudioFileError("stdin: standard input is a terminal, not audio: pipe a file in "
                             "(e.g. `stt-agent transcribe - < talk.flac`)")
    return _spool(sys.stdin.buffer, "stdin")


def _spool(src, name: str):
    """A pipe's bytes, whole, in an unnamed temporary file (on disk: bounded memory for hours of audio)."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the AudioFile
    try:
        shutil.copyfileobj(src, spool, 1 << 20)
        spool.flush()
    except OSError as e:
        spool.close()
        raise AudioFileError(f"{name}: cannot buffer it in {tempfile.gettempdir()}: {e.strerror or e}") from None
    return spool


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read an audio file as (mono float32 samples on the int16 scale, sample rate).

    Multi-channel audio is downmixed by averaging the channels.
    """
    with AudioFile(path) as audio:
        return audio.read_all(), audio.rate


def resample(samples: np.ndarray, from_rate: int, to_rate: int = RATE) -> np.ndarray:
    """Resample float32 samples with soxr (HQ); returns the input unchanged if rates match."""
    if from_rate == to_rate:
        return samples
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    import soxr

    return soxr.resample(np.asarray(samples, np.float32), from_rate, to_rate, quality="HQ")


def load_audio(path: str | os.PathLike, target_rate: int = RATE) -> np.ndarray:
    """Read an audio file as mono float32 samples on the int16 scale at ``target_rate``."""
    samples, rate = read_wav(path)
    return resample(samples, rate, target_rate)
