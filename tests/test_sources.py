"""Tests for agent.audio sources: files, raw PCM pipes, the reader-side resampler, and a real
PortAudio capture from an ALSA device that needs no hardware.

The microphone tests define an ALSA `file` PCM whose `infile` is a FIFO the test writes into, at
real-time pace, so audio goes through ALSA, PortAudio and sounddevice's real callback thread.
Unplugging is simulated by removing the device from the ALSA config and closing the FIFO.
"""
import io
import logging
import os
import sys
import threading
import time
import wave

import numpy as np
import pytest
import soxr

from agent.audio import RUNNING, WAITING_FOR_DEVICE, AudioSettings, FileSource, RingBuffer, StdinSource, open_source
from agent.audio.stdin_source import FifoSource
from agent.audio.blocks import BlockReader
from agent.audio_file import AudioFileError, load_audio
from agent.config_schema import build
from agent.errors import UnavailableError


def write_wav(path, samples, rate=16000, channels=1):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, "<i2").tobytes())
    return path


def drain(source, limit=10.0):
    """Every block until the source ends, with each block's arrival time."""
    blocks, t0 = [], time.monotonic()
    while not source.ended and time.monotonic() - t0 < limit:
        block = source.read(timeout=0.5)
        if block is not None:
            blocks.append((time.monotonic(), block))
    assert source.ended, "source did not end"
    return blocks


def assert_contiguous(blocks, size):
    pos = 0
    for i, block in enumerate(blocks):
        assert block.start == pos and not block.discontinuity
        assert len(block.samples) == size or i == len(blocks) - 1
        pos = block.end


def peak_hz(samples, rate=16000):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.argmax(spectrum) * rate / len(samples)


def tone(hz, seconds, rate, amplitude=8000.0):
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


# --- files ---------------------------------------------------------------------------------
def test_file_source_realtime_paces_blocks_like_a_microphone(tmp_path):
    rng = np.random.default_rng(0)
    path = write_wav(tmp_path / "two_seconds.wav", rng.integers(-20000, 20000, 32000))
    source = FileSource(path, realtime=True)
    t0 = time.monotonic()
    source.start()
    blocks = drain(source)
    elapsed = time.monotonic() - t0
    source.stop()
    assert 1.8 <= elapsed <= 3.0
    arrivals, blocks = [t - t0 for t, _ in blocks], [b for _, b in blocks]
    assert len(blocks) == 40
    assert_contiguous(blocks, 800)
    assert arrivals[9] >= 0.45  # no block arrives before a microphone could have recorded it
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), load_audio(path))
    assert source.stats().lost_samples == 0 and source.stats().captured_samples == 32000


def test_file_source_fast_mode_any_wav_nothing_lost_through_a_tiny_ring(tmp_path):
    """44.1 kHz stereo; a ring much smaller than the file: back-pressure, not overwrites."""
    left = tone(300, 1.3, 44100)
    stereo = np.stack([left, left], axis=1).ravel().astype(np.int16)
    path = write_wav(tmp_path / "stereo.wav", stereo, rate=44100, channels=2)
    source = FileSource(path, realtime=False, ring_seconds=0.1)
    t0 = time.monotonic()
    with source:
        blocks = [b for _, b in drain(source)]
    assert time.monotonic() - t0 < 1.0
    expected = load_audio(path)
    assert_contiguous(blocks, 800)
    assert sum(len(b.samples) for b in blocks) == len(expected) == 20800
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), expected)
    assert source.stats().lost_samples == 0
    assert source.read(timeout=0.01) is None  # ended: returns at once


def test_file_source_reports_a_bad_file_at_start(tmp_path):
    with pytest.raises(AudioFileError, match="no such file"):
        FileSource(tmp_path / "missing.wav").start()


def test_stop_ends_a_realtime_file_early(tmp_path):
    source = FileSource(write_wav(tmp_path / "a.wav", np.zeros(16000 * 5)), realtime=True)
    source.start()
    assert source.read(timeout=2) is not None
    source.stop()
    assert source.ended and source.state == "stopped"


# --- raw PCM on a pipe ---------------------------------------------------------------------
def test_stdin_source_reads_s16le_from_a_binary_stream():
    pcm = np.arange(-1000, 1500, dtype="<i2")
    with StdinSource(io.BytesIO(pcm.tobytes() + b"\x01")) as source:  # and half a sample
        blocks = [b for _, b in drain(source)]
    assert [len(b.samples) for b in blocks] == [800, 800, 800, 100]
    assert_contiguous(blocks, 800)
    assert np.concatenate([b.samples for b in blocks]).tolist() == pcm.tolist()


