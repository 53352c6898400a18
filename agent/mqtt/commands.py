"""Commands received on <prefix>/<device>/cmd: validated against docs/schemas/command.json itself.

The schema is the one set of rules (firmware developers read the same file); this module only
reads the payload, runs the schema, and turns the first thing wrong into an error code and a
one-line message naming the field and what was expected (docs/EVENTS.md lists the codes).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "command.json"  # docs/schemas links there
MAX_PAYLOAD = 4096
_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "array": "an array",
               "object": "an object", "boolean": "true or false", "null": "null"}


class CommandError(ValueError):
    """A command that is not accepted: answered on the device's error topic with `code`.

    The publisher's command handler raises it too, e.g. CommandError("not_connected", ...) for a
    device that is not streaming; any other exception from the handler is `command_failed`.
    """

    def __init__(self, code: str, message: str, request_id=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@functools.cache
def _validator():
    """docs/schemas/command.json, checked and compiled once."""
    try:
        schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CommandError("unsupported", f"commands cannot be checked: cannot read {SCHEMA_PATH} "
                                          f"({exc.strerror or exc})") from None
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema), cls(schema["properties"]["id"])


def schema_problem() -> str | None:
    """Why commands cannot be validated here (the schema file is missing), or None."""
    try:
        _validator()
    except CommandError as exc:
        return exc.message
    return None


def schema() -> dict:
    return _validator()[0].schema


def commands() -> tuple:
    """The command names the schema knows."""
    return tuple(schema()["properties"]["command"]["enum"])


def languages() -> tuple:
    """The languages set_language takes, as the schema lists them (tests keep them in step with the model's)."""
    branch = next(b for b in schema()["oneOf"] if "language" in b.get("properties", {}))
    return tuple(branch["properties"]["language"]["enum"])


def _load(payload: bytes):
    if len(payload) > MAX_PAYLOAD:
        raise CommandError("too_large", f"command payload is {len(payload)} bytes (at most {MAX_PAYLOAD})")
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CommandError("bad_json", f"payload is not JSON: {exc}") from None
    except RecursionError:  # ~2,000 nested arrays fit in 4,096 bytes; json's decoder recurses per level
        raise CommandError("bad_json", "payload is nested too deeply to be a command") from None


def _request_id(data):
    """The payload's `id`, if the schema takes it as one."""
    if not isinstance(data, dict) or "id" not in data:
        return None
    return data["id"] if _validator()[1].is_valid(data["id"]) else None


def request_id_of(payload: bytes):
    """The `id` of a payload that may be refused before it is parsed as a command (or None)."""
    try:
        return _request_id(_load(payload))
    except CommandError:
        return None


def parse_command(payload: bytes) -> dict:
    """The command as a dict ({"command": ..., fields..., "id"?}) or CommandError."""
    data = _load(payload)
    validator = _validator()[0]
    errors = list(validator.iter_errors(data))
    if errors:
        raise _explain(errors, data, _request_id(data))
    return dict(data)


# ------------------------------------------------------------------ jsonschema's errors -> code, message
def _show(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _json_type(value) -> str:
    for name, kind in (("true or false", bool), ("an integer", int), ("a number", float), ("a string", str),
                       ("an array", list), ("an object", dict)):
        if isinstance(value, kind):
            return name
    return "null"


def _field(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "payload"


def _is_unknown_field(error) -> bool:
    return "propertyNames" in error.relative_schema_path


def _explain(errors, data, request_id) -> CommandError:
    def rank(e):
        if not e.path and e.validator == "type":
            return 0
        if not e.path and e.validator == "required":
            return 1
        if list(e.path)[:1] == ["command"]:
            return 2
        return 3 if e.path else 4

    error = min(errors, key=rank)
    if not error.path and error.validator == "type":
        return CommandError("bad_json", f"payload must be a JSON object, got {_json_type(data)}")
    if not error.path and error.validator == "required":
        missing = next(name for name in error.validator_value if name not in data)
        return CommandError("missing_field", f"no {missing!r} field", request_id)
    if list(error.path) == ["command"] and error.validator == "enum":
        return CommandError("unknown_command", f"unknown command {_show(data['command'])} "
                                               f"(known: {', '.join(error.validator_value)})", request_id)
    command = data.get("command")
    if error.validator == "oneOf":
        return CommandError("bad_field", _explain_branches(error, command), request_id)
    return CommandError("bad_field", _describe(error, command), request_id)


def _explain_branches(error, command) -> str:
    """oneOf: the variants of `command` in the schema, and what is wrong for the nearest one."""
    branches: dict = {}
    for e in error.context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)
    variants = {i: errs for i, errs in branches.items() if not any(list(e.path)[:1] == ["command"] for e in errs)}
    if not variants:
        return error.message[:200]
    fewest = min(len(errs) for errs in variants.values())
    nearest = [errs for errs in variants.values() if len(errs) == fewest]
    if len(nearest) == 1:
        errs = nearest[0]
        unknown = [e.instance for e in errs if _is_unknown_field(e)]
        if unknown and len(unknown) == len(errs):
            allowed = next(e.validator_value for e in errs if _is_unknown_field(e))
            return (f"{command}: unknown field(s) {', '.join(map(_show, unknown))} "
                    f"(allowed: {', '.join(allowed)})")
        return _describe(min(errs, key=lambda e: (not e.path, _is_unknown_field(e))), command)
    # Several variants are equally near: a field none of them takes, or not exactly one variant's own field.
    unknown = set.intersection(*({e.instance for e in errs if _is_unknown_field(e)} for errs in nearest))
    if unknown:
        return f"{command}: unknown field(s) {', '.join(map(_show, sorted(unknown)))}"
    own = [" and ".join(map(repr, error.validator_value[i].get("required", []))) for i in variants]
    return f"{command} needs exactly one of {' or '.join(own)}"


def _describe(error, command) -> str:
    field, value, expected = _field(error.path), error.instance, error.validator_value
    if _is_unknown_field(error):
        return f"{command}: unknown field {_show(value)} (allowed: {', '.join(expected)})"
    if error.validator == "enum":
        return f"{field} {_show(value)} is not one of: {', '.join(map(str, expected))}"
    if error.validator == "const":
        return f"{field} must be {expected!r}, got {_show(value)}"
    if error.validator == "type":
        kinds = [expected] if isinstance(expected, str) else list(expected)
        return f"{field} must be {' or '.join(_TYPE_WORDS.get(k, k) for k in kinds)}, got {_json_type(value)}"
    if error.validator == "minItems":
        return f"{field} must not be empty" if expected == 1 else f"{field} needs at least {expected} items"
    if error.validator == "uniqueItems":
        return f"{field} lists an item twice: {_show(value)}"
    if error.validator == "required":
        missing = next((name for name in expected if name not in value), expected[0])
        return f"{command}: no {missing!r} field"
    return f"{field}: {error.message[:200]}"
