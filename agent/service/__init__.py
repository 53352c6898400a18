"""Running as a systemd service: sd_notify, a progress-gated watchdog, journald logging.

- `Notifier` / `watchdog_interval` (notify.py): sd_notify over `$NOTIFY_SOCKET`. Its `notify()`
  is imported from agent.service.notify: here the submodule's name would shadow it.
- `Progress` / `Watchdog` (watchdog.py): pings `WATCHDOG=1` only while the pipeline moves.
- `setup_logging` (logging.py): journald fields or stderr lines; `LoggingSettings`, `WatchdogSettings`.

Wiring (`stt-agent run`); everything is a no-op when not started by systemd:

    setup_logging(settings.logging, args.verbose)   # instead of logging.basicConfig
    enable_fault_handler()                          # thread stacks in the journal on SIGABRT
    progress = Progress()
    dog = Watchdog.from_settings(progress, settings.watchdog, status=lambda: {
        "provider": ..., "utterances": pipeline.utterances, "last_latency_ms": ..., "broker": ...})
    dog.start()                                     # unconditional pings while the model loads
    dog.extend_startup(600)                         # before building a TensorRT engine
    recognizer = load_recognizer(...)
    dog.ready(f"listening on {settings.audio.input}")
    # SIGTERM handler: stop.set(); dog.stopping()   SIGHUP: dog.reloading(); ...; dog.ready()
    LivePipeline(..., progress=progress).run(stop)
    dog.stop()

In LivePipeline: `progress.audio_consumed()` for each block read; `progress.waiting_for_audio()`
when `read` gives None while `source.state == WAITING_FOR_DEVICE`; and in `_decode`,
`with progress.decoding(): return self.recognizer.recognize(audio)`.
"""


from agent.lazy import lazy_exports

_EXPORTS = {
    "LoggingSettings": "agent.service.settings",
    "Notifier": "agent.service.notify",
    "Progress": "agent.service.watchdog",
    "Watchdog": "agent.service.watchdog",
    "WatchdogSettings": "agent.service.settings",
    "describe": "agent.service.watchdog",
    "enable_fault_handler": "agent.service.watchdog",
    "setup_logging": "agent.service.logging",
    "watchdog_interval": "agent.service.notify",
}

__all__ = ["LoggingSettings", "Notifier", "Progress", "Watchdog", "WatchdogSettings", "describe",
           "enable_fault_handler", "setup_logging", "watchdog_interval"]

__getattr__ = lazy_exports(__name__, _EXPORTS)
