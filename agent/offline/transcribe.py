"""`stt-agent transcribe`: audio files of any length (or stdin), each to its outputs.

A file is read a second at a time, cut into utterances by the live pipeline's VAD and segmenter (on
a thread of its own), decoded in batches, and written out as it goes: memory does not grow with the
length of the file, and attention cost stays that of one utterance (a whole 9-minute file in one
pass took 291 s and 4.9 GB; a 2-hour one ran out of memory). That happens to every file whose output
is made of segments (subtitles, transcripts, segment lines: a 9.7 s file with two 1.5 s pauses was
one 9.7 s subtitle in one pass), and to every file longer than segmenter.max_utterance_s. Plain text
and JSON of a shorter file come from one pass over it, exactly as always.

Each stream carries one format: segment lines go to stdout unless it carries subtitles or a
transcript, then to stderr (`Outputs.segment_stream`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, TextIO

from agent.audio_file import STDIN, AudioFile, AudioFileError, resample
from agent.errors import AgentError
from agent.offline.batches import decode_in_batches
from agent.offline.segments import RATE, SegmentReader
from agent.offline.transcript import WRITERS, TimedText, segment_dict, whole


class OutputError(AgentError):
    """A file's result could not be written (e.g. the output directory is full); the other files go on."""


@dataclass
class Outputs:
    """What to write for each file, and where."""

    format: str = "text"  # text | json | srt | vtt | tsv | txt
    tokens: bool = False
    segments: bool = False  # a JSON line per segment as soon as it is decoded
    output_dir: Optional[Path] = None
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def segment_stream(self) -> Optional[TextIO]:
        """Where segment lines go: stdout, unless subtitles or a transcript go there (no --output-dir):
        then stderr, so that `| jq` and a subtitle player each read one format."""
        if not self.segments:
            return None
        return self.stderr if self.format in WRITERS and self.output_dir is None else self.stdout

    @property
    def json_lines(self) -> bool:
        """stdout carries JSON lines, so a file that fails gets a JSON line with its error there too."""
        return (self.format == "json" and self.output_dir is None) or self.segment_stream is self.stdout

    @property
    def per_segment(self) -> bool:
        """The output is made of segments, so every file is cut at its pauses, however short."""
        return self.segments or self.format in WRITERS

    def target(self, path: str) -> Optional[Path]:
        """The file `path`'s result is written to (None: stdout)."""
        if self.output_dir is None or self.format == "text":
            return None
        stem = "stdin" if path == STDIN else Path(path).stem
        return self.output_dir / f"{stem}.{self.format}"


class Progress:
    """Percent of the audio, speed and time left on stderr: one line rewritten in place on a terminal,
    a line every 5 s otherwise (a log file keeps them all)."""

    def __init__(self, stream: Optional[TextIO]):
        self._stream = stream
        self._tty = stream is not None and stream.isatty()
        self._interval = 0.5 if self._tty else 5.0
        self._shown = 0.0

    def update(self, name: str, done_s: float, total_s: float, started: float, force: bool = False):
        if self._stream is None:
            return
        now = time.monotonic()
        if not force and now - self._shown < self._interval:
            return
        self._shown = now
        elapsed = max(1e-6, now - started)
        speed = done_s / elapsed
        eta = (total_s - done_s) / speed if speed > 0 else 0.0
        pct = 100.0 * done_s / total_s if total_s else 100.0
        line = f"{name}: {pct:3.0f}% {done_s:.0f}/{total_s:.0f} s of audio, {speed:.1f}x real time, {eta:.0f} s left"
        self._stream.write(f"\r{line} " if self._tty else f"{line}\n")
        self._stream.flush()

    def done(self):
        if self._stream is not None and self._shown and self._tty:
            self._stream.write("\n")
            self._stream.flush()
        self._shown = 0.0


@dataclass
class FileResult:
    path: str
    whole: object  # Recognition of the whole file
    parts: List[TimedText]
    decode_ms: float
    segmented: bool