def test_stdin_source_from_a_real_pipe_with_samples_split_across_writes():
    pcm = (np.arange(8000) * 7 % 60000 - 30000).astype("<i2")
    data = pcm.tobytes()
    r, w = os.pipe()

    def producer():
        with os.fdopen(w, "wb", buffering=0) as out:
            for i in range(0, len(data), 333):  # odd sizes: samples straddle writes
                out.write(data[i:i + 333])
                time.sleep(0.0005)

    threading.Thread(target=producer).start()
    with os.fdopen(r, "rb") as stream, StdinSource(stream) as source:
        blocks = [b for _, b in drain(source)]
    assert_contiguous(blocks, 800)
    assert np.concatenate([b.samples for b in blocks]).tolist() == pcm.tolist()


def wav_bytes(samples, rate=16000, channels=1, streamed=True):
    """A WAV as a recorder writes it to a pipe: sizes unknown (0xFFFFFFFF) when `streamed`."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, "<i2").tobytes())
    data = bytearray(buf.getvalue())
    if streamed:
        data[4:8] = data[40:44] = b"\xff\xff\xff\xff"
    return bytes(data)


def test_a_wav_stream_on_stdin_is_read_at_its_own_rate_and_channels():
    """arecord's default output: a WAV header, then 48 kHz stereo; read as raw it would play 6x slow."""
    left = tone(440, 1.0, 48000)
    stereo = np.stack([left, left], axis=1).reshape(-1)
    with StdinSource(io.BytesIO(wav_bytes(stereo, rate=48000, channels=2))) as source:
        blocks = [b for _, b in drain(source)]
        assert "48000 Hz, 2 channels" in str(source.format) or source.format.rate == 48000
    samples = np.concatenate([b.samples for b in blocks])
    assert abs(len(samples) - 16000) < 200
    assert abs(peak_hz(samples[2000:14000]) - 440) < 5


def test_a_bad_wav_header_on_stdin_is_one_clear_error():
    with pytest.raises(AudioFileError, match=r"^stream: header says sample rate 1 Hz"):
        StdinSource(io.BytesIO(wav_bytes(np.zeros(100), rate=1))).start()


def test_closed_stdin_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(AudioFileError, match=r"^stdin: standard input is closed"):
        StdinSource().start()


def _write_fifo(path, data):
    with open(path, "wb") as out:
        out.write(data)


def test_a_fifo_is_read_again_after_each_writer(tmp_path):
    """A mic-less box's input: writers come and go; each one's audio follows after a gap."""
    path = tmp_path / "audio"
    os.mkfifo(path)
    first, second = np.arange(0, 3200, dtype="<i2"), np.arange(5000, 6600, dtype="<i2")
    source = open_source(AudioSettings(input=str(path)))
    assert isinstance(source, FifoSource)
    source.start()
    try:
        assert source.state == WAITING_FOR_DEVICE  # nobody writes yet: not a stalled pipeline
        got = []
        for data, want in ((first.tobytes(), len(first)), (wav_bytes(second, streamed=False), len(first) + len(second))):
            deadline = time.monotonic() + 5
            while source.state != WAITING_FOR_DEVICE and time.monotonic() < deadline:
                time.sleep(0.01)  # writers that overlap share one stream: the pipe has no EOF between them
            threading.Thread(target=_write_fifo, args=(path, data)).start()
            while sum(len(b.samples) for b in got) < want and time.monotonic() < deadline:
                block = source.read(timeout=0.2)
                if block is not None:
                    got.append(block)
        samples = np.concatenate([b.samples for b in got])
        assert samples.tolist() == first.tolist() + second.tolist()
        assert [b.discontinuity for b in got].count(True) == 1  # the second writer's first block
        assert next(b for b in got if b.discontinuity).start == len(first)
    finally:
        source.stop()
    assert source.state == "stopped"


def test_a_fifo_writer_with_a_bad_header_is_skipped_and_the_next_one_read(tmp_path, caplog):
    path = tmp_path / "audio"
    os.mkfifo(path)
    source = FifoSource(str(path))
    source.start()
    try:
        with caplog.at_level(logging.INFO, logger="agent.audio.stdin_source"):
            _write_fifo(path, wav_bytes(np.zeros(100), rate=1))
            deadline = time.monotonic() + 5
            while "waiting for the next writer" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)  # a writer that overlaps the bad one would share its stream
            good = np.arange(1, 1601, dtype="<i2")
            threading.Thread(target=_write_fifo, args=(path, good.tobytes())).start()
            block = source.read(timeout=5)
        assert block is not None and block.samples[:5].tolist() == [1, 2, 3, 4, 5]
        assert "header says sample rate 1 Hz" in caplog.text and "waiting for the next writer" in caplog.text
    finally:
        source.stop()


