"""The log: the journal of every run, in one SQLite file (`<home>/logs.db`).

Each run of a program is a row in `runs`. The conversation it sent and the reply it got are rows
in `messages`, a content-addressed tree: a message's hash is the SHA-256 of its canonical JSON
and its parent's hash, so a chain is named by its last hash (its head), and chains that share a
prefix share those rows (a system prompt used by a thousand runs is stored once). `runs_fts` is
an FTS5 index over each run's program, inputs, prompt, response and error. A run read back is a
`RunRecord` (`llmos.store.runrecord`).

Invariants:
- `start_run` writes the run, status 'running', before the CPU sees the prompt; the run then
  moves exactly once to 'ok', 'failed' or 'cancelled' (`finish_run`), or to 'failed' with
  error_kind 'lost' when the process that owned it died (`fail_stale_runs`). A crash leaves a
  'running' row, never a missing one.
- Every write is one `BEGIN IMMEDIATE` transaction that updates `runs`, `messages` and
  `runs_fts` together, so the index never disagrees with the rows. Message rows never change.
- Run ids are 32 hex digits, 12 of milliseconds then 20 random (monotonic within a process), so
  `ORDER BY id` is chronological and a short prefix names a run. `runs_fts` finds a run's row
  by its indexed `run_id` token, not by rowid (VACUUM may renumber the rowids of `runs`).
- Opening, locking, migrations and errors are `llmos.store.db`'s: a file that is not a SQLite
  database (or is corrupt) is refused and left untouched; no sqlite3 exception leaves a public
  method (each becomes a one-line LogStoreError naming the file); threads share one connection
  behind a lock, processes share the file through WAL and a busy timeout
  (params.LOG_BUSY_TIMEOUT_S).
- Schema changes are named migrations (`MIGRATIONS`), each applied once, in order, in its own
  transaction. Append new ones; never edit an applied one.

- While `journal` is False (`llmos logs off`, set by the kernel from config), `start_run`
  returns a fresh run id and writes nothing, and `finish_run` of such an id does nothing:
  those runs are not journalled at all (neither prompt, reply nor row). The usage ledger is
  not affected.

- Reads can be scoped to one owner (`list_runs`, `get_run`, `messages` take `owner`): the
  filter is in the SQL, so another owner's runs are neither returned nor counted.

What this module does not do: decide when a run starts or ends (the kernel calls it), repair a
corrupt file, prune old runs, or tell a local pid from another machine's (`fail_stale_runs`
assumes the processes that wrote the log ran here).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from llmos import config, params
from llmos.errors import LogStoreError
from llmos.store.db import Database, Migration
from llmos.store.runrecord import RUN_COLUMNS, RunRecord
from llmos.store.usage import Ledger
from llmos.store.usage import migrate as _m002_usage
from llmos.store.usage import migrate_cpu as _m003_usage_cpu

STATUSES = ("running", "ok", "failed", "cancelled")
FINAL_STATUSES = ("ok", "failed", "cancelled")
_FTS_COLUMNS = "{program inputs prompt response error}"  # the columns a user's query searches

# --- Migrations -----------------------------------------------------------------------------


def _m001_schema(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE messages (
            hash TEXT PRIMARY KEY,
            parent TEXT NULL REFERENCES messages(hash),
            role TEXT,
            content TEXT,
            extra JSON NULL,
            created_at REAL NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            started_at REAL NOT NULL,
            ended_at REAL NULL,
            program TEXT NOT NULL,
            program_path TEXT NULL,
            cpu TEXT NOT NULL,
            inputs JSON NOT NULL,
            prompt_head TEXT NULL REFERENCES messages(hash),
            response_head TEXT NULL REFERENCES messages(hash),
            response TEXT NULL,
            status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'cancelled')),
            error_kind TEXT NULL,
            error TEXT NULL,
            prompt_tokens INT NOT NULL DEFAULT 0,
            completion_tokens INT NOT NULL DEFAULT 0,
            ttft_ms REAL NULL,
            duration_ms REAL NULL,
            pid INT NULL,
            owner TEXT NULL,
            parent_run TEXT NULL,
            extra JSON NULL
        )"""
    )
    conn.execute("CREATE INDEX runs_program ON runs(program, id)")
    conn.execute("CREATE INDEX runs_status ON runs(status, id)")
    conn.execute(
        """CREATE VIRTUAL TABLE runs_fts USING fts5(
            run_id, program, inputs, prompt, response, error,
            tokenize = 'porter unicode61 remove_diacritics 2'
        )"""
    )


