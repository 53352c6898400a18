"""The microphone's (or a file's, or a pipe's) pull loop: audio blocks from a source into its Listener.

One pipeline thread reads the source and feeds the stream's `Listener` (agent/pipeline/listener.py),
which runs the VAD and segmenter and asks the shared decode worker for partials and finals. Every
event leaves through the stream's `Emitter` (agent/events.py): speech_start, partial, speech_end,
final, then emotion and language. Commands (mute, language) reach the Listener through this loop's
queue, applied between blocks on this thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Optional

from agent.events import Emitter
from agent.pipeline.listener import Clock, Listener, emit_final  # noqa: F401 - Clock and emit_final: the offline path
from agent.pipeline.scheduler import DecodeScheduler
from agent.pipeline.settings import PipelineSettings

log = logging.getLogger(__name__)


class LivePipeline:
    def __init__(self, source, segmenter, recognizer, emitter: Emitter, settings: PipelineSettings,
                 progress=None, scheduler: Optional[DecodeScheduler] = None):
        """`scheduler`: the decode worker shared with other streams; None: one of its own."""
        self.source = source
        self.progress = progress  # agent.service.Progress: lets the systemd watchdog see the pipeline move
        self.recognizer = recognizer
        self.settings = settings
        self.emitter = emitter
        self.commands: queue.SimpleQueue = queue.SimpleQueue()  # applied between blocks (see apply)
        self._owns_scheduler = scheduler is None
        if scheduler is None:
            scheduler = DecodeScheduler(self._decode, partial_interval_s=settings.partial_interval_ms / 1000.0,
                                        duty_budget=settings.duty_budget)
        self.scheduler = scheduler
        self.listener = Listener(segmenter, emitter, settings, decoder=scheduler,
                                 realtime=getattr(source, "realtime", True), progress=progress)

    @property
    def segmenter(self):
        return self.listener.segmenter

    @property
    def utterances(self) -> int:
        return self.listener.utterances

    @property
    def last_latency_ms(self):
        return self.listener.last_latency_ms

    @property
    def muted(self) -> bool:
        return self.listener.muted

    def apply(self, command: dict) -> None:
        """From any thread: the command is applied by the pipeline thread before its next block."""
        self.commands.put(command)

    # ------------------------------------------------------------------ pipeline thread
    def run(self, stop: threading.Event, on_started: Optional[Callable[[], None]] = None) -> bool:
        """Run until the source ends or `stop` is set; True if every final was delivered in time.

        `on_started` runs once the source is open (the service sends READY=1 there).
        """
        if self._owns_scheduler:
            self.scheduler.start()
        listener = self.listener
        try:
            self.source.start()
            if on_started is not None:
                on_started()
            while not stop.is_set():
                while not self.commands.empty():
                    listener.apply(self.commands.get())
                block = self.source.read(timeout=0.2)
                if block is None:
                    if self.source.ended:
                        break
                    if self.source.state == "waiting_for_device":
                        if self.progress is not None:
                            self.progress.waiting_for_audio()  # a mic being reopened is not a stall
                        listener.interrupt()
                    continue
                listener.feed(block.samples, block.start)
            listener.finish()
        finally:
            self.source.stop()
            listener.close()
            drained = listener.drain(self.settings.drain_timeout_s)
            if self._owns_scheduler:
                drained = self.scheduler.stop(self.settings.drain_timeout_s) and drained
        if not drained:
            log.error("stopped with finals still undelivered after %.1f s", self.settings.drain_timeout_s)
        return drained

    # ------------------------------------------------------------------ decode thread (own scheduler)
    def _decode(self, audios, options, offsets, cancel):
        if self.progress is None:
            return self.recognizer.recognize_batch(audios, options, offsets, cancel=cancel)
        with self.progress.decoding():
            return self.recognizer.recognize_batch(audios, options, offsets, cancel=cancel)