def test_stopping_a_fifo_nobody_writes_to_returns_at_once(tmp_path):
    path = tmp_path / "audio"
    os.mkfifo(path)
    source = FifoSource(str(path))
    source.start()
    time.sleep(0.2)
    started = time.monotonic()
    source.stop()
    source._thread.join(2)
    assert not source._thread.is_alive() and time.monotonic() - started < 2


# --- the reader side shared by every source ------------------------------------------------
def test_reader_resamples_48k_to_16k_keeping_the_frequency():
    """The microphone's path: callback-sized int16 chunks at 48 kHz in, 16 kHz blocks out."""
    signal = tone(1000, 1.0, 48000).astype(np.int16)
    ring = RingBuffer(48000)
    reader = BlockReader(ring, 48000, 800)
    for i in range(0, len(signal), 2400):  # what the PortAudio callback does, 50 ms at a time
        ring.write(signal[i:i + 2400])
    ring.close()
    blocks = []
    while not reader.ended:
        blocks.append(reader.read(timeout=1))
    out = np.concatenate([b.samples for b in blocks])
    assert_contiguous(blocks, 800)
    assert len(out) == 16000
    assert abs(peak_hz(out) - 1000) < 2
    # Identical to resampling the whole signal at once: filter state carried across chunks.
    np.testing.assert_allclose(out, soxr.resample(signal.astype(np.float32), 48000, 16000, quality="HQ"), atol=1e-2)
    assert np.sqrt(np.mean(out[200:-200] ** 2)) == pytest.approx(8000 / np.sqrt(2), rel=0.01)


def test_reader_removes_content_above_8khz():
    """A 12 kHz tone (above 16 kHz's Nyquist) must be filtered out, not folded down to 4 kHz."""
    ring = RingBuffer(48000)
    ring.write(tone(12000, 0.5, 48000))
    ring.close()
    reader = BlockReader(ring, 48000, 800)
    out = np.concatenate([reader.read(timeout=1).samples for _ in range(10)])
    assert np.sqrt(np.mean(out[200:-200] ** 2)) < 8000 * 0.001


def test_reader_marks_gaps_and_never_glues_across_them():
    ring = RingBuffer(2000)
    reader = BlockReader(ring, 16000, 800)
    ring.write(np.arange(1000, dtype=np.float32))
    first = reader.read(timeout=0)
    assert (first.start, len(first.samples), first.discontinuity) == (0, 800, False)
    ring.write(np.arange(1000, 4000, dtype=np.float32))  # overwrites 200 unread + 1000 more
    short = reader.read(timeout=0)
    assert ring.lost_samples == 1200
    # Samples 800..999 were lost, so the next block starts after the gap, flagged, at the right time.
    assert (short.start, short.discontinuity) == (2000, True)
    assert short.samples[0] == 2000 and len(short.samples) == 800
    assert reader.read(timeout=0).start == 2800
    assert reader.read(timeout=0) is None  # 400 samples wait for the rest of their block...
    ring.close()
    last = reader.read(timeout=0)  # ...until the stream ends: then they come as a short block
    assert (last.start, last.samples.tolist()) == (3600, list(range(3600, 4000)))
    assert reader.ended and reader.read(timeout=0) is None


def test_reader_gap_with_resampling_flushes_the_filter_and_restarts_at_the_new_position():
    ring = RingBuffer(4800)
    reader = BlockReader(ring, 48000, 800)
    ring.write(tone(500, 0.1, 48000))  # 4800 samples = 1600 at 16 kHz
    blocks = [reader.read(timeout=0), reader.read(timeout=0)]
    assert blocks[1] is None  # the resampler holds back its filter delay until more input comes
    ring.write(tone(500, 0.3, 48000))  # more than the ring holds: the oldest 9600 are lost
    blocks = [blocks[0], reader.read(timeout=0), reader.read(timeout=0)]
    # Before the gap: all 1600 samples, the filter's tail flushed out; after it: flagged, at 16 kHz
    # position 14400 / 3.
    assert [(b.start, len(b.samples), b.discontinuity) for b in blocks] == [
        (0, 800, False), (800, 800, False), (4800, 800, True)]


