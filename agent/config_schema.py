"""Turn parsed YAML into typed settings dataclasses, collecting every problem with its key and line.

Each settings class is a dataclass whose fields carry `metadata` with a `doc` string and, where it
applies, `min`/`max` bounds or a tuple of `choices`. Unknown keys are errors, like in Frigate's and
wyoming-satellite's settings: a typo must never be silently ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import typing
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

# A config is a few KB (the shipped one: 13 KB). The limits keep a hostile or broken file (a
# 100 MB file, 5,000-deep nesting, a "billion laughs" of aliases expanding to 10^9 values) to an
# answer in milliseconds instead of minutes of CPU and gigabytes of memory.
MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_VALUES = 10_000
_SHOW = 80  # characters of a value quoted back in a message


def show(value) -> str:
    """repr(value), cut to a readable length: a 20 MB wrong value is not echoed back whole."""
    text = repr(value)
    if len(text) <= _SHOW:
        return text
    return f"{text[:_SHOW]}... ({len(text)} characters)"


def setting(default, doc: str, *, min=None, max=None, choices=None):  # noqa: A002 - mirrors the YAML words
    """A dataclass field with its documentation and bounds (list/dict defaults are copied per instance)."""
    meta = {"doc": doc, "min": min, "max": max, "choices": choices}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls, doc: str):
    """A nested settings section (another dataclass), defaulting to its own defaults."""
    return dataclasses.field(default_factory=cls, metadata={"doc": doc})


class _Lines:
    """Line numbers of keys in the YAML source, addressed by dotted path."""

    def __init__(self, source: str | None):
        self.by_path: dict[str, int] = {}
        self.from_env: dict[str, str] = {}  # dotted path -> the environment variable that set it
        self.duplicates: list[str] = []  # "path (line N)" of keys given twice in one mapping
        if source:
            import yaml

            try:
                node = yaml.compose(source, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            except yaml.YAMLError:
                node = None
            if node is not None:
                self._walk(node, "")

    def _walk(self, node, prefix):
        import yaml

        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, value_node in node.value:
                key = _short_key(key_node.value)
                path = f"{prefix}.{key}" if prefix else key
                if path in seen:  # yaml.safe_load keeps the last one silently
                    self.duplicates.append(f"{path} (line {key_node.start_mark.line + 1})")
                seen.add(path)
                self.by_path.setdefault(path, key_node.start_mark.line + 1)
                self._walk(value_node, path)
        elif isinstance(node, yaml.SequenceNode):  # list items: "providers[0]"
            for i, item in enumerate(node.value):
                path = f"{prefix}[{i}]"
                self.by_path[path] = item.start_mark.line + 1
                self._walk(item, path)

    def where(self, path: str) -> str:
        if path in self.from_env:
            return f" (from environment {self.from_env[path]})"
        line = self.by_path.get(path)
        return f" (line {line})" if line else ""


def _short_key(key) -> str:
    text = str(key)
    return text if len(text) <= _SHOW else f"{text[:_SHOW]}...({len(text)} characters)"


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        item = typing.get_args(tp)[0]
        plural = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}
        return f"a list of {plural.get(item, item)}"
    if origin is dict:
        return "a mapping of strings"
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(args[0]) + " or null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _convert(tp, value, path, problems, lines):
    """Check `value` against the type `tp`; return the converted value or append a problem."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value is None and type(None) in typing.get_args(tp):
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    ok = True
    if origin is list:
        if not isinstance(value, list):
            ok = False
        else:
            (item_tp,) = typing.get_args(tp)
            return [_convert(item_tp, v, f"{path}[{i}]", problems, lines) for i, v in enumerate(value)]
    elif origin is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            problems.append(f"{path}{lines.where(path)}: expected a finite number, got {show(value)}")
            return value
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
        if isinstance(value, bool):
            problems.append(f"{path}{lines.where(path)}: expected a string, got {str(value).lower()} (YAML reads "
                            f"unquoted yes/no/on/off/true/false as true or false: quote the value)")
            return value
    if not ok:
        problems.append(f"{path}{lines.where(path)}: expected {_type_name(tp)}, got {show(value)}")
    return value


def _check_bounds(meta, value, path, problems, lines):
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    values = value if isinstance(value, list) else [value]
    for v in values:
        if choices is not None and v not in choices:
            allowed = ", ".join(map(str, choices))
            problems.append(f"{path}{lines.where(path)}: {show(v)} is not one of: {allowed}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                bounds = f"from {lo} to {hi}" if lo is not None and hi is not None else (
                    f"at least {lo}" if lo is not None else f"at most {hi}")
                problems.append(f"{path}{lines.where(path)}: {show(v)} is out of range (allowed: {bounds})")


