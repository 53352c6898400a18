"""Tests for agent.audio_file: WAV files are built byte by byte here, independent of the reader; FLAC,
Ogg and MP3 files are written by soundfile (libsndfile) itself, from samples the test knows."""
import logging
import struct
import uuid

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.audio_file import AudioFile, AudioFileError, load_audio, read_wav, resample

PCM, FLOAT, ALAW, MULAW, MP3, EXTENSIBLE = 0x0001, 0x0003, 0x0006, 0x0007, 0x0055, 0xFFFE
GSM = 0x0031


def subformat_guid(tag):
    """KSDATAFORMAT_SUBTYPE_* GUID as stored in the file (little-endian fields)."""
    return uuid.UUID(f"{tag:08x}-0000-0010-8000-00aa00389b71").bytes_le


def chunk(cid, body):
    return cid + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def fmt_chunk(tag=PCM, channels=1, rate=16000, bits=16, sub=None):
    block = channels * ((bits + 7) // 8)
    body = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    if tag == EXTENSIBLE:
        body += struct.pack("<HHI", 22, bits, (1 << channels) - 1) + subformat_guid(sub)
    elif tag != PCM:
        body += struct.pack("<H", 0)  # cbSize
    return chunk(b"fmt ", body)


def riff(*chunks, riff_size=None):
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def wav(payload, before=(), **fmt):
    return riff(fmt_chunk(**fmt), *before, chunk(b"data", payload))


@pytest.fixture
def write(tmp_path):
    def write(data, name="clip.wav"):
        path = tmp_path / name
        path.write_bytes(data)
        return path
    return write


def i16(values):
    return np.asarray(values, "<i2").tobytes()


def i24(values):
    return b"".join(struct.pack("<i", v)[:3] for v in values)


# --- sample formats and their scale -------------------------------------------------------

SCALE_CASES = {
    "u8": (bytes([0, 1, 128, 200, 255]), dict(bits=8), [-32768, -32512, 0, 18432, 32512]),
    "s16": (i16([-32768, -1, 0, 1, 32767]), dict(bits=16), [-32768, -1, 0, 1, 32767]),
    "s24": (i24([-8388608, -1, 0, 256, 8388607]), dict(bits=24),
            [-32768, -1 / 256, 0, 1, 8388607 / 256]),
    "s32": (np.array([-2**31, -65536, 0, 65536, 32768, 2**31 - 65536], "<i4").tobytes(),
            dict(bits=32), [-32768, -1, 0, 1, 0.5, 32767]),
    "f32": (np.array([-1.0, -0.5, 0, 1 / 32768, 0.25, 1.0], "<f4").tobytes(),
            dict(tag=FLOAT, bits=32), [-32768, -16384, 0, 1, 8192, 32768]),
    "f64": (np.array([-1.0, -0.5, 0, 1 / 32768, 0.25, 1.0], "<f8").tobytes(),
            dict(tag=FLOAT, bits=64), [-32768, -16384, 0, 1, 8192, 32768]),
    "ext-s16": (i16([-32768, 5, 32767]), dict(tag=EXTENSIBLE, sub=PCM, bits=16), [-32768, 5, 32767]),
    "ext-s24": (i24([-8388608, 512, 8388607]), dict(tag=EXTENSIBLE, sub=PCM, bits=24),
                [-32768, 2, 8388607 / 256]),
    "ext-f32": (np.array([-1.0, 0.5, 2 / 32768], "<f4").tobytes(),
                dict(tag=EXTENSIBLE, sub=FLOAT, bits=32), [-32768, 16384, 2]),
    "ext-f64": (np.array([0.125, -1.0], "<f8").tobytes(),
                dict(tag=EXTENSIBLE, sub=FLOAT, bits=64), [4096, -32768]),
}


@pytest.mark.parametrize("case", SCALE_CASES)
def test_sample_scale_is_int16_range(write, case):
    payload, fmt, expected = SCALE_CASES[case]
    samples, rate = read_wav(write(wav(payload, rate=22050, **fmt)))
    assert rate == 22050
    assert samples.dtype == np.float32 and samples.ndim == 1
    np.testing.assert_array_equal(samples, np.array(expected, np.float32))


def test_path_may_be_str(write):
    samples, _ = read_wav(str(write(wav(i16([7, -7])))))
    np.testing.assert_array_equal(samples, [7, -7])


def test_stereo_is_averaged(write):
    frames = i16([100, 300, -200, 0, 32767, 32767])  # interleaved L R
    samples, _ = read_wav(write(wav(frames, channels=2)))
    np.testing.assert_array_equal(samples, [200, -100, 32767])


@pytest.mark.parametrize("fmt", [dict(bits=16), dict(bits=24), dict(tag=FLOAT, bits=32),
                                 dict(tag=EXTENSIBLE, sub=PCM, bits=16)])
def test_six_channels_are_averaged(write, fmt):
    frames = np.array([[0, 6, 12, 18, 24, 30], [-60, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 7]])
    if fmt.get("bits") == 24:
        payload = i24((frames.ravel() * 256).tolist())
    elif fmt.get("tag") == FLOAT:
        payload = (frames.ravel() / 32768).astype("<f4").tobytes()
    else:
        payload = i16(frames.ravel())
    samples, _ = read_wav(write(wav(payload, channels=6, **fmt)))
    np.testing.assert_allclose(samples, [15, -10, 2], rtol=0, atol=1e-5)


# --- resampling ---------------------------------------------------------------------------

def sine(rate, freq=440.0, seconds=1.0):
    t = np.arange(int(rate * seconds)) / rate
    return np.round(10000 * np.sin(2 * np.pi * freq * t)).astype("<i2")


def dominant_freq(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.argmax(spectrum) * rate / len(samples)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampled_to_16k_keeps_length_and_pitch(write, rate):
    tone = sine(rate)
    out = load_audio(write(wav(tone.tobytes(), rate=rate)))
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(tone) * 16000 / rate) <= 1
    assert abs(dominant_freq(out, 16000) - 440) <= 16000 / len(out)
    # amplitude survives (soxr HQ passband is flat at 440 Hz)
    assert 9500 < np.abs(out[len(out) // 4: -len(out) // 4]).max() < 10500


def test_16k_input_is_not_resampled(write):
    tone = sine(16000, seconds=0.1)
    np.testing.assert_array_equal(load_audio(write(wav(tone.tobytes()))), tone.astype(np.float32))


def test_resample_noop_returns_input():
    x = np.arange(10, dtype=np.float32)
    assert resample(x, 16000) is x
    assert resample(x, 8000, 8000) is x


def test_resample_custom_target_and_empty():
    assert len(resample(np.zeros(4410, np.float32), 44100, 8000)) == 800
    assert resample(np.zeros(0, np.float32), 44100).shape == (0,)
    with pytest.raises(ValueError):
        resample(np.zeros(4, np.float32), 0)


# --- chunk layout ---------------------------------------------------------------------------

def test_list_and_odd_sized_chunks_are_skipped(write):
    list_chunk = chunk(b"LIST", b"INFOISFT" + struct.pack("<I", 5) + b"Lavf\0")  # odd, padded
    junk = chunk(b"junk", b"abc")  # odd size: pad byte follows
    fact = chunk(b"fact", struct.pack("<I", 3))
    data = riff(chunk(b"JUNK", b"x" * 7), fmt_chunk(bits=8), list_chunk, junk, fact,
                chunk(b"data", bytes([0, 128, 255])),  # odd data chunk, padded
                chunk(b"LIST", b"INFOICMT" + struct.pack("<I", 2) + b"hi"))
    samples, rate = read_wav(write(data))
    assert rate == 16000
    np.testing.assert_array_equal(samples, [-32768, 0, 32512])


@pytest.mark.parametrize("size", [0, 0xFFFFFFFF])
def test_streaming_data_size_reads_rest_of_file(write, size):
    payload = i16(range(-50, 50))
    data = (riff(fmt_chunk(), riff_size=0xFFFFFFFF)
            + b"data" + struct.pack("<I", size) + payload)
    samples, _ = read_wav(write(data))
    np.testing.assert_array_equal(samples, np.arange(-50, 50))


def test_truncated_data_with_whole_frames_is_read_with_warning(write, caplog):
    payload = i16(range(500))
    data = riff(fmt_chunk()) + b"data" + struct.pack("<I", 320000) + payload
    with caplog.at_level(logging.WARNING, logger="agent.audio_file"):
        samples, _ = read_wav(write(data))
    np.testing.assert_array_equal(samples, np.arange(500))
    assert "truncated" in caplog.text and "320000" in caplog.text


def test_truncated_data_mid_frame_is_an_error(write):
    data = riff(fmt_chunk(channels=2)) + b"data" + struct.pack("<I", 320000) + b"\0" * 1002
    with pytest.raises(AudioFileError,
                       match=r"/clip\.wav: data chunk truncated: header says 320000 bytes, file has 1002"):
        read_wav(write(data))


def test_partial_trailing_frame_of_streamed_file_is_dropped(write, caplog):
    data = riff(fmt_chunk()) + b"data" + struct.pack("<I", 0xFFFFFFFF) + i16([1, 2, 3]) + b"\x01"
    with caplog.at_level(logging.WARNING, logger="agent.audio_file"):
        samples, _ = read_wav(write(data))
    np.testing.assert_array_equal(samples, [1, 2, 3])
    assert "partial frame" in caplog.text


def test_empty_data_chunk(write):
    samples, rate = read_wav(write(wav(b"", channels=2)))
    assert samples.shape == (0,) and samples.dtype == np.float32 and rate == 16000


# --- errors ---------------------------------------------------------------------------------

ERROR_CASES = {
    "empty": (b"", r"empty file"),
    "not-riff": (b"ID3\x03\0\0\0\0\0\0" + b"\xff" * 100,
                 r"not an audio format stt-agent reads \(the file starts with b'ID3\\x03'\); formats read: WAV"),
    "riff-avi": (b"RIFF\x04\0\0\0AVI ", r"not a RIFF/WAVE file \(RIFF form type b'AVI '\); formats read: WAV"),
    "mp3": (wav(b"\0" * 10, tag=MP3), r"unsupported WAVE format tag 0x0055 \(decoded: PCM, IEEE float, mu-law"),
    "ext-mp3": (wav(b"\0" * 10, tag=EXTENSIBLE, sub=MP3, bits=8),
                r"unsupported EXTENSIBLE subformat 00000055-0000-0010-8000-00aa00389b71"),
    "rf64": (b"RF64\xff\xff\xff\xffWAVEds64" + b"\0" * 40, r"cannot read it as audio: Error in RF64 file"),
    "no-data": (riff(fmt_chunk(), chunk(b"LIST", b"INFO")), r"no data chunk"),
    "no-fmt": (riff(chunk(b"LIST", b"INFO")), r"no fmt chunk"),
    "data-before-fmt": (riff(chunk(b"data", b"\0\0"), fmt_chunk()), r"data chunk before any fmt"),
    "riff-header-cut": (b"RIFF\x24\0", r"RIFF header truncated \(6 bytes"),
    "fmt-cut": (riff(fmt_chunk())[:30], r"fmt chunk truncated: header says 16 bytes, file has 10"),
    "fmt-short": (riff(chunk(b"fmt ", b"\x01\0\x01\0"), chunk(b"data", b"")), r"fmt chunk too short"),
    "zero-channels": (wav(b"", channels=0), r"header says 0 channels"),
    "zero-rate": (wav(b"\0\0", rate=0), r"header says sample rate 0 Hz \(expected 8000 to 768000 Hz"),
    "one-hertz": (wav(b"\0" * 20000, rate=1), r"header says sample rate 1 Hz \(expected 8000 to 768000 Hz; speech"),
    "nan-samples": (wav(np.array([0.5, np.nan, np.inf, -np.inf, 0.1], "<f4").tobytes(), tag=FLOAT, bits=32),
                    r"3 of 5 float samples are NaN or infinite \(a corrupt file\)"),
    "pcm-64": (wav(b"\0" * 16, bits=64), r"unsupported 64-bit PCM"),
    "float-16": (wav(b"\0" * 16, tag=FLOAT, bits=16), r"unsupported 16-bit IEEE float"),
    "rifx-cut": (b"RIFX\0\0\0\x24WAVE", r"cannot read it as audio: Error in WAV file"),
    "gsm-cut": (riff(fmt_chunk(tag=GSM, bits=0)), r"no data chunk"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_name_file_and_problem(write, case):
    data, pattern = ERROR_CASES[case]
    with pytest.raises(AudioFileError, match=r"^\S*/clip\.wav: " + pattern) as err:
        read_wav(write(data))
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(AudioFileError, match=r"/missing\.wav: no such file$"):
        load_audio(tmp_path / "missing.wav")


def test_directory_is_an_error(tmp_path):
    with pytest.raises(AudioFileError, match="cannot read"):
        read_wav(tmp_path)


# --- properties -----------------------------------------------------------------------------

HC = [HealthCheck.function_scoped_fixture]


@settings(max_examples=60, deadline=None, suppress_health_check=HC)
@given(st.lists(st.integers(-32768, 32767), max_size=3000))
def test_int16_round_trips_exactly(write, values):
    samples, rate = read_wav(write(wav(i16(values))))
    assert rate == 16000 and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, np.array(values, np.float32))
    assert load_audio(write(wav(i16(values)))).tolist() == [float(v) for v in values]


@settings(max_examples=40, deadline=None, suppress_health_check=HC)
@given(st.lists(st.integers(-2**23, 2**23 - 1), max_size=500))
def test_int24_is_exactly_value_over_256(write, values):
    samples, _ = read_wav(write(wav(i24(values), bits=24)))
    np.testing.assert_array_equal(samples, np.array(values, np.float64) / 256)


@settings(max_examples=40, deadline=None, suppress_health_check=HC)
@given(st.integers(1, 8), st.lists(st.integers(-32768, 32767), max_size=400))
def test_downmix_is_channel_mean(write, channels, values):
    values = values[: len(values) // channels * channels]
    samples, _ = read_wav(write(wav(i16(values), channels=channels)))
    expected = np.array(values, np.float64).reshape(-1, channels).mean(axis=1)
    np.testing.assert_allclose(samples, expected, rtol=0, atol=1e-2)


def test_float_samples_beyond_full_scale_are_clipped(write):
    samples, _ = read_wav(write(wav(np.array([2.0, -1e30, 0.5], "<f4").tobytes(), tag=FLOAT, bits=32)))
    np.testing.assert_array_equal(samples, [32768, -32768, 16384])


# --- formats beyond PCM WAV -----------------------------------------------------------------

G711 = {  # ITU-T G.711 decoding, from the standard's tables: code -> linear 16-bit
    MULAW: {0xFF: 0, 0x7F: 0, 0x80: 32124, 0x00: -32124, 0x8F: 16764},
    ALAW: {0xD5: 8, 0x55: -8, 0xAA: 32256, 0x2A: -32256},
}


@pytest.mark.parametrize("tag", [MULAW, ALAW], ids=["mu-law", "A-law"])
@pytest.mark.parametrize("extensible", [False, True], ids=["plain", "extensible"])
def test_g711_wav_is_decoded_exactly(write, tag, extensible):
    codes, linear = zip(*G711[tag].items())
    fmt = dict(tag=EXTENSIBLE, sub=tag) if extensible else dict(tag=tag)
    data = riff(fmt_chunk(bits=8, rate=8000, **fmt), chunk(b"fact", struct.pack("<I", len(codes))),
                chunk(b"data", bytes(codes)))
    samples, rate = read_wav(write(data))
    assert rate == 8000
    np.testing.assert_array_equal(samples, np.array(linear, np.float32))


def test_big_endian_rifx_is_read(write):
    body = (b"WAVE" + b"fmt " + struct.pack(">IHHIIHH", 16, PCM, 1, 16000, 32000, 2, 16)
            + b"data" + struct.pack(">I", 6) + np.array([100, -200, 300], ">i2").tobytes())
    samples, _ = read_wav(write(b"RIFX" + struct.pack(">I", len(body)) + body))
    np.testing.assert_array_equal(samples, [100, -200, 300])


@pytest.mark.parametrize("container", ["FLAC", "RF64", "W64", "AIFF", "CAF"])
def test_lossless_containers_are_read_exactly(tmp_path, container):
    values = np.random.default_rng(5).integers(-32768, 32768, (4000, 2)).astype(np.int16)
    path = tmp_path / f"clip.{container.lower()}"
    soundfile.write(path, values, 44100, format=container, subtype="PCM_16")
    samples, rate = read_wav(path)
    assert rate == 44100
    np.testing.assert_array_equal(samples, values.astype(np.float32).mean(axis=1))


def test_24_bit_flac_keeps_its_fraction_of_an_int16_step(tmp_path):
    values = np.random.default_rng(6).integers(-2**23, 2**23, 3000).astype(np.int32)
    path = tmp_path / "clip.flac"
    soundfile.write(path, values << 8, 16000, subtype="PCM_24")  # int32 written: its top 24 bits
    np.testing.assert_array_equal(read_wav(path)[0], (values / 256).astype(np.float32))


LOSSY = [("OGG", "VORBIS", 44100), ("OGG", "OPUS", 48000), ("MP3", "MPEG_LAYER_III", 44100),
         ("WAV", "ULAW", 8000), ("WAV", "ALAW", 22050), ("WAV", "IMA_ADPCM", 16000), ("WAV", "GSM610", 8000)]


@pytest.mark.parametrize("container,subtype,rate", LOSSY, ids=[s for _, s, _ in LOSSY])
def test_lossy_encodings_keep_pitch_level_and_length(tmp_path, container, subtype, rate):
    if container not in soundfile.available_formats():  # MP3 needs libsndfile >= 1.1
        pytest.skip(f"this libsndfile {soundfile.__libsndfile_version__} writes no {container}")
    t = np.arange(2 * rate) / rate
    path = tmp_path / f"tone.{container.lower()}"
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate, format=container, subtype=subtype)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 32000) <= 32000 * 0.02  # MP3 and Opus frames round the length up
    assert abs(dominant_freq(out, 16000) - 440) <= 16000 / len(out)
    level = np.sqrt(np.mean(out[4000:-4000] ** 2)) * np.sqrt(2)
    assert level == pytest.approx(0.3 * 32768, rel=0.05)


def test_blocks_are_16k_and_match_the_whole_file(tmp_path):
    t = np.arange(3 * 44100) / 44100
    path = tmp_path / "tone.ogg"
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), 44100, subtype="VORBIS")
    with AudioFile(path) as audio:
        assert (audio.rate, audio.format, audio.duration) == (44100, "OGG", 3.0)
        blocks = list(audio.blocks(1.0))
    assert all(len(b) <= 16000 * 1.05 for b in blocks)  # a second at a time (soxr holds a little back)
    np.testing.assert_allclose(np.concatenate(blocks), load_audio(path), atol=0.5)


def test_nan_further_in_stops_the_blocks_after_what_came_before(write):
    values = np.full(40000, 0.25, np.float32)
    values[20000] = np.nan
    with AudioFile(write(wav(values.tobytes(), tag=FLOAT, bits=32))) as audio:
        blocks = audio.blocks(1.0)
        np.testing.assert_array_equal(next(blocks), np.full(16000, 8192, np.float32))
        with pytest.raises(AudioFileError, match=r"/clip\.wav: 1 of 16000 float samples are NaN or infinite"):
            next(blocks)


def test_an_unknown_format_names_the_formats_read_and_the_conversion(write):
    path = write(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, name="photo.png")
    with pytest.raises(AudioFileError) as err:
        read_wav(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not an audio format stt-agent reads (the file starts with b'\\x89PNG')")
    assert "formats read: WAV (int, float, mu-law, A-law), FLAC, Ogg Vorbis/Opus" in message
    assert message.endswith(f"convert others with: ffmpeg -i {path} -ar 16000 -ac 1 photo.16k.wav")
    assert "\n" not in message


@pytest.mark.parametrize("container,pattern", [("FLAC", r"cannot decode the audio after \d+\.\d s: .*flac"),
                                               ("OGG", r"cannot read it as audio: .*malformed")])
def test_a_cut_compressed_file_is_an_error_naming_it(tmp_path, container, pattern):
    t = np.arange(2 * 16000) / 16000
    whole = tmp_path / f"whole.{container.lower()}"
    soundfile.write(whole, 0.3 * np.sin(2 * np.pi * 440 * t), 16000, format=container)
    cut = tmp_path / f"cut.{container.lower()}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(AudioFileError, match=rf"^{cut}: {pattern}") as err:
        read_wav(cut)
    assert "\n" not in str(err.value)


def test_a_named_pipe_is_read_like_the_file_it_carries(tmp_path):
    """`stt-agent transcribe <(ffmpeg ...)` names a pipe: FLAC needs seeking, so it is buffered first."""
    import os
    import threading

    values = np.random.default_rng(7).integers(-32768, 32768, 5000).astype(np.int16)
    flac = tmp_path / "clip.flac"
    soundfile.write(flac, values, 16000)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(flac.read_bytes()))
    writer.start()
    samples, rate = read_wav(fifo)
    writer.join()
    assert rate == 16000
    np.testing.assert_array_equal(samples, values.astype(np.float32))