# --- settings and the factory --------------------------------------------------------------
def test_audio_settings_defaults_and_checks():
    problems = []
    s = build(AudioSettings, {"input": "-", "block_ms": 20, "reconnect_min_s": 5.0, "reconnect_max_s": 1.0},
              problems=problems)
    assert s.input == "-" and s.block_ms == 20 and AudioSettings().device == "default"
    assert any("reconnect_max_s" in p for p in problems)
    build(AudioSettings, {"block_ms": 5}, problems=problems)
    assert any("block_ms" in p and "out of range" in p for p in problems)


def test_open_source_picks_by_input(tmp_path):
    assert isinstance(open_source(AudioSettings(input="-")), StdinSource)
    file_source = open_source(AudioSettings(input=str(tmp_path / "x.wav"), realtime=False))
    assert isinstance(file_source, FileSource) and not file_source.realtime
    mic = open_source(AudioSettings(input="mic", device="USB", capture_rate=48000))
    assert type(mic).__name__ == "MicSource" and mic.device == "USB" and mic.requested_rate == 48000


# --- a real PortAudio capture, through ALSA, with no sound card ----------------------------
class FakeAlsaMic:
    """An ALSA capture PCM named NAME: `plug` -> `file` (infile = a FIFO we feed) -> `null`.

    ALSA's `null` PCM has no clock, so the pace is the feeder's: it writes one block at a time on
    a wall-clock schedule, each write atomic (under PIPE_BUF) and the size PortAudio reads, so
    the file plugin never sees half a block. With nothing queued it writes `FILL` (a quiet live
    room); paused, it writes nothing, which looks to PortAudio like a hung device.
    """

    NAME = "sttagent_test_mic"
    FILL = 3

    def __init__(self, tmp_path, rate=16000, block_ms=50):
        self.rate, self.frames = rate, rate * block_ms // 1000
        self.conf, self.fifo = tmp_path / "asound.conf", tmp_path / "mic.fifo"
        os.mkfifo(self.fifo)
        self._write_conf(present=False)
        self._fd = None
        self._queue = np.zeros(0, "<i2")
        self.paused = True
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _write_conf(self, present):
        text = "</usr/share/alsa/alsa.conf>\n"
        if present:
            text += (f'pcm.{self.NAME} {{ type plug; slave.pcm {{ type file; slave.pcm "null"; '
                     f'file "/dev/null"; infile "{self.fifo}"; format "raw" }} }}\n')
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.conf)

    def plug(self):
        # The FIFO must have a writer before ALSA opens it (PortAudio probes devices on init).
        with self._lock:
            self._fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        self._write_conf(present=True)

    def unplug(self):
        self._write_conf(present=False)
        with self._lock:
            os.close(self._fd)  # a reader blocked on the FIFO now sees end of file
            self._fd = None

    def play(self, samples):
        with self._lock:
            self._queue = np.concatenate([self._queue, np.asarray(samples, "<i2")])
            self.paused = False

    def close(self):
        self._closing = True
        self._thread.join()
        if self._fd is not None:
            self.unplug()

    def _feed(self):
        next_t = time.monotonic()
        while not self._closing:
            with self._lock:
                if self._fd is None or self.paused:
                    chunk = None
                else:
                    chunk, rest = self._queue[:self.frames], self._queue[self.frames:]
                    chunk = np.concatenate([chunk, np.full(self.frames - len(chunk), self.FILL, "<i2")])
                    try:
                        os.write(self._fd, chunk.tobytes())
                        self._queue = rest
                    except BlockingIOError:
                        pass  # nobody reading yet; try this chunk again next time
            if chunk is None:
                time.sleep(0.01)
                next_t = time.monotonic()
                continue
            next_t += self.frames / self.rate
            time.sleep(max(0.0, next_t - time.monotonic()))


@pytest.fixture
def fake_mic(tmp_path, monkeypatch):
    from agent.audio import devices

    if sys.platform != "linux" or not os.path.exists("/usr/share/alsa/alsa.conf"):
        pytest.skip("needs ALSA (Linux) for a capture device without hardware")
    try:
        devices.portaudio()
    except UnavailableError as exc:
        pytest.skip(f"PortAudio unavailable: {exc}")
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(tmp_path / "asound.conf"))
    mics = []

    def make(**kw):
        mics.append(FakeAlsaMic(tmp_path, **kw))
        return mics[-1]

    yield make
    for m in mics:
        m.close()
    monkeypatch.delenv("ALSA_CONFIG_PATH")
    devices.refresh_devices()  # forget the test device: PortAudio re-reads the system config


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def read_samples(source, n, timeout=5.0):
    blocks, got, deadline = [], 0, time.monotonic() + timeout
    while got < n and time.monotonic() < deadline:
        block = source.read(timeout=0.5)
        if block is not None:
            blocks.append(block)
            got += len(block.samples)
    assert got >= n, f"only {got} of {n} samples arrived"
    return blocks


