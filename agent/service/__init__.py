"""Running as a systemd service: sd_notify, a watchdog that pings only while the parts that must live move,
journald logging. Everything is a no-op when systemd did not start the process.

- `Notifier` / `watchdog_interval` (notify.py): sd_notify over `$NOTIFY_SOCKET` (READY, STATUS,
  WATCHDOG, RELOADING, STOPPING, EXTEND_TIMEOUT_USEC).
- `Progress` / `Watchdog` (watchdog.py): `Progress(parts=("audio", "network"), backlog=...)` is ticked by
  the local pull loop (a block consumed, a device being reopened), the network loop's heartbeat and the
  decode worker; the watchdog withholds its pings when one of them stops (agent/app.py wires it).
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
