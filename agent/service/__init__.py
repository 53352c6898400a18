"""Running as a systemd service: sd_notify, a watchdog that pings only while the parts that must live move,
the health file, journald logging. Everything is a no-op when systemd did not start the process.

- `Notifier` / `watchdog_interval` (notify.py): sd_notify over `$NOTIFY_SOCKET` (READY, STATUS,
  WATCHDOG, RELOADING, STOPPING, EXTEND_TIMEOUT_USEC).
- `Progress` / `Watchdog` (watchdog.py): agent/app.py builds one `Progress` with the parts this run has
  ("audio" for a local source, "network" when the WebSocket or Wyoming server runs) and the decoder's
  backlog; the local listener ticks it per block consumed (or while its device is reopened), the network
  loop's heartbeat beats "network", the decode worker wraps each decode. The watchdog withholds its
  pings when one of them stops; /healthz and /readyz (agent/server/probes.py) ask the same `Progress`.
- health_file.py: where the watchdog writes its verdict every round and `stt-agent health` reads it
  (one file per config).
- `setup_logging` (logging.py): journald fields or stderr lines; `LoggingSettings`, `WatchdogSettings`.
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
