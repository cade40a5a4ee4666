"""The SQLite layer under the stores: how the log (logs.db) and the memory store (memory.db)
open, migrate, lock and report a database file.

`Database.open(path, ...)` checks that this Python's sqlite3 has FTS5 (both stores search with
it), refuses a file that is not a SQLite database, creates a missing file owner-only, puts it in
WAL mode and applies the store's named migrations. A store then works through `transaction()`
(one BEGIN IMMEDIATE, or BEGIN for a consistent read), `read()` (one query, all its rows) and
`execute()` (one statement outside a transaction: a PRAGMA, a quick look).

Invariants:
- A file this layer creates is mode 0600 from its creation (created with os.open before SQLite
  touches it; SQLite gives its -wal and -shm files the same mode), and a directory it must
  create for it is 0700. Existing files and directories keep their modes.
- A non-empty file without the SQLite header is refused and left untouched; so is a corrupt one.
- Migrations are (name, function) pairs, applied once each, in order, each in its own
  transaction together with its row in `_migrations`: a failing one leaves the file as it was.
  A store's legacy table of applied names (memory.db's `migrations`) is taken over into
  `_migrations` (and dropped) in one transaction, so nothing applied before runs again.
- Threads share one connection behind one re-entrant lock (`lock`); processes share the file
  through WAL and a busy timeout. Two llmos creating a file at once can both get SQLITE_BUSY
  while switching to WAL (a deadlock SQLite breaks by failing at once): opening waits briefly
  (params.STORE_OPEN_BUSY_MS) and retries every params.STORE_OPEN_RETRY_S until the busy
  timeout has passed.
- No sqlite3 exception leaves this layer: each becomes one line of the store's own error class
  (LogStoreError, MemoryStoreError), naming the file and saying whether it is locked, full,
  corrupt or read-only.

What this layer does not do: know any store's tables, repair or replace a file, or retry a
write that found the file locked once it is open (the busy timeout is the wait).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from llmos import params
from llmos.errors import LlmosError

Migration = tuple[str, Callable[[sqlite3.Connection], None]]
MIGRATIONS_TABLE = "_migrations"
FILE_MODE = 0o600  # a database file this layer creates
DIR_MODE = 0o700  # a directory this layer creates to hold one
_SQLITE_HEADER = b"SQLite format 3\x00"


@functools.cache
def has_fts5() -> bool:
    """Whether this Python's sqlite3 can create an FTS5 table (checked in memory, once)."""
    try:
        conn = sqlite3.connect(":memory:")
    except sqlite3.Error:
        return False
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.fts5_probe USING fts5(x)")
        conn.execute("DROP TABLE temp.fts5_probe")
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return True


