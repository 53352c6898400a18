"""Topic names, from the prefix and the device id (one place, so docs and code cannot drift)."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

# MQTT 5 section 1.5.4: no U+0000 in a UTF-8 string; control characters and non-characters
# "SHOULD NOT" appear, and Mosquitto drops a client that sends them (it logs nothing to the client).
_FORBIDDEN_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff]")
MAX_DEVICE_ID_BYTES = 253  # a host name's limit; the device id is the host name by default
MAX_PREFIX_BYTES = 512  # topics are at most 65,535 bytes; this keeps prefix + device + suffix far below


def text_problem(value: str, max_bytes: int) -> str | None:
    """Why `value` cannot go into an MQTT topic or client id, or None."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8 text (a lone surrogate)"
    bad = _FORBIDDEN_CHARS.search(value) or re.search("[\U0001fffe\U0001ffff\U0010fffe\U0010ffff]", value)
    if bad:
        return f"contains the character U+{ord(bad.group()):04X}, which MQTT topics must not carry"
    if size > max_bytes:
        return f"is {size} bytes long (at most {max_bytes})"
    return None


def topic_problem(value: str, *, levels: bool, max_bytes: int) -> str | None:
    """Why `value` is not usable as topic levels (levels=True: a prefix like a/b) or one level, or None."""
    if not value:
        return "is empty"
    problem = text_problem(value, max_bytes)
    if problem:
        return problem
    if "+" in value or "#" in value:
        return "contains a wildcard (+ or #)"
    if not levels and "/" in value:
        return "must be one topic level (no /)"
    parts = value.split("/")
    if any(not part for part in parts):
        return "has an empty topic level (a leading, trailing or double /)"
    if parts[0].startswith("$"):
        return "starts with $, which brokers reserve ($SYS, $share/...)"
    return None


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


def command_filter(prefix: str) -> str:
    """The subscription for every device's commands: the `+` level is the device id."""
    return f"{prefix}/+/cmd"


def command_device(prefix: str, topic: str) -> str | None:
    """The device level of `<prefix>/<device>/cmd`, as received (not checked), or None for another topic."""
    head, tail = f"{prefix}/", "/cmd"
    if not (topic.startswith(head) and topic.endswith(tail)) or len(topic) < len(head) + len(tail):
        return None
    device = topic[len(head):-len(tail)]
    return None if "/" in device else device
