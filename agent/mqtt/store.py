"""The durable outbox: the kept messages in an SQLite file (WAL), so finals outlive the process.

The memory outbox (outbox.py) stays the working set; this file is its journal. Every message of a
PERSISTED kind that enters the outbox is written here, and its row is deleted when it leaves for
good: a PUBACK (or the broker's refusal), a QoS 0 send, a drop (cap, expiry). On the next start the
rows still there are read back, before anything new, in the order they were made (the row id), and
delivered first.

Nothing on the pipeline's path touches the disk: `add` and `remove` put a tuple on a queue; one
writer thread commits whatever has gathered in one transaction (synchronous=FULL: a committed row
survives a power cut). Any failure of the file (full disk, read-only, corrupt, a writer too far
behind) makes the store give up for the rest of the run: `on_failure(reason)` is called once and
the memory outbox goes on alone, no worse than without a file.

One file per instance: an exclusive flock on `<file>.lock` (the pid inside). A second agent on the
same file is a configuration error (OutboxInUse), not a silent second writer.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.errors import ConfigError
from agent.mqtt.payloads import Message

log = logging.getLogger(__name__)

# What survives a restart: what a controller acts on. Partials and vad are stale by then; answers to
# commands answer a process that is gone; statuses are re-sent by the new process; the Hermes mirror
# is the final's copy on another topic.
PERSISTED_KINDS = ("final", "emotion", "language", "error")
# A writer this far behind (writes waiting in memory) means a disk that hangs: give it up. 32 streams
# with a final every 2 s make ~100 writes/s (final, emotion, language: each added, then deleted), so
# 100,000 is about 15 minutes of a disk that does not answer.
MAX_BACKLOG = 100_000
SCHEMA = """CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, event_type TEXT, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, seq INTEGER, created REAL NOT NULL, expiry_s INTEGER NOT NULL)"""
_STOP = object()


class OutboxInUse(ConfigError):
    """Another running agent holds the outbox file."""


class DiskStore:
    def __init__(self, path: str | Path, *, expiry_s: int, on_failure: Callable[[str], None] | None = None,
                 max_page_count: int | None = None):
        """`expiry_s`: the life new rows are given (message_expiry_s; 0 = never expire).
        `max_page_count`: SQLite's page limit (a size cap for tests that cannot fill a real disk)."""
        self.path = Path(path)
        self.expiry_s = expiry_s
        self._on_failure = on_failure
        self._max_page_count = max_page_count
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._next_id = 1
        self._writer: threading.Thread | None = None
        self.problem: str | None = None  # why the file was given up; None while it works
        self.rows = 0  # rows on disk once the writer has caught up
        self.restored = 0  # rows read back at start and queued again
        self.expired_at_start = 0  # rows read back too old to send (deleted)
        self.expired_by_type: dict = {}  # those, by event type

    @property
    def active(self) -> bool:
        return self.problem is None and self._db is not None

    # ------------------------------------------------------------------ start (the caller's thread)
    def open(self) -> list[Message]:
        """Lock and open the file; return the unexpired rows as messages, oldest first.

        OutboxInUse if another agent holds the file; any other failure gives the file up (`problem`,
        on_failure) and returns []."""
        try:
            self._lock()
            self._db = self._connect()
            messages = self._restore()
        except OutboxInUse:
            raise
        except (sqlite3.Error, OSError) as exc:
            self._fail(_describe(exc))
            return []
        self._writer = threading.Thread(target=self._write_loop, name="mqtt-outbox-writer", daemon=True)
        self._writer.start()
        return messages

    def _lock(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = f"{self.path}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutboxInUse(f"mqtt.outbox_path: {self.path} is in use by another running stt-agent (pid "
                                  f"{holder}); give each instance its own outbox_path (the default is one file "
                                  "per client_id)") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=0, isolation_level=None, check_same_thread=False)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL mode here (journal_mode is {mode})")
            db.execute("PRAGMA synchronous=FULL")
            if self._max_page_count:
                db.execute(f"PRAGMA max_page_count={int(self._max_page_count)}")
            db.execute(SCHEMA)
            db.execute("PRAGMA user_version=1")
        except BaseException:
            db.close()
            raise
        return db

    def _restore(self) -> list[Message]:
        now_wall, now = time.time(), time.monotonic()
        messages, expired = [], []
        for row_id, kind, event_type, topic, payload, qos, seq, created, expiry_s in self._db.execute(
                "SELECT id, kind, event_type, topic, payload, qos, seq, created, expiry_s FROM outbox ORDER BY id"):
            age = max(0.0, now_wall - created)  # a clock set back makes nothing younger than new
            if expiry_s and age >= expiry_s:
                expired.append((row_id,))
                kind = event_type or kind
                self.expired_by_type[kind] = self.expired_by_type.get(kind, 0) + 1
                continue
            messages.append(Message(kind, topic, bytes(payload), qos, seq=seq, created=now - age,
                                    event_type=event_type, store_id=row_id, expiry_s=expiry_s))
            self._next_id = row_id + 1
        last = self._db.execute("SELECT max(id) FROM outbox").fetchone()[0]
        self._next_id = max(self._next_id, (last or 0) + 1)
        if expired:
            with self._db:
                self._db.executemany("DELETE FROM outbox WHERE id = ?", expired)
        self.restored, self.expired_at_start = len(messages), len(expired)
        self.rows = len(messages)
        return messages

    # ------------------------------------------------------------------ the outbox's calls (never block)
    def add(self, message: Message):
        """Journal a message entering the outbox (called with the outbox's lock held: ids follow its order)."""
        if message.store_id is not None or message.kind not in PERSISTED_KINDS or not self.active:
            return
        message.store_id = self._next_id
        self._next_id += 1
        self._push(("add", message.store_id, message.kind, message.event_type, message.topic, message.payload,
                    message.qos, message.seq, time.time() - (time.monotonic() - message.created), self.expiry_s))

    def remove(self, message: Message):
        """The message left the outbox for good (acknowledged, refused, sent at QoS 0, dropped)."""
        if message.store_id is None or not self.active:
            return
        self._push(("del", message.store_id))
        message.store_id = None

    def _push(self, item):
        # the queue's own count: a counter shared by this thread and the writer would lose updates
        if self._queue.qsize() >= MAX_BACKLOG:
            self._fail(f"the disk is too slow: {MAX_BACKLOG} writes waiting")
            return
        self._queue.put(item)

    # ------------------------------------------------------------------ the writer thread
    def _write_loop(self):
        while True:
            batch = [self._queue.get()]
            try:
                while len(batch) < 10_000:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            rows = [item for item in batch if isinstance(item, tuple) and item[0] in ("add", "del")]
            if self.active:
                try:
                    self._write(rows)
                except Exception as exc:  # noqa: BLE001 - sqlite3.Error, OSError, or a bug: the memory outbox goes on
                    self._fail(_describe(exc))
            for item in batch:
                if isinstance(item, tuple) and item[0] == "flush":
                    item[1].set()
            if any(item is _STOP for item in batch):
                return

    def _write(self, rows):
        deleted = {item[1] for item in rows if item[0] == "del"}
        # a row added and deleted in the same batch (delivered within one commit) never reaches the disk
        adds = [item[1:] for item in rows if item[0] == "add" and item[1] not in deleted]
        born_here = {item[1] for item in rows if item[0] == "add"}
        dels = [(i,) for i in deleted - born_here]
        if not adds and not dels:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", adds)
            db.executemany("DELETE FROM outbox WHERE id = ?", dels)
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # a full or broken file: the caller gives it up
            raise
        self.rows += len(adds) - len(dels)

    # ------------------------------------------------------------------ failure and stop
    def _fail(self, reason: str):
        if self.problem is not None:
            return
        self.problem = reason
        if self._on_failure is not None:
            self._on_failure(reason)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until what was queued so far is written (tests and the benchmark)."""
        if self._writer is None or not self._writer.is_alive():
            return False
        done = threading.Event()
        self._queue.put(("flush", done))
        return done.wait(timeout)

    def close(self, timeout: float = 5.0):
        """Write what is queued (bounded), close the file and release the lock."""
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join(timeout)
        if self._db is not None and (self._writer is None or not self._writer.is_alive()):
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"
