"""`stt-agent run` and `serve`: the one place the parts are put together.

    Agent(settings, ...).run()
        logging, watchdog, signals       how it is run and watched (systemd or not)
        sinks                            JSON lines on stdout and/or MQTT (credentials read now)
        recognizer                       the model, loaded and warm
        decoder                          the one decode worker every stream shares (batched finals)
        stream                           the local audio source -> VAD -> segmenter -> the decoder
        network                          one loop: devices over WebSocket (server.enabled), Home Assistant
                                         over Wyoming (server.wyoming.enabled), one device registry
        listen                           READY=1, then until the input ends or SIGTERM
        shut down                        every stream's pending finals drained, sinks closed, offline published
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
from typing import Callable, Optional

from agent.errors import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_OK, AgentError
from agent.events import Emitter, new_session

log = logging.getLogger(__name__)


class Agent:
    """One run of the listening agent.

    settings: validated Settings (command-line flags applied).
    config_path: the file they came from (None: built-in defaults), for the log.
    events_to_stdout: write events as JSON lines on stdout (besides MQTT, if that is enabled).
    reload_settings: reads the settings again on SIGHUP (None: SIGHUP only re-applies logging).
    """

    def __init__(self, settings, *, config_path: Optional[str] = None, events_to_stdout: bool = True,
                 verbose: int = 0, reload_settings: Optional[Callable[[], object]] = None, local_audio: bool = True):
        """local_audio: listen to settings.audio.input (run); False: network streams only (serve)."""
        self.settings = settings
        self.local_audio = local_audio
        self.config_path = config_path
        self.events_to_stdout = events_to_stdout
        self.verbose = verbose
        self.reload_settings = reload_settings
        self.stop = threading.Event()
        self.session = new_session()
        self.watchdog = self.progress = self.publisher = self.recognizer = self.pipeline = None
        self.decoder = self.network = None
        self.emitter: Optional[Emitter] = None
        self._stdout_closed = False

    # ------------------------------------------------------------------ the table of contents
    def run(self) -> int:
        self._check_input()
        self._setup_logging()
        self._start_watchdog()
        self._install_signal_handlers()
        self._open_sinks()
        self._load_recognizer()
        drained = False
        try:
            self._start_decoder()
            self._open_stream()
            self._start_network()
            drained = self._listen()
        finally:
            drained = self._shut_down() and drained
        if self._stdout_closed:
            return EXIT_BROKEN_PIPE
        return EXIT_OK if drained else EXIT_FAILED

    # ------------------------------------------------------------------ the parts, in order
    def _check_input(self):
        source = self.settings.audio.input
        if self.local_audio and source not in ("mic", "-") and not os.path.exists(source):
            from agent.audio_file import AudioFileError

            raise AudioFileError(f"{source}: no such file")  # before a model load of seconds
        if self.local_audio and source == "mic":
            from agent.audio.devices import portaudio

            portaudio()  # no PortAudio library: exit 69 before the model load, not after it

    def _setup_logging(self):
        from agent.service import enable_fault_handler, setup_logging

        setup_logging(self.settings.logging, self.verbose)
        enable_fault_handler()
        log.info("configuration: %s", self.config_path or "built-in defaults (no config file found)",
                 extra={"EVENT": "config", "CONFIG": self.config_path or "defaults"})
        if self.local_audio and not self.events_to_stdout and not self.settings.mqtt.enabled:
            log.warning("events go nowhere: mqtt.enabled is false and standard output is the journal, which "
                        "keeps no speech events; enable mqtt, or pass --events - to write them to stdout anyway",
                        extra={"EVENT": "no_sink"})

    def _start_watchdog(self):
        from agent.service import Progress, Watchdog

        s = self.settings
        parts = (("audio",) if self.local_audio else ()) + (
            ("network",) if s.server.enabled or s.server.wyoming.enabled else ())
        self.progress = Progress(parts=parts, backlog=self._decoder_backlog)
        self.watchdog = Watchdog.from_settings(self.progress, self.settings.watchdog, status=self._status,
                                               config_path=self.config_path)
        self.watchdog.start()  # pings while the model loads; READY only once it is warm and the source is open
        if "tensorrt" in self.settings.recognizer.providers:
            self.watchdog.extend_startup(600)  # a first TensorRT engine build takes minutes

    def _decoder_backlog(self):
        """Seconds the oldest final has waited for the decode worker (None: none waits)."""
        return self.decoder.oldest_final_age() if self.decoder is not None else None

    def _install_signal_handlers(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: (self.stop.set(), self.watchdog.stopping()))
        signal.signal(signal.SIGHUP, lambda *_: self._reload())

    def _open_sinks(self):
        """Sinks before the model: a bad password file or TLS file is an error in milliseconds."""
        from agent.mqtt.topics import device_id_of
        from agent.sinks import JsonLinesSink

        self.emitter = Emitter(device_id_of(self.settings.mqtt), self.session)
        if self.events_to_stdout:
            self.emitter.sinks.append(JsonLinesSink(sys.stdout, on_closed=self._stdout_gone))
        if self.settings.mqtt.enabled:
            from agent.mqtt.publisher import MqttPublisher

            self.publisher = MqttPublisher(self.settings.mqtt, health=self._health, on_command=self._command,
                                           device_emitter=self._device_emitter, serves=self._serves,
                                           emitter=self.emitter)
            self.emitter.sinks.append(self.publisher)

    def _load_recognizer(self):
        from agent.recognizer import load_recognizer

        self.recognizer = load_recognizer(self.settings.recognizer)

    def _start_decoder(self):
        from agent.pipeline.scheduler import DecodeScheduler

        s = self.settings
        serving = s.server.enabled or s.server.wyoming.enabled
        batch = s.server.resolved_batch_size(self.recognizer.info["provider"]) if serving else 1
        self.decoder = DecodeScheduler(self._decode, batch_size=batch, max_batch_seconds=s.offline.max_batch_seconds,
                                       partial_interval_s=s.pipeline.partial_interval_ms / 1000.0,
                                       duty_budget=s.pipeline.duty_budget)
        self.decoder.start()

    def _decode(self, audios, options, offsets, cancel):
        """The shared worker's model run (token times in stream seconds): the watchdog sees each start and end."""
        with self.progress.decoding():
            return self.recognizer.recognize_batch(audios, options, offsets, cancel=cancel)

    def _open_stream(self):
        from agent.listening import Segmenter, load_vad

        if not self.local_audio:
            return
        s = self.settings
        segmenter = Segmenter.from_settings(load_vad(s.vad), s.segmenter, s.vad)
        if not s.audio.realtime and os.path.isfile(s.audio.input):
            from agent.pipeline.offline import OfflinePipeline  # a file read flat out: transcribe's batches

            self.pipeline = OfflinePipeline(s.audio.input, segmenter, self.recognizer, self.emitter, s.pipeline,
                                            s.offline, progress=self.progress)
            return
        from agent.audio import open_source
        from agent.pipeline.live import LivePipeline

        self.pipeline = LivePipeline(open_source(s.audio), segmenter, self.recognizer, self.emitter, s.pipeline,
                                     progress=self.progress, scheduler=self.decoder)

    def _start_network(self):
        s = self.settings
        if not (s.server.enabled or s.server.wyoming.enabled):
            return
        from agent.server.loop import NetworkLoop

        self.network = NetworkLoop(s, self.recognizer, self.decoder, self.session,
                                   sinks=[self.publisher] if self.publisher is not None else [],
                                   device_status=self.publisher.device_status if self.publisher else None,
                                   progress=self.progress, publisher=self.publisher)
        if self.network.metrics is not None:
            self.emitter.attach(self.network.metrics.events)  # the microphone's events and finals, too
        self.network.start()

    def _listen(self) -> bool:
        if self.publisher is not None:
            self.publisher.start()
        if self.pipeline is not None:
            return self.pipeline.run(self.stop, on_started=self._ready)  # READY=1: model warm and source open
        self._ready()
        self.stop.wait()
        return True

    def _ready(self):
        provider = self.recognizer.info["provider"]
        where = self.settings.audio.input if self.local_audio else "network streams"
        log.info("listening on %s", where, extra={"EVENT": "ready", "PROVIDER": provider})
        self.watchdog.ready(f"listening on {where} with {provider}")

    def _shut_down(self) -> bool:
        """Every stream's pending finals decoded and delivered (each within drain_timeout_s); True if they were."""
        if self.decoder is not None:
            log.info("model time by kind of decode: %s; runs stopped midway: %s; speculative decodes: %s; "
                     "runs of finals by batch size: %s",
                     {k: round(v, 1) for k, v in self.decoder.model_seconds.items()}, dict(self.decoder.cancelled),
                     dict(self.decoder.speculation), dict(sorted(self.decoder.batches.items())),
                     extra={"EVENT": "decoder_totals"})
        drained = True
        timeout = self.settings.pipeline.drain_timeout_s
        if self.network is not None:
            drained = self.network.stop(timeout) and drained
        if self.decoder is not None:
            drained = self.decoder.stop(timeout) and drained
        for sink in self.emitter.sinks if self.emitter else ():
            sink.close()
        if self.watchdog is not None:
            self.watchdog.stop()
        # Done: a second SIGTERM now (systemd, a test harness, an impatient user) would land while the
        # interpreter finalizes, which restores the default action and turns a clean exit into -15.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        return drained

    # ------------------------------------------------------------------ while running
    def _stdout_gone(self):
        """`stt-agent run | head`: the reader left; stop as a shell pipeline expects."""
        self._stdout_closed = True
        self.stop.set()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or the exit-time flush fails again

    def _status(self) -> dict:
        pipeline = self.pipeline
        status = {"provider": self.recognizer.info["provider"] if self.recognizer else None,
                  "utterances": pipeline.utterances if pipeline else 0,
                  "last_latency_ms": pipeline.last_latency_ms if pipeline else None}
        if self.network is not None:
            status["streams"] = self.network.registry.admitted
        if self.publisher is not None:
            status["broker"] = self.publisher.connected
        return status

    def _health(self) -> dict:
        info = self.recognizer.info
        health = {"provider": info["provider"], "model": info["model_dir"], "model_file": info["model_file"]}
        if self.pipeline is not None:
            stats = self.pipeline.source.stats()
            health.update(overflows=stats.overflows, samples_lost=stats.lost_samples,
                          audio_device={"state": stats.state, "name": stats.device}, muted=self.pipeline.muted)
        if self.network is not None:
            if self.settings.server.enabled:
                health["server"] = self.network.stats()
            if self.network.wyoming is not None:
                health["wyoming"] = self.network.wyoming.stats()
        return health

    def _device_emitter(self, device_id: str):
        """A network device's Emitter (its seq goes on), for the publisher's answers to its commands."""
        network = self.network
        return network.registry.emitter_of(device_id) if network is not None else None

    def _serves(self, device_id: str) -> bool:
        """Commands this agent answers: its own device's, and those of network devices it has served."""
        network = self.network
        return device_id == self.emitter.device_id or (network is not None and network.registry.known(device_id))

    def _command(self, device_id: str, command: dict):
        """An MQTT command for `device_id`, validated (agent/mqtt/commands.py), on the publisher's command
        thread: it travels to that stream's own thread (the microphone's loop, a network stream's inbox)."""
        from agent.mqtt.commands import CommandError

        if command["command"] == "set_language":
            try:
                command = {**command, "options": self.recognizer.options(
                    language=command.get("language", "auto"),
                    allowed_languages=tuple(command.get("allowed_languages", ())))}
            except AgentError as exc:
                raise CommandError("bad_field", str(exc)) from None
        elif command["command"] == "set_hotwords":
            from agent.recognizer.phrases import HotwordError, merge, parse_phrases

            try:  # a stream's phrases are a hint: those the vocabulary cannot spell are left out at decode
                phrases = merge(self.recognizer.defaults.hotwords, parse_phrases(command["hotwords"], "hotwords"))
            except HotwordError as exc:
                raise CommandError("bad_field", f"set_hotwords: {exc}") from None
            command = {**command, "hotwords": phrases, "defaults": self.recognizer.defaults}
        elif command["command"] in ("clear_hotwords", "clear_language"):
            command = {**command, "defaults": self.recognizer.defaults}
        if self.pipeline is not None and device_id == self.emitter.device_id:
            if not hasattr(self.pipeline, "apply"):
                raise CommandError("unsupported", f"{command['command']}: a file read as fast as it decodes takes "
                                                  "no commands")
            self.pipeline.apply(command)
            return
        if self.network is not None:
            from agent.server.loop import NotConnected

            try:
                self.network.command(device_id, command)
                return
            except NotConnected:
                pass
            except BufferError:
                raise CommandError("busy", f"device {device_id!r} has too much audio waiting; try again") from None
        raise CommandError("not_connected", f"device {device_id!r} is not connected to this agent")

    def _reload_hotwords(self, fresh) -> str:
        """recognizer.hotwords and hotwords_file read again on SIGHUP; ", hotwords (N phrases)" when they
        changed. Spelling errors keep the running phrases (one error line)."""
        reload = getattr(self.recognizer, "reload_hotwords", None)
        if reload is None:
            return ""
        try:
            changed = reload(fresh.recognizer)
        except AgentError as exc:
            log.error("reload: hotwords rejected, keeping the running ones: %s", exc, extra={"EVENT": "reload"})
            return ""
        for key in ("hotwords", "hotwords_file", "hotwords_score", "hotwords_beam"):
            setattr(self.settings.recognizer, key, getattr(fresh.recognizer, key))
        return f", hotwords ({len(self.recognizer.defaults.hotwords)} phrases)" if changed else ""

    def _reload(self):
        """SIGHUP: apply what is safe to change live (the log level); name what needs a restart."""
        from agent.service import setup_logging

        self.watchdog.reloading("reloading configuration")
        try:
            fresh = self.reload_settings() if self.reload_settings is not None else self.settings
        except AgentError as exc:
            log.error("reload: configuration rejected, keeping the running one: %s", exc, extra={"EVENT": "reload"})
            self.watchdog.ready("reload rejected: configuration invalid")
            return
        running = self.settings
        running.logging = fresh.logging
        setup_logging(fresh.logging, self.verbose)
        applied = "log level" + self._reload_hotwords(fresh)
        changed = [f.name for f in dataclasses.fields(fresh)
                   if f.name != "logging" and getattr(fresh, f.name) != getattr(running, f.name)]
        if changed:
            log.warning("reload: %s applied; changes to %s need a restart (systemctl restart stt-agent)",
                        applied, ", ".join(changed), extra={"EVENT": "reload"})
        else:
            log.info("reload: %s applied", applied, extra={"EVENT": "reload"})
        self.watchdog.ready("configuration reloaded")

