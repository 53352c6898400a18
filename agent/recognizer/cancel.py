"""Cancelling a decode in progress from another thread (the scheduler aborts stale partials)."""

from __future__ import annotations

import threading
from typing import Callable, List


class DecodeCancelled(Exception):
    """The decode was cancelled before it finished; it has no result."""


class CancelToken:
    def __init__(self):
        self._lock = threading.Lock()
        self._cancelled = False
        self._hooks: List[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self):
        with self._lock:
            self._cancelled = True
            hooks = list(self._hooks)
        for hook in hooks:
            hook()

    def on_cancel(self, hook: Callable[[], None]):
        """Run `hook` when cancelled (at once if that already happened)."""
        with self._lock:
            self._hooks.append(hook)
            already = self._cancelled
        if already:
            hook()