def build(cls, data: Any, *, path: str = "", problems: list | None = None, lines: _Lines | None = None):
    """Build the dataclass `cls` from a mapping, recording problems instead of stopping at the first."""
    problems = [] if problems is None else problems
    lines = lines or _Lines(None)
    before_own = len(problems)
    nested = 0  # problems found inside nested sections: they do not stop this section's own checks
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{path or 'top level'}{lines.where(path)}: expected a mapping of settings, got {show(data)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            key_path = f"{path}.{_short_key(key)}" if path else _short_key(key)
            known = ", ".join(sorted(fields))
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(f"{key_path}{lines.where(key_path)}: unknown key ({hint}known keys here: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key_path = f"{path}.{name}" if path else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            before_nested = len(problems)
            kwargs[name] = build(tp, data[name], path=key_path, problems=problems, lines=lines)
            nested += len(problems) - before_nested
            continue
        before = len(problems)
        value = data[name]
        if isinstance(value, bool) and tp is str and {"on", "off"} <= set(f.metadata.get("choices") or ()):
            value = "on" if value else "off"  # `journald: off` unquoted is YAML's false
        value = _convert(tp, value, key_path, problems, lines)
        if len(problems) == before:
            _check_bounds(f.metadata, value, key_path, problems, lines)
        kwargs[name] = value
    obj = cls(**{k: v for k, v in kwargs.items()})
    check = getattr(obj, "check", None)
    if check is not None and len(problems) - before_own - nested == 0:
        for where, message in check():
            full = f"{path}.{where}" if path else where
            problems.append(f"{full}{lines.where(full)}: {message}")
    return obj


def load_settings(cls, path: str | Path | None, env=None):
    """Read and validate a YAML file (and STT_AGENT_* overrides) into `cls`; raise ConfigError listing every problem."""
    if path is None:
        path, source = Path("(defaults)"), ""
    else:
        path = Path(path)
    try:
        source = source if str(path) == "(defaults)" else _read(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} (line {line}): not UTF-8 text (byte 0x{exc.object[exc.start]:02x})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    if not source:  # the defaults: yaml's import is a tenth of transcribe's start-up
        data = None
    else:
        data = _parse(source, path)
    lines = _Lines(source)
    problems: list[str] = [f"{d}: key given twice (YAML would silently keep the last one)" for d in lines.duplicates]
    data = apply_env(cls, data, os.environ if env is None else env, problems, lines)
    settings = build(cls, data, problems=problems, lines=lines)
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])
    return settings


ENV_PREFIX = "STT_AGENT_"


def apply_env(cls, data, env, problems: list, lines: _Lines):
    """Deployment overrides: STT_AGENT_<SECTION>__<KEY>=value (e.g. STT_AGENT_MQTT__HOST=broker.lan).

    Values are read as YAML scalars (numbers, true/false), except for string settings, which
    take the text as it is; a list setting takes comma-separated items (zh,en, as the CLI's
    --allowed-languages does) or a YAML flow list ([zh, en]). A variable naming no setting is an
    error, like an unknown key.
    """
    data = copy.deepcopy(data) if isinstance(data, dict) else ({} if data is None else data)
    if not isinstance(data, dict):
        return data
    for name in sorted(env):
        rest = name[len(ENV_PREFIX):]
        if not name.startswith(ENV_PREFIX) or "__" not in rest:
            continue  # STT_AGENT_CONFIG and friends are not settings
        keys = rest.lower().split("__")
        target, tp = data, cls
        for depth, key in enumerate(keys):
            fields = {f.name: f for f in dataclasses.fields(tp)}
            hint = typing.get_type_hints(tp).get(key)
            if key not in fields or (depth < len(keys) - 1 and not dataclasses.is_dataclass(hint)):
                problems.append(f"environment {name}: {'.'.join(keys)} is not a setting")
                break
            if depth == len(keys) - 1:
                target[key] = _env_value(hint, env[name])
                lines.from_env[".".join(keys)] = name
                break
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target, tp = target[key], hint
    return data


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}: over {MAX_BYTES // 1024} KiB; a config file is a few KB (is this the right file?)")
    return raw.decode("utf-8")


def _check_shape(source: str, path: Path) -> None:
    """Depth and alias expansion from the event stream, which PyYAML parses without recursion."""
    import yaml

    open_nodes: list = []  # [values so far, anchor] per open mapping/sequence
    sizes: dict = {}  # anchor -> values it expands to

    def add(n: int, mark) -> None:
        if open_nodes:
            open_nodes[-1][0] += n
            if open_nodes[-1][0] > MAX_VALUES:
                raise ConfigError(f"{path} (line {mark.line + 1}): expands to more than {MAX_VALUES} values "
                                  "(YAML aliases repeating each other?); a config has a few hundred")

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        for event in yaml.parse(source, Loader=loader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                open_nodes.append([1, event.anchor])
                if len(open_nodes) > MAX_DEPTH:
                    raise ConfigError(f"{path} (line {event.start_mark.line + 1}): nested deeper than {MAX_DEPTH} "
                                      "levels; settings are at most 4 deep")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                count, anchor = open_nodes.pop()
                if anchor:
                    sizes[anchor] = count
                add(count, event.start_mark)
            elif isinstance(event, yaml.ScalarEvent):
                if event.anchor:
                    sizes[event.anchor] = 1
                add(1, event.start_mark)
            elif isinstance(event, yaml.AliasEvent):
                add(sizes.get(event.anchor, 1), event.start_mark)
    except yaml.YAMLError:
        return  # safe_load reports it, with its line


def _parse(source: str, path: Path):
    import yaml

    _check_shape(source, path)
    try:
        return yaml.load(source, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None


def _env_value(tp, text: str):
    """An environment variable's text as the setting of type `tp` reads it (see apply_env)."""
    if _is_str(tp):
        return text
    if typing.get_origin(tp) is list and not text.lstrip().startswith("["):
        item_is_str = _is_str(typing.get_args(tp)[0])
        return [item if item_is_str else _scalar(item) for item in (i.strip() for i in text.split(",")) if item]
    return _scalar(text)


def _is_str(tp) -> bool:
    return tp is str or (typing.get_origin(tp) is typing.Union and str in typing.get_args(tp))


def _scalar(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