def test_mic_captures_known_audio_through_portaudio(fake_mic):
    from agent.audio.mic import MicSource

    fake = fake_mic(rate=16000, block_ms=50)
    fake.plug()
    signal = (np.arange(8000) % 2000 - 1000) * 11  # never FILL, so misplaced filler would show
    mic = MicSource("STTAGENT_TEST")  # a case-insensitive part of the name
    mic.start()
    try:
        assert wait_for(lambda: mic.state == RUNNING), mic.state
        fake.play(signal)
        blocks = read_samples(mic, len(signal))
        stats = mic.stats()
    finally:
        mic.stop()  # while the fake still feeds: PortAudio cannot stop a read blocked on a FIFO
    assert_contiguous(blocks, 800)
    assert all(b.samples.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks])[:len(signal)], signal)
    assert (stats.device, stats.capture_rate, stats.rate, stats.lost_samples) == (FakeAlsaMic.NAME, 16000, 16000, 0)
    assert mic.state == "stopped"


def test_mic_at_48k_is_resampled_on_the_reader_side(fake_mic):
    from agent.audio.mic import MicSource

    fake = fake_mic(rate=48000, block_ms=20)  # 960 frames: one write stays under PIPE_BUF
    fake.plug()
    signal = tone(1000, 0.6, 48000).astype(np.int16)
    mic = MicSource(FakeAlsaMic.NAME, capture_rate=48000, block_ms=20)
    mic.start()
    try:
        assert wait_for(lambda: mic.state == RUNNING), mic.state
        fake.play(signal)
        blocks = read_samples(mic, 9600)
    finally:
        mic.stop()
    assert mic.stats().capture_rate == 48000
    assert_contiguous(blocks, 320)
    out = np.concatenate([b.samples for b in blocks])[:9600]
    assert abs(peak_hz(out) - 1000) < 3
    expected = soxr.resample(signal.astype(np.float32), 48000, 16000, quality="HQ")
    np.testing.assert_allclose(out[:9000], expected[:9000], atol=1.0)  # the tail differs: filler follows


def test_mic_waits_for_a_missing_device_logs_once_and_survives_unplug_and_replug(fake_mic, caplog):
    from agent.audio.mic import MicSource

    caplog.set_level(logging.DEBUG, logger="agent.audio")
    fake = fake_mic(rate=16000, block_ms=50)
    mic = MicSource(FakeAlsaMic.NAME, reconnect_min_s=0.02, reconnect_max_s=0.05, stall_seconds=0.3)
    mic.start()
    try:
        # 1. Not there: waiting, retried with backoff, logged once.
        assert wait_for(lambda: mic.state == WAITING_FOR_DEVICE)
        assert wait_for(lambda: sum("retry in" in r.getMessage() for r in caplog.records) >= 4)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "no input device matches" in warnings[0].getMessage()
        assert mic.read(timeout=0.05) is None

        # 2. Plugged in: found without a restart.
        fake.plug()
        assert wait_for(lambda: mic.state == RUNNING), mic.state
        fake.play(np.full(1600, 100))
        first = read_samples(mic, 1600)
        assert first[0].start == 0 and first[0].samples[0] == 100

        # 3. It stops delivering (a hung or vanished device), then disappears.
        fake.paused = True
        assert wait_for(lambda: mic.state == WAITING_FOR_DEVICE, timeout=3)
        assert "no audio for" in [r for r in caplog.records if r.levelno == logging.WARNING][-1].getMessage()
        fake.unplug()
        time.sleep(0.15)
        lost_at = time.monotonic()
        while (block := mic.read(timeout=0.05)) is not None:
            first.append(block)  # what was captured before the loss is still delivered
        assert mic.state == WAITING_FOR_DEVICE

        # 4. Back again: resumes on its own; the gap is flagged and skipped in the timeline.
        fake.plug()
        assert wait_for(lambda: mic.state == RUNNING), mic.state
        fake.play(np.full(800, 200))
        block = read_samples(mic, 800)[0]
        assert mic.stats().reconnects == 1
    finally:
        mic.stop()
    assert block.discontinuity
    assert block.start >= first[-1].end + 0.1 * 16000  # the time away counts in stream positions
    assert block.start <= first[-1].end + (time.monotonic() - lost_at + 1.0) * 16000
    changes = [r.getMessage() for r in caplog.records if "audio source" in r.getMessage()]
    assert [c.split(": ")[1].split(" ")[0] for c in changes] == [
        "waiting_for_device", "running", "waiting_for_device", "running", "stopped"]
