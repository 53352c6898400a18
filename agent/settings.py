"""Typed settings, one dataclass per part, validated once at start (see config_schema).

The shipped config.yaml documents the same keys; `doc` strings here are the source of truth.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Tuple

from agent.audio.settings import AudioSettings
from agent.config_schema import load_settings, section
from agent.listening.settings import SegmenterSettings, VadSettings
from agent.mqtt.settings import MqttSettings
from agent.offline.settings import OfflineSettings
from agent.server.settings import ServerSettings
from agent.pipeline.settings import PipelineSettings
from agent.recognizer.settings import RecognizerSettings
from agent.service.settings import LoggingSettings, WatchdogSettings


@dataclass
class Settings:
    audio: AudioSettings = section(AudioSettings, "Where audio comes from: microphone, WAV file, stdin or a named pipe.")
    vad: VadSettings = section(VadSettings, "Voice activity detection.")
    segmenter: SegmenterSettings = section(SegmenterSettings, "Cutting the stream into utterances.")
    pipeline: PipelineSettings = section(PipelineSettings, "Partial and final decode scheduling.")
    offline: OfflineSettings = section(OfflineSettings, "Decoding whole files (transcribe, run --fast): batching.")
    recognizer: RecognizerSettings = section(RecognizerSettings, "The speech recognizer.")
    mqtt: MqttSettings = section(MqttSettings, "Publishing events to an MQTT broker.")
    server: ServerSettings = section(ServerSettings, "Devices streaming audio in over WebSocket (stt-agent serve).")
    logging: LoggingSettings = section(LoggingSettings, "Logs: journald fields or stderr lines.")
    watchdog: WatchdogSettings = section(WatchdogSettings, "systemd watchdog: ping only while the pipeline moves.")


CONFIG_ENV = "STT_AGENT_CONFIG"
# Where every command looks when neither --config nor $STT_AGENT_CONFIG names a file: the working
# directory first (a checkout, a container's WORKDIR), then the system-wide one install.sh writes.
CONFIG_SEARCH = ("config.yaml", "/etc/stt-agent/config.yaml")


def find_config(explicit: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> Tuple[Optional[str], str]:
    """(path or None for the built-in defaults, where it came from), by one rule for every command:
    --config, then $STT_AGENT_CONFIG, then ./config.yaml, then /etc/stt-agent/config.yaml."""
    env = os.environ if env is None else env
    if explicit:
        return explicit, "--config"
    if env.get(CONFIG_ENV):
        return env[CONFIG_ENV], f"${CONFIG_ENV}"
    for candidate in CONFIG_SEARCH:
        if Path(candidate).is_file():
            return candidate, "found"
    return None, "defaults"


def load(path=None) -> Settings:
    """Load and validate a config file (or the defaults when path is None)."""
    return load_settings(Settings, path)
