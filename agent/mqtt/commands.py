"""Commands received on <prefix>/<device>/cmd: parse and validate, or say exactly what is wrong.

docs/schemas/command.json describes the same rules for firmware developers (tests keep the two in step).
"""

from __future__ import annotations

import json

COMMANDS = ("mute", "unmute", "set_language", "clear_language", "health")
MAX_PAYLOAD = 4096


class CommandError(ValueError):
    def __init__(self, code: str, message: str, request_id=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def _languages():
    from agent.settings import LANGUAGES  # lazy: agent.settings imports this package's settings

    return LANGUAGES


def request_id_of(payload: bytes):
    """The `id` of a payload that may be refused before it is parsed as a command (or None)."""
    if len(payload) > MAX_PAYLOAD:
        return None
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    request_id = data.get("id") if isinstance(data, dict) else None
    return request_id if isinstance(request_id, (str, int)) and not isinstance(request_id, bool) else None


def parse_command(payload: bytes, languages: tuple | None = None) -> dict:
    """The command as a normalised dict ({"command": ..., fields..., "id"?}) or CommandError."""
    languages = tuple(languages) if languages is not None else _languages()
    if len(payload) > MAX_PAYLOAD:
        raise CommandError("too_large", f"command payload is {len(payload)} bytes (at most {MAX_PAYLOAD})")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CommandError("bad_json", f"payload is not JSON: {exc}") from None
    except RecursionError:  # ~2,000 nested arrays fit in 4,096 bytes; json's decoder recurses per level
        raise CommandError("bad_json", "payload is nested too deeply to be a command") from None
    if not isinstance(data, dict):
        raise CommandError("bad_json", f"payload must be a JSON object, got {type(data).__name__}")
    request_id = data.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (str, int))):
        raise CommandError("bad_field", "id must be a string or an integer")
    command = data.get("command")
    if command is None:
        raise CommandError("missing_field", "no 'command' field", request_id)
    if command not in COMMANDS:
        raise CommandError("unknown_command", f"unknown command {command!r} (known: {', '.join(COMMANDS)})",
                           request_id)
    allowed = {"command", "id"}
    if command == "set_language":
        allowed |= {"language", "allowed_languages"}
    extra = sorted(set(data) - allowed)
    if extra:
        raise CommandError("bad_field", f"{command}: unknown field(s) {', '.join(map(repr, extra))}", request_id)
    out = {"command": command}
    if command == "set_language":
        has_one, has_many = "language" in data, "allowed_languages" in data
        if has_one == has_many:
            raise CommandError("bad_field", "set_language needs exactly one of 'language' or 'allowed_languages'",
                               request_id)
        if has_one:
            lang = data["language"]
            if lang not in languages:
                raise CommandError("bad_field", f"language {lang!r} is not one of: {', '.join(languages)}",
                                   request_id)
            out["language"] = lang
        else:
            langs = data["allowed_languages"]
            if not isinstance(langs, list) or not langs:
                raise CommandError("bad_field", "allowed_languages must be a non-empty list", request_id)
            bad = [x for x in langs if x not in languages]
            if bad:
                raise CommandError("bad_field", f"allowed_languages: {bad!r} not among: {', '.join(languages)}",
                                   request_id)
            if len(set(langs)) != len(langs):
                raise CommandError("bad_field", f"allowed_languages lists a language twice: {langs}", request_id)
            out["allowed_languages"] = list(langs)
    if request_id is not None:
        out["id"] = request_id
    return out