class Transcriber:
    """Transcribes files with one loaded recognizer; `load()` gives the recognizer (it may still be loading)."""

    def __init__(self, load: Callable[[], object], settings, outputs: Outputs, *, batch_size: int = 0,
                 progress: Optional[TextIO] = None):
        self._load = load
        self.settings = settings  # Settings: segmenter, vad, offline
        self.outputs = outputs
        self.batch_size = batch_size
        self.progress = Progress(progress)

    def transcribe(self, path: str) -> FileResult:
        """One file, written to its outputs; AudioFileError for a file that cannot be read, OutputError
        for a result that cannot be written."""
        started = time.perf_counter()
        with AudioFile(path) as audio:
            recognizer = self._load()
            if self.outputs.per_segment or audio.duration > self.settings.segmenter.max_utterance_s:
                parts = self._segmented(path, audio, recognizer)
                result_whole, segmented = whole(parts, audio.duration), True
            else:
                samples = resample(audio.read_all(), audio.rate, RATE)
                started = time.perf_counter()  # a short file's decode_ms is the model's time, as it always was
                result = recognizer.recognize(samples)
                parts = [TimedText(0.0, len(samples) / RATE, result)]
                result_whole, segmented = result, False
        record = FileResult(path, result_whole, parts, (time.perf_counter() - started) * 1000, segmented)
        self._write(record)
        return record

    def failed(self, path: str, exc: Exception) -> None:
        """Report a file that failed: a line on stderr, and a JSON line where stdout carries JSON lines."""
        self.progress.done()
        print(f"error: {exc}", file=self.outputs.stderr, flush=True)
        if self.outputs.json_lines:
            self.outputs.stdout.write(json.dumps({"file": path, "error": str(exc)}, ensure_ascii=False) + "\n")
            self.outputs.stdout.flush()

    def _segmented(self, path: str, wav: AudioFile, recognizer) -> List[TimedText]:
        from agent.listening import Segmenter, load_vad

        s = self.settings
        segmenter = Segmenter.from_settings(load_vad(s.vad), s.segmenter, s.vad)
        batch = self.batch_size or s.offline.resolved_batch_size(recognizer.info["provider"])
        reader = SegmentReader(wav, segmenter, queue_segments=max(8, 4 * batch))
        parts: List[TimedText] = []
        started = time.monotonic()
        name = os.path.basename(path)
        try:
            for decoded in decode_in_batches(recognizer, reader, batch_size=batch,
                                             max_batch_seconds=s.offline.max_batch_seconds):
                segment = decoded.segment
                part = TimedText(segment.start / RATE, segment.end / RATE, decoded.result)
                parts.append(part)
                self._stream_segment(path, part)
                self.progress.update(name, segment.end / RATE, wav.duration, started)
        finally:
            reader.abandon()
            reader.join()  # before the file closes under it
        self.progress.update(name, wav.duration, wav.duration, started, force=True)
        self.progress.done()
        return parts

    # ------------------------------------------------------------------ outputs
    def _stream_segment(self, path: str, part: TimedText):
        stream = self.outputs.segment_stream
        if stream is not None:
            line = json.dumps({"file": path, **segment_dict(part, self.outputs.tokens)}, ensure_ascii=False)
            stream.write(line + "\n")
            stream.flush()

    def _write(self, r: FileResult):
        out = self.outputs
        if out.format == "text":
            if not out.segments:  # with --segments stdout holds the segment lines only
                self._write_text(r)
            return
        if out.format == "json":
            body = {"file": r.path, **r.whole.to_dict(tokens=True), "decode_ms": round(r.decode_ms, 1),
                    "segments": [segment_dict(p, out.tokens) for p in r.parts]}
            text = json.dumps(body, ensure_ascii=False) + "\n"
        else:
            text = WRITERS[out.format](r.parts)
        target = out.target(r.path)
        if target is not None:
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, target)  # a reader never sees half a file
            except OSError as e:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                raise OutputError(f"{target}: cannot write: {e.strerror or e}") from None
        else:
            out.stdout.write(text)
            out.stdout.flush()

    def _write_text(self, r: FileResult):
        w = r.whole
        stdout = self.outputs.stdout
        stdout.write(f"{r.path}: [{w.language} {w.emotion} {w.event} conf={w.confidence:.2f} {r.decode_ms:.0f} ms] "
                     f"{w.text}\n")
        if self.outputs.tokens:
            for token in w.tokens:
                stdout.write(f"  {token.start:7.2f} {token.end:7.2f}  {token.prob:.2f}  {token.text}\n")
        stdout.flush()


__all__ = ["STDIN", "AudioFileError", "OutputError", "Outputs", "Transcriber"]
