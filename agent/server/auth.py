"""Who may stream: the tokens file, and the answer to a connection's token for a device."""

from __future__ import annotations

import hmac
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from agent.errors import ConfigError
from agent.mqtt.topics import MAX_DEVICE_ID_BYTES, topic_problem

OK, MISSING, WRONG, OTHER_DEVICE = "ok", "missing", "wrong", "other_device"


@dataclass(frozen=True)
class Tokens:
    """(device or None for any device, token) pairs from the tokens file."""

    entries: Tuple[Tuple[Optional[str], str], ...]

    @classmethod
    def load(cls, path: str) -> Tokens:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"server.tokens_file: cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"server.tokens_file: {path} is not UTF-8 text") from None
        entries: List[Tuple[Optional[str], str]] = []
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) > 2:
                raise ConfigError(f"server.tokens_file: {path} (line {number}): expected TOKEN or DEVICE_ID TOKEN, "
                                  f"got {len(fields)} fields")
            device, token = (None, fields[0]) if len(fields) == 1 else (fields[0], fields[1])
            if len(token) < 16:
                raise ConfigError(f"server.tokens_file: {path} (line {number}): a token of {len(token)} characters "
                                  "is too easy to guess (at least 16; e.g. openssl rand -hex 16)")
            entries.append((device, token))
        if not entries:
            raise ConfigError(f"server.tokens_file: {path} holds no token")
        return cls(tuple(entries))

    def check(self, device_id: str, token: Optional[str]) -> str:
        """OK, MISSING, WRONG, or OTHER_DEVICE (a valid token bound to another device)."""
        if not token:
            return MISSING
        verdict = WRONG
        for device, known in self.entries:  # every entry compared, in constant time: no timing oracle
            if hmac.compare_digest(known.encode(), token.encode()):
                if device is None or device == device_id:
                    verdict = OK
                elif verdict != OK:
                    verdict = OTHER_DEVICE
        return verdict


def device_problem(device_id: str) -> Optional[str]:
    """Why a path's device id cannot name a device (it becomes an MQTT topic level), or None."""
    if len(device_id) > 64:
        return "is longer than 64 characters"
    for c in device_id:
        # Bidi controls and zero-width characters make two ids that print alike (a log line, a topic in a
        # broker's UI) name two devices, or one look like another.
        if unicodedata.category(c) in ("Cf", "Zl", "Zp"):
            return f"contains the invisible or direction-changing character U+{ord(c):04X}"
    return topic_problem(device_id, levels=False, max_bytes=MAX_DEVICE_ID_BYTES)
