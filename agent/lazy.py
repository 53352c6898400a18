"""Package exports imported on first use (PEP 562), so importing one submodule stays cheap.

`agent.settings` imports each part's settings module; an eager package `__init__` would drag in
that part's whole runtime (sources, VAD, watchdog) and cost `transcribe` its start-up time.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package` resolving each name in `exports` from its submodule."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return __getattr__
