"""`run --input FILE --fast`: a file's utterances decoded in batches, as events.

The machinery of `transcribe` (agent/offline): the file read a second at a time, cut by the same
VAD and segmenter, decoded in batches. No partials and no wall-clock latency: nothing happens in
real time. Each utterance gives speech_start, speech_end, final, emotion and language, in order.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from agent.audio.source import SourceStats
from agent.audio_file import AudioFile
from agent.events import Emitter, SpeechEnded, SpeechStarted
from agent.offline.batches import decode_in_batches
from agent.offline.segments import RATE, SegmentReader
from agent.pipeline.live import emit_final

log = logging.getLogger(__name__)


class OfflinePipeline:
    """The same face as LivePipeline (run, utterances, options, source.stats) for a file read flat out."""

    def __init__(self, path: str, segmenter, recognizer, emitter: Emitter, settings, offline, progress=None):
        self.path = path
        self.segmenter = segmenter
        self.recognizer = recognizer
        self.emitter = emitter
        self.settings = settings  # PipelineSettings: drain_timeout_s
        self.offline = offline  # OfflineSettings
        self.progress = progress
        self.options = None
        self.muted = False  # commands are taken, but a file read flat out has nothing to mute
        self.utterances = 0
        self.last_latency_ms = None
        self.source = _FileStats(path)

    def run(self, stop: threading.Event, on_started: Optional[Callable[[], None]] = None) -> bool:
        """Until the file is done or `stop` is set; True if every utterance read was decoded."""
        wav = AudioFile(self.path)
        self.source.state = "running"
        batch = self.offline.resolved_batch_size(self.recognizer.info["provider"])
        # stop (SIGTERM): read no further; what was read is still decoded, within drain_timeout_s
        reader = SegmentReader(wav, self.segmenter, queue_segments=max(8, 4 * batch), on_audio=self._audio_read,
                               stop=stop)
        if on_started is not None:
            on_started()
        deadline = None
        try:
            for decoded in decode_in_batches(self.recognizer, reader, batch_size=batch,
                                             max_batch_seconds=self.offline.max_batch_seconds,
                                             options=self.options, decoding=self._decoding):
                self._emit(decoded)
                if stop.is_set():
                    deadline = deadline or time.monotonic() + self.settings.drain_timeout_s
                    if time.monotonic() > deadline:
                        log.error("stopped with utterances still undecoded after %.1f s", self.settings.drain_timeout_s)
                        return False
        finally:
            reader.abandon()
            reader.join()
            wav.close()
            self.source.state = "finished"
        return True

    def _emit(self, decoded):
        segment, result = decoded.segment, decoded.result
        opened, closed = segment.opened, segment.closed
        uid = opened.utterance_id
        self.utterances += 1
        self.emitter.emit(SpeechStarted(uid, opened.start_sample / RATE, None, None, None))
        self.emitter.emit(SpeechEnded(uid, closed.end_sample / RATE, None, None, None, reason=closed.reason))
        timing = dict(audio_start=segment.start / RATE, audio_end=segment.end / RATE, audio_start_wall=None,
                      audio_end_wall=None, queue_ms=0.0, decode_ms=decoded.decode_ms)
        emit_final(self.emitter, uid, result, segment.start, timing, None, False)

    def _audio_read(self, samples: int):
        self.source.samples = samples
        if self.progress is not None:
            self.progress.audio_consumed()

    def _decoding(self):
        if self.progress is None:
            import contextlib

            return contextlib.nullcontext()
        return self.progress.decoding()


class _FileStats:
    def __init__(self, path: str):
        self.path = path
        self.state = "stopped"
        self.samples = 0

    def stats(self) -> SourceStats:
        return SourceStats(state=self.state, device=self.path, capture_rate=RATE, rate=RATE, overflows=0,
                           lost_samples=0, captured_samples=self.samples, reconnects=0)