MIGRATIONS: list[Migration] = [
    ("001_schema", _m001_schema),
    ("002_usage", _m002_usage),  # the usage ledger (llmos.store.usage)
    ("003_usage_cpu", _m003_usage_cpu),  # per pool CPU (llmos.store.usage)
]

# --- Helpers --------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, UTF-8 kept; unknown types become strings."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        )
    except ValueError as exc:  # a circular reference
        raise LogStoreError(f"cannot store value in the log: {exc}") from exc


def message_hash(message: dict[str, Any], parent: str | None) -> str:
    """The content address of `message` placed after the message whose hash is `parent`."""
    text = _dumps(message) + "\n" + (parent or "")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_id_lock = threading.Lock()
_id_last = (0, 0)  # (ms, random) of the last id this process made


def new_run_id() -> str:
    """A 32-hex-digit id: ms timestamp then 80 random bits, increasing within this process."""
    global _id_last
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        rand = int.from_bytes(os.urandom(10), "big")
        last_ms, last_rand = _id_last
        if ms <= last_ms:
            ms, rand = last_ms, last_rand + 1
            if rand >= 1 << 80:
                ms, rand = ms + 1, 0
        _id_last = (ms, rand)
    return f"{ms:012x}{rand:020x}"


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process on this machine (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _fts_query(text: str) -> str | None:
    """A user's search text as a safe FTS5 query: every word a quoted phrase, all ANDed.

    A word ending in `*` is a prefix search. Words with no letter or digit are dropped (they
    hold no token); None means nothing is left to search for.
    """
    phrases = []
    for word in text.split():
        prefix = word.endswith("*")
        word = word.rstrip("*")
        if not any(ch.isalnum() for ch in word):
            continue
        phrase = '"' + word.replace('"', '""') + '"'
        phrases.append(phrase + "*" if prefix else phrase)
    if not phrases:
        return None
    return f"{_FTS_COLUMNS} : (" + " ".join(phrases) + ")"


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else _dumps(content)


# --- The log --------------------------------------------------------------------------------


class Log:
    """A handle on the log database. Open with `Log.open()`; safe to share between threads."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.path = db.path
        self.usage = Ledger(db)  # per-owner, per-day usage (llmos.store.usage)
        self.journal = True  # False: runs are not journalled (see the module note)
        self._unjournalled: set[str] = set()

    @classmethod
    def open(cls, path: Path | None = None) -> Log:
        """Open (creating and migrating if needed) the log at `path`, default `<home>/logs.db`."""
        path = Path(path) if path is not None else config.home() / params.LOG_DB_NAME
        db = Database.open(
            path,
            label="log database",
            error=LogStoreError,
            migrations=MIGRATIONS,
            busy_timeout_s=params.LOG_BUSY_TIMEOUT_S,
            pragmas=("PRAGMA foreign_keys = ON",),
            row_factory=sqlite3.Row,
        )
        return cls(db)

    # --- plumbing ---

    def _insert_chain(
        self, conn: sqlite3.Connection, messages: list[dict[str, Any]], parent: str | None = None
    ) -> str | None:
        """Store `messages` as a chain after `parent` (shared prefixes once); the last hash."""
        now = time.time()
        for message in messages:
            digest = message_hash(message, parent)
            content = message.get("content")
            extra = {k: v for k, v in message.items() if k not in ("role", "content")}
            if "content" in message and not isinstance(content, str):
                extra["content"] = content  # None or structured content: kept exactly in extra
            conn.execute(
                "INSERT OR IGNORE INTO messages (hash, parent, role, content, extra, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    digest,
                    parent,
                    message.get("role"),
                    content if isinstance(content, str) else None,
                    _dumps(extra) if extra else None,
                    now,
                ),
            )
            parent = digest
        return parent

    def _chain(self, conn: sqlite3.Connection, head: str | None) -> list[dict[str, Any]]:
        """The messages from the root to `head`, root first."""
        if head is None:
            return []
        rows = conn.execute(
            """WITH RECURSIVE chain(hash, parent, role, content, extra, depth) AS (
                   SELECT hash, parent, role, content, extra, 0 FROM messages WHERE hash = ?
                   UNION ALL
                   SELECT m.hash, m.parent, m.role, m.content, m.extra, c.depth + 1
                   FROM messages m JOIN chain c ON m.hash = c.parent
               )
               SELECT role, content, extra FROM chain ORDER BY depth DESC""",
            (head,),
        ).fetchall()
        out: list[dict[str, Any]] = []
        for row in rows:
            message: dict[str, Any] = {"role": row["role"]}
            if row["content"] is not None:
                message["content"] = row["content"]
            if row["extra"]:
                message.update(json.loads(row["extra"]))
            out.append(message)
        return out

    def _index(self, conn: sqlite3.Connection, run_id: str) -> None:
        """(Re)write the search row of `run_id` from what the database holds now."""
        conn.execute(
            "DELETE FROM runs_fts WHERE rowid IN "
            "(SELECT rowid FROM runs_fts WHERE runs_fts MATCH ?)",
            (f'run_id : "{run_id}"',),
        )
        row = conn.execute(
            "SELECT program, inputs, prompt_head, response, error_kind, error FROM runs"
            " WHERE id = ?",
            (run_id,),
        ).fetchone()
        prompt = "\n".join(
            _content_text(m.get("content")) for m in self._chain(conn, row["prompt_head"])
        )
        error = " ".join(part for part in (row["error_kind"], row["error"]) if part)
        conn.execute(
            "INSERT INTO runs_fts (run_id, program, inputs, prompt, response, error)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, row["program"], row["inputs"], prompt, row["response"] or "", error),
        )

    def _resolve(
        self, conn: sqlite3.Connection, run_id: str, owner: str | None = None
    ) -> sqlite3.Row | None:
        """The row whose id is `run_id` or uniquely starts with it (among `owner`'s runs only,
        when given: another owner's run is never found, nor makes a prefix ambiguous)."""
        mine, args = ("", ()) if owner is None else (" AND owner = ?", (owner,))
        row = conn.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?{mine}", (run_id, *args)
        ).fetchone()
        if row is not None:
            return row
        prefix = run_id.strip().lower()
        if not prefix or any(ch not in "0123456789abcdef" for ch in prefix):
            return None
        rows = conn.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE id >= ? AND id < ?{mine} ORDER BY id LIMIT 2",
            (prefix, prefix + "g", *args),  # 'g' sorts after every hex digit
        ).fetchall()
        if len(rows) > 1:
            raise LogStoreError(f"run id prefix {run_id!r} is ambiguous: give more digits")
        return rows[0] if rows else None

    # --- the API ---

    def start_run(
        self,
        program: str,
        cpu: str,
        inputs: dict[str, Any],
        messages: list[dict[str, Any]],
        program_path: str | None = None,
        pid: int | None = None,
        owner: str | None = None,
        parent_run: str | None = None,
    ) -> str:
        """Record a run that is starting, with its prompt; returns the new run id."""
        run_id = new_run_id()
        if not self.journal:
            self._unjournalled.add(run_id)
            return run_id
        inputs_json = _dumps(inputs)
        with self._db.transaction("start_run") as conn:
            head = self._insert_chain(conn, messages)
            conn.execute(
                "INSERT INTO runs (id, started_at, program, program_path, cpu, inputs,"
                " prompt_head, status, pid, owner, parent_run)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                (
                    run_id,
                    time.time(),
                    program,
                    program_path,
                    cpu,
                    inputs_json,
                    head,
                    pid,
                    owner,
                    parent_run,
                ),
            )
            self._index(conn, run_id)
        return run_id

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        response: str | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        ttft_ms: float | None = None,
        duration_ms: float | None = None,
        error_kind: str | None = None,
        error: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Record how a running run ended. duration_ms defaults to the wall time since start."""
        if status not in FINAL_STATUSES:
            raise LogStoreError(f"cannot finish run {run_id} with status {status!r}")
        if run_id in self._unjournalled:
            self._unjournalled.discard(run_id)
            return
        extra_json = _dumps(extra) if extra is not None else None
        with self._db.transaction("finish_run") as conn:
            row = conn.execute(
                "SELECT status, started_at, prompt_head FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise LogStoreError(f"{self.path}: no run {run_id} to finish")
            if row["status"] != "running":
                raise LogStoreError(f"{self.path}: run {run_id} already finished ({row['status']})")
            ended_at = time.time()
            if duration_ms is None:
                duration_ms = max(0.0, (ended_at - row["started_at"]) * 1000.0)
            response_head = None
            if response is not None:
                reply = {"role": "assistant", "content": response}
                response_head = self._insert_chain(conn, [reply], row["prompt_head"])
            conn.execute(
                "UPDATE runs SET ended_at = ?, status = ?, response = ?, response_head = ?,"
                " prompt_tokens = ?, completion_tokens = ?, ttft_ms = ?, duration_ms = ?,"
                " error_kind = ?, error = ?, extra = ? WHERE id = ?",
                (
                    ended_at,
                    status,
                    response,
                    response_head,
                    prompt_tokens,
                    completion_tokens,
                    ttft_ms,
                    duration_ms,
                    error_kind,
                    error,
                    extra_json,
                    run_id,
                ),
            )
            self._index(conn, run_id)

    def get_run(self, run_id: str, owner: str | None = None) -> RunRecord | None:
        """The run whose id is `run_id` or uniquely starts with it (one of `owner`'s, when
        given); None if there is none."""
        with self._db.transaction("get_run", write=False) as conn:
            row = self._resolve(conn, run_id, owner)
        return RunRecord.from_row(row) if row is not None else None

    def messages(self, run_id: str, owner: str | None = None) -> list[dict[str, Any]]:
        """The run's prompt, root first, then its response (if it has one); a run of another
        owner than `owner` (when given) is not found."""
        with self._db.transaction("messages", write=False) as conn:
            row = self._resolve(conn, run_id, owner)
            if row is None:
                raise LogStoreError(f"{self.path}: no run {run_id}")
            chain = self._chain(conn, row["prompt_head"])
            if row["response_head"] is not None:
                reply = conn.execute(
                    "SELECT role, content FROM messages WHERE hash = ?", (row["response_head"],)
                ).fetchone()
                chain.append({"role": reply["role"], "content": reply["content"]})
        return chain

    def list_runs(
        self,
        limit: int = params.LOG_LIST_DEFAULT,
        query: str | None = None,
        program: str | None = None,
        status: str | None = None,
        owner: str | None = None,
        cpu: str | None = None,
    ) -> list[RunRecord]:
        """Runs newest first, or best match first for a full-text `query`; limit <= 0: all.
        With `owner`, only that owner's runs (a run with no owner is nobody's: admins only)."""
        where: list[str] = []
        args: list[Any] = []
        match = _fts_query(query) if query else None
        if match is not None:
            source = "runs_fts JOIN runs ON runs.id = runs_fts.run_id"
            where.append("runs_fts MATCH ?")
            args.append(match)
            order = "bm25(runs_fts, 0.0, 4.0, 2.0, 1.0, 1.0, 1.0), runs.id DESC"
        else:
            source = "runs"
            order = "runs.id DESC"
        if program is not None:
            where.append("runs.program = ?")
            args.append(program)
        if status is not None:
            where.append("runs.status = ?")
            args.append(status)
        if owner is not None:
            where.append("runs.owner = ?")
            args.append(owner)
        if cpu is not None:
            where.append("runs.cpu = ?")
            args.append(cpu)
        sql = f"SELECT {RUN_COLUMNS} FROM {source}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} LIMIT ?"
        args.append(limit if limit > 0 else -1)
        with self._db.transaction("list_runs", write=False) as conn:
            rows = conn.execute(sql, args).fetchall()
        return [RunRecord.from_row(row) for row in rows]

    def fail_stale_runs(self, reason: str) -> int:
        """Mark as failed ('lost') every running run whose process is gone; returns how many.

        A run's process is gone when its pid is not alive here, or, for a run with no pid, when
        it started more than params.LOG_STALE_NO_PID_S ago.
        """
        now = time.time()
        count = 0
        with self._db.transaction("fail_stale_runs") as conn:
            rows = conn.execute(
                "SELECT id, pid, started_at FROM runs WHERE status = 'running'"
            ).fetchall()
            for row in rows:
                if row["pid"] is None:
                    stale = now - row["started_at"] > params.LOG_STALE_NO_PID_S
                else:
                    stale = not pid_alive(int(row["pid"]))
                if not stale:
                    continue
                conn.execute(
                    "UPDATE runs SET status = 'failed', error_kind = 'lost', error = ?,"
                    " ended_at = ? WHERE id = ? AND status = 'running'",
                    (reason, now, row["id"]),
                )
                self._index(conn, row["id"])
                count += 1
        return count

    def count_runs(self) -> int:
        with self._db.transaction("count_runs", write=False) as conn:
            return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])

    def close(self) -> None:
        """Close the database; later calls raise LogStoreError. Closing twice is harmless."""
        self._db.close()

    def __enter__(self) -> Log:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
