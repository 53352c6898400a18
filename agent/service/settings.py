"""Settings of the service layer: logging and the watchdog (agent.settings puts them in the config)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config_schema import setting

LEVELS = ("debug", "info", "warning", "error")
JOURNALD = ("auto", "on", "off")


@dataclass
class LoggingSettings:
    level: str = setting("info", "Log level: debug, info, warning or error (-v / -vv lower it).", choices=LEVELS)
    journald: str = setting(
        "auto", "Log to the systemd journal with structured fields (UTTERANCE_ID, LATENCY_MS, EVENT, ...): "
                "auto = when running under systemd and systemd-python is installed (the `journald` extra); "
                "on = always (falls back to stderr with a warning if it cannot); off = plain lines on stderr.",
        choices=JOURNALD)
    log_text: bool = setting(
        False, "Put the recognized speech text into log records (the TEXT field). Off by default for "
               "privacy: logs keep timings and ids, not what was said. Turn on only to debug.")


@dataclass
class WatchdogSettings:
    audio_timeout_s: float = setting(
        15.0, "Withhold systemd watchdog pings when the pipeline has consumed no audio for this long "
              "(a microphone being reopened does not count as a stall). The restart comes WatchdogSec= "
              "after the last ping.", min=1.0, max=3600.0)
    decode_timeout_s: float = setting(
        60.0, "Withhold watchdog pings while one decode has run longer than this (a stuck runtime).",
        min=1.0, max=3600.0)
    status_interval_s: float = setting(
        5.0, "Shortest time between two status lines sent to systemd (`systemctl status`).", min=0.5, max=600.0)
    health_file: str = setting(
        "auto", "A file the agent rewrites every few seconds with its health, which `stt-agent health` (a "
                "container HEALTHCHECK, a Kubernetes probe) reads. auto = one file per agent, "
                "health-<id>.json with <id> from the config file's path (so `stt-agent health` with the same "
                "config finds it), in $RUNTIME_DIRECTORY under systemd, else /run/stt-agent if writable, else "
                "$XDG_RUNTIME_DIR/stt-agent, else /tmp/stt-agent-<uid>; a path = that file; empty = none.")
