"""The shipped config.yaml, written from the settings classes: every key, its default and its doc.

`python -m agent.config_doc > config.yaml` regenerates it; a test fails when the file and the
classes differ, so the users' documentation cannot drift from what the loader accepts.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap

HEADER = """\
# stt-agent configuration. Every key is optional; the values below are the defaults.
# Validate with: stt-agent check-config --config config.yaml   (exit 0, or 78 naming each bad key)
# Unknown keys are errors, so a typo never passes silently.
# Every command reads the first of: --config PATH, $STT_AGENT_CONFIG, ./config.yaml,
# /etc/stt-agent/config.yaml (none: these defaults).
# Per-device values can come from the environment: STT_AGENT_<SECTION>__<KEY>=value,
# e.g. STT_AGENT_MQTT__HOST=broker.lan, STT_AGENT_MQTT__DEVICE_ID=kiosk-7.
# This file is generated from the settings classes: python -m agent.config_doc > config.yaml
"""
WIDTH = 100


def _scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        plain = value and value.strip() == value and value not in ("auto",) and all(
            c.isalnum() or c in "-_./" for c in value) and not value[0].isdigit()
        return value if plain or value == "auto" else json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no YAML form for {value!r}")


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ",
                         break_long_words=False, break_on_hyphens=False)


def _doc(field) -> str:
    meta = field.metadata
    doc = meta["doc"]
    if meta.get("choices") is not None:
        doc += f" (one of: {', '.join(map(str, meta['choices']))})"
    elif meta.get("min") is not None and meta.get("max") is not None:
        doc += f" (range {meta['min']}..{meta['max']})"
    return doc


def _section(obj, indent: str) -> list[str]:
    lines = []
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        lines += _comment(_doc(field), indent)
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{field.name}:")
            lines += _section(value, indent + "  ")
        else:
            lines.append(f"{indent}{field.name}: {_scalar(value)}")
    return lines


def render() -> str:
    from agent.settings import Settings

    out = [HEADER.rstrip("\n")]
    root = Settings()
    for field in dataclasses.fields(root):
        out.append("")
        out += _comment(field.metadata["doc"], "")
        out.append(f"{field.name}:")
        out += _section(getattr(root, field.name), "  ")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
