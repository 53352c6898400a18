"""Topic names, from the prefix and the device id (one place, so docs and code cannot drift)."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

HERMES_TEXT = "hermes/asr/textCaptured"
HERMES_PARTIAL = "hermes/asr/partialTextCaptured"


def device_id_of(settings) -> str:
    """The configured device id, or this host's name (one topic level: / + # replaced by _)."""
    name = settings.device_id or socket.gethostname() or "stt-agent"
    return re.sub(r"[/+#\s\0]", "_", name)


def client_id_of(settings, device_id: str) -> str:
    return settings.client_id or f"stt-agent-{device_id}"


@dataclass(frozen=True)
class Topics:
    prefix: str
    device_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def partial(self) -> str:
        return f"{self.base}/stt/partial"

    @property
    def final(self) -> str:
        return f"{self.base}/stt/final"

    @property
    def emotion(self) -> str:
        return f"{self.base}/emotion"

    @property
    def language(self) -> str:
        return f"{self.base}/language"

    @property
    def vad(self) -> str:
        return f"{self.base}/vad"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def error(self) -> str:
        return f"{self.base}/error"

    @property
    def cmd(self) -> str:
        return f"{self.base}/cmd"