class Database:
    """One open database file of a store. Open with `Database.open()`; thread-safe."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        label: str,
        error: type[LlmosError],
        busy_timeout_s: float,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self.label = label
        self.error_class = error
        self.busy_timeout_s = busy_timeout_s
        self.lock = threading.RLock()

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        label: str,
        error: type[LlmosError],
        migrations: Sequence[Migration],
        busy_timeout_s: float,
        legacy_migrations_table: str | None = None,
        pragmas: Sequence[str] = (),
        row_factory: type[sqlite3.Row] | None = None,
    ) -> Database:
        """Open (creating and migrating if needed) the database at `path`.

        `label` names the file in messages ("log database"), `error` is the store's error
        class, `pragmas` are run on the connection before migrating, `row_factory` is set on it.
        """
        if not has_fts5():
            raise error(
                f"this Python's sqlite3 lacks FTS5, which the llmos {label} needs for search; "
                "install a Python built with FTS5 (e.g. from python.org, uv, pyenv or your "
                "distribution's python3 package linked against a system SQLite with FTS5)"
            )
        _check_header(path, label, error)
        _create(path, label, error)
        try:
            conn = sqlite3.connect(
                path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _error(path, label, error, busy_timeout_s, "open", exc) from exc
        conn.row_factory = row_factory
        db = cls(conn, path, label=label, error=error, busy_timeout_s=busy_timeout_s)
        deadline = time.monotonic() + busy_timeout_s
        try:
            while True:
                try:
                    with db.guard("open"):
                        # Short waits while opening: two openers that deadlock (both want
                        # the exclusive lock to switch to WAL) part at once and retry.
                        conn.execute(f"PRAGMA busy_timeout = {params.STORE_OPEN_BUSY_MS}")
                        for pragma in pragmas:
                            conn.execute(pragma)
                        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                        if str(mode).lower() != "wal":
                            raise error(f"{label} {path} cannot be put in WAL mode (got {mode})")
                        db._migrate(migrations, legacy_migrations_table)
                        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
                    break
                except LlmosError as exc:
                    # Switching to WAL or migrating can get SQLITE_BUSY at once, without the
                    # busy handler being called. Wait a moment and try again.
                    if not _is_busy(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(params.STORE_OPEN_RETRY_S)
        except BaseException:
            conn.close()
            raise
        return db

    # --- use ---

    @contextmanager
    def guard(self, what: str) -> Iterator[sqlite3.Connection]:
        """Hold the lock and turn any sqlite3 error into the store's error naming the file."""
        with self.lock:
            conn = self._conn
            if conn is None:
                raise self.error_class(f"{self.label} {self.path} is closed")
            try:
                yield conn
            except sqlite3.Error as exc:
                raise self.error(what, exc) from exc

    @contextmanager
    def transaction(self, what: str, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction (BEGIN IMMEDIATE for writes, BEGIN for a consistent read), under
        the lock and the error guard; any exception rolls it back and is raised."""
        with self.guard(what) as conn:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):  # the original error is the one to report
                        conn.execute("ROLLBACK")
                raise

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Every row of one query, read under the lock."""
        with self.guard("read") as conn:
            return conn.execute(sql, args).fetchall()

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        """One statement outside any transaction (autocommit), under the lock."""
        with self.guard("execute") as conn:
            return conn.execute(sql, args)

    def error(self, what: str, exc: sqlite3.Error) -> LlmosError:
        """The one-line store error for a sqlite3 error met while doing `what`."""
        return _error(self.path, self.label, self.error_class, self.busy_timeout_s, what, exc)

    def close(self) -> None:
        """Close the file; later calls raise the store's error. Closing twice is harmless."""
        with self.lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise self.error("close", exc) from exc

    # --- migrations ---

    def _migrate(self, migrations: Sequence[Migration], legacy: str | None) -> None:
        """Apply the migrations not yet recorded; take over a legacy table of applied names."""
        with self.guard("open") as conn:
            tables = _tables(conn)
        if MIGRATIONS_TABLE not in tables or (legacy is not None and legacy in tables):
            with self.transaction("migration setup") as conn:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}"
                    " (name TEXT PRIMARY KEY, applied_at REAL)"
                )
                if legacy is not None and legacy in _tables(conn):  # again, now locked
                    conn.execute(
                        f"INSERT OR IGNORE INTO {MIGRATIONS_TABLE} (name, applied_at)"
                        f" SELECT name, applied_at FROM {legacy}"
                    )
                    conn.execute(f"DROP TABLE {legacy}")
        with self.guard("open") as conn:
            done = {row[0] for row in conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE}")}
        for name, step in migrations:
            if name in done:
                continue
            with self.transaction(f"migration {name}") as conn:
                if conn.execute(
                    f"SELECT 1 FROM {MIGRATIONS_TABLE} WHERE name = ?", (name,)
                ).fetchone():
                    continue  # another llmos applied it while we waited for the lock
                step(conn)
                conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (name, applied_at) VALUES (?, ?)",
                    (name, time.time()),
                )


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _check_header(path: Path, label: str, error: type[LlmosError]) -> None:
    """Refuse, without touching it, a non-empty file that is not a SQLite database."""
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise error(f"{label} {path} cannot be read: {exc.strerror}") from exc
    if head and head != _SQLITE_HEADER:
        raise error(
            f"{label} {path} is corrupt or not a database (no SQLite header); it was left as "
            "it is: move it aside to start a new one"
        )


def _create(path: Path, label: str, error: type[LlmosError]) -> None:
    """Create `path` empty and owner-only (and its directory, 0700) if it does not exist."""
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise error(f"{label} {path} cannot be created: {exc.strerror}") from exc
    os.close(fd)


def _is_busy(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, sqlite3.OperationalError) and (
        "locked" in str(cause) or "busy" in str(cause)
    )


def _error(
    path: Path,
    label: str,
    error: type[LlmosError],
    busy_timeout_s: float,
    what: str,
    exc: sqlite3.Error,
) -> LlmosError:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    low = text.lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in low or "busy" in low:
        why = (
            f"is locked by another writer (waited {busy_timeout_s:g} s during {what}); "
            "try again when it is done"
        )
    elif name.startswith("SQLITE_FULL") or "is full" in low:
        why = "could not be written: the disk is full (nothing was written)"
    elif (
        name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
        or "malformed" in low
        or "not a database" in low
        or "corrupt" in low
    ):
        why = (
            f"is corrupt or not a database ({text}); it was left as it is: "
            "move it aside to start a new one"
        )
    elif name.startswith("SQLITE_READONLY") or "readonly" in low or "read-only" in low:
        why = f"is read-only ({text})"
    else:
        why = f"failed during {what}: {text}"
    return error(f"{label} {path} {why}")
