"""Log setup: the systemd journal with structured fields, or plain lines on stderr.

Structured fields are passed the standard way and named in UPPER_CASE, as journal fields are:

    log.info("final", extra={"EVENT": "final", "UTTERANCE_ID": 7, "LATENCY_MS": 212.5, "PROVIDER": "cuda"})

- With journald (systemd-python's `JournalHandler`, the optional `journald` extra), each becomes a
  journal field: `journalctl -u stt-agent EVENT=final -o json`, or `journalctl -u stt-agent
  UTTERANCE_ID=7`.
- On stderr they are appended to the line as `KEY=value`. Under systemd without systemd-python,
  stderr still goes to the journal; each line then starts with a `<N>` syslog level prefix, so
  `journalctl -p warning` still works.

Privacy: the recognized text goes in the `TEXT` field, never into the message itself. It is
dropped from every record unless `LoggingSettings.log_text` is on (for debugging).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import TextIO

from agent.service.settings import LoggingSettings

PRIVATE_FIELDS = ("TEXT",)  # speech content: logged only with log_text
FIELD_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")  # a journal field name
# Fields the journal sets or the JournalHandler fills in itself: not appended to stderr lines.
_RESERVED = {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC"}
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_MARK = "_stt_agent_handler"


def fields(record: logging.LogRecord) -> dict:
    """The structured fields of a record: its UPPER_CASE attributes (from `extra=`)."""
    return {k: v for k, v in record.__dict__.items() if FIELD_NAME.match(k) and k not in _RESERVED}


class PrivacyFilter(logging.Filter):
    """Drops the speech text (`TEXT`) from records unless `log_text` is on."""

    def __init__(self, log_text: bool = False):
        super().__init__()
        self.log_text = log_text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.log_text:
            for name in PRIVATE_FIELDS:
                if name in record.__dict__:
                    delattr(record, name)
        return True


class FieldsFormatter(logging.Formatter):
    """`LEVEL logger: message KEY=value ...`, with a `<N>` syslog prefix when stderr is the journal."""

    def __init__(self, syslog_prefix: bool = False):
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.syslog_prefix = syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = fields(record)
        if extra:
            head, sep, tail = line.partition("\n")  # keep a traceback below the fields
            line = head + " " + " ".join(f"{k}={_value(v)}" for k, v in extra.items()) + sep + tail
        if self.syslog_prefix:
            prefix = f"<{syslog_priority(record.levelno)}>"
            line = "\n".join(prefix + part for part in line.split("\n"))
        return line


def _value(value) -> str:
    if isinstance(value, float):
        value = round(value, 3)
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def syslog_priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _SYSLOG_PRIORITY[level]
    return _SYSLOG_PRIORITY[logging.DEBUG]


def journal_stream(stream: TextIO | None = None, env: Mapping[str, str] | None = None) -> bool:
    """True if `stream` (stderr) is connected to the journal (systemd sets `$JOURNAL_STREAM=dev:ino`)."""
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    stream = sys.stderr if stream is None else stream
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def journal_handler_class():
    """systemd-python's JournalHandler, or None when it is not installed."""
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    return JournalHandler


def _under_systemd(env: Mapping[str, str]) -> bool:
    return bool(env.get("INVOCATION_ID") or env.get("JOURNAL_STREAM")) and os.path.exists("/run/systemd/journal/socket")


def level_of(settings: LoggingSettings, verbose: int = 0) -> int:
    """The configured level, lowered 10 per -v (info -v -> debug)."""
    return max(logging.DEBUG, _LEVELS[settings.level] - 10 * max(0, verbose))


def setup_early_logging(verbose: int = 0, stream: TextIO | None = None) -> None:
    """Before the config is read: warnings (infos with -v) as plain stderr lines.

    The handler carries the same mark as setup_logging's, so `run`'s setup replaces it instead of
    adding a second one (two handlers put every record in the journal twice).
    """
    _replace_handler(logging.StreamHandler(sys.stderr if stream is None else stream),
                     max(logging.DEBUG, logging.WARNING - 10 * max(0, verbose)))


def _replace_handler(handler: logging.Handler, level: int) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _MARK, False):
            root.removeHandler(old)
            old.close()
    if handler.formatter is None:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(level)


def setup_logging(settings: LoggingSettings | None = None, verbose: int = 0, *,
                  stream: TextIO | None = None, identifier: str = "stt-agent",
                  env: Mapping[str, str] | None = None, journal_sender=None) -> str:
    """Configure the root logger once (replacing what an earlier call installed).

    Returns the backend used: "journald" or "stderr". `journal_sender` replaces the function the
    JournalHandler sends with (tests).
    """
    settings = settings or LoggingSettings()
    env = os.environ if env is None else env
    stream = sys.stderr if stream is None else stream
    backend, handler = "stderr", None
    if settings.journald != "off":
        cls = journal_handler_class()
        wanted = settings.journald == "on" or _under_systemd(env)
        if cls is not None and wanted:
            kwargs = {"SYSLOG_IDENTIFIER": identifier}
            if journal_sender is not None:
                kwargs["sender_function"] = journal_sender
            handler = cls(**kwargs)
            handler.setFormatter(logging.Formatter("%(message)s"))
            backend = "journald"
        elif settings.journald == "on":
            why = "systemd-python is not installed (pip install 'stt-agent[journald]')" if cls is None else \
                "no journal"
            print(f"warning: logging.journald is on but {why}; logging to stderr", file=stream)
    if handler is None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(FieldsFormatter(syslog_prefix=journal_stream(stream, env)))
    handler.addFilter(PrivacyFilter(settings.log_text))
    _replace_handler(handler, level_of(settings, verbose))
    return backend
