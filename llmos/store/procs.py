"""The process journal: a long-lived kernel's process table and every output piece, on disk.

`procs.db` (in the home directory, through `llmos.store.db.Database`, WAL) holds:
- `procs`: one row per process the kernel started (pid, owner, program, the spec to start it
  again, priority, budget, parent, timestamps) and, once it ended, how (`exit_status`, `error`);
  a row without an exit status is a process that was live when the kernel last wrote;
- `output`: each piece of each process's output, `(pid, seq, text)`, seq counting from 0.

A piece is written (and committed) before any follower can see it (`Process.append_output`
calls `output` first), so a client never holds a token the journal lacks: log before send. A
kernel that starts on this home after a crash reads the live rows back (`live`), with their
output (`output_of`), and continues pids above `max_pid`.

Invariants:
- `(pid, seq)` is written once; `output_of(pid)` returns the pieces in seq order, no gaps.
- A finished row's exit status never changes again.
- The file is owner-only (0600) from creation, like every store.

What this does not do: decide what a recovered process becomes (see `Kernel.recover`), or keep
the runs' conversations (the log does: `llmos.store.log`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from llmos import params
from llmos.errors import LogStoreError
from llmos.store.db import Database, Migration


def _create(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE procs (
            pid INTEGER PRIMARY KEY,
            ppid INTEGER NOT NULL,
            owner TEXT NOT NULL,
            program TEXT NOT NULL,
            spec TEXT NOT NULL,
            priority INTEGER NOT NULL,
            budget INTEGER,
            created_at REAL NOT NULL,
            ended_at REAL,
            exit_status TEXT,
            error TEXT
        )"""
    )
    conn.execute("CREATE INDEX procs_live ON procs(exit_status)")
    conn.execute(
        """CREATE TABLE output (
            pid INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            text TEXT NOT NULL,
            PRIMARY KEY (pid, seq)
        ) WITHOUT ROWID"""
    )


MIGRATIONS: list[Migration] = [("001_procs", _create)]


class ProcJournal:
    """The journal of one home. Thread-safe (one connection behind the db lock)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    def open(cls, path: Path) -> ProcJournal:
        db = Database.open(
            path,
            label="process journal",
            error=LogStoreError,
            migrations=MIGRATIONS,
            busy_timeout_s=params.PROCS_BUSY_TIMEOUT_S,
            pragmas=("PRAGMA synchronous = NORMAL",),
        )
        return cls(db)

    def started(
        self,
        *,
        pid: int,
        ppid: int,
        owner: str,
        program: str,
        spec: dict[str, Any],
        priority: int,
        budget: int | None,
        created_at: float,
    ) -> None:
        with self.db.transaction("journal a process") as conn:
            conn.execute(
                """INSERT OR REPLACE INTO procs(pid, ppid, owner, program, spec, priority,
                   budget, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (pid, ppid, owner, program, json.dumps(spec), priority, budget, created_at),
            )

    def output(self, pid: int, seq: int, text: str) -> None:
        """Piece `seq` of process `pid`'s output, committed before it is shown to anyone."""
        with self.db.guard("journal output") as conn:
            conn.execute("INSERT INTO output(pid, seq, text) VALUES (?, ?, ?)", (pid, seq, text))

    def ended(
        self, pid: int, status: str, error: str | None, ended_at: float | None = None
    ) -> None:
        with self.db.guard("journal an exit") as conn:
            conn.execute(
                """UPDATE procs SET exit_status = ?, error = ?, ended_at = ?
                   WHERE pid = ? AND exit_status IS NULL""",
                (status, error, ended_at or time.time(), pid),
            )

    def live(self) -> list[dict[str, Any]]:
        """The processes that had not ended when the journal was last written, oldest first."""
        rows = self.db.read(
            """SELECT pid, ppid, owner, program, spec, priority, budget, created_at
               FROM procs WHERE exit_status IS NULL ORDER BY pid"""
        )
        return [
            {
                "pid": r[0],
                "ppid": r[1],
                "owner": r[2],
                "program": r[3],
                "spec": json.loads(r[4]),
                "priority": r[5],
                "budget": r[6],
                "created_at": r[7],
            }
            for r in rows
        ]

    def output_of(self, pid: int) -> list[str]:
        rows = self.db.read("SELECT text FROM output WHERE pid = ? ORDER BY seq", (pid,))
        return [r[0] for r in rows]

    def max_pid(self) -> int:
        rows = self.db.read("SELECT MAX(pid) FROM procs")
        return int(rows[0][0] or 0)

    def close(self) -> None:
        self.db.close()
