"""The audit trail: every syscall a process made and what was decided about it, hash-chained.

`audit.db` (in the home directory, through `llmos.store.db.Database`) holds one table,
`audit`, one row per decision: when, whose process (owner, pid, program), which device with
which arguments (cut to params.AUDIT_ARGS_CHARS), the decision (`allowed`, `denied`,
`approved`, `denied-timeout`, `refused`), who decided (`policy`, or the person who ran
`llmos approve`/`deny`), the reason, and two hashes: `prev`, the hash of the record before it,
and `hash`, SHA-256 over `prev` and the record's own fields in a canonical JSON form. The first
record's `prev` is 64 zeros.

Invariants:
- Records are only appended; a record's `prev` is read and its row written in one
  BEGIN IMMEDIATE transaction, so two writers (a daemon and an in-process kernel) cannot fork
  the chain.
- `verify()` recomputes every hash in id order and names the first record whose hash or link
  does not match, so an edited, inserted or deleted row (other than the newest) is found.
- `query()` answers for one owner only (or every owner for an admin caller that asks).

What this does not cover: someone who can write `audit.db` can rewrite the whole chain from
the record they change onwards, or drop the newest records; the chain has no anchor outside
the file (an external witness, a signature, an append-only medium would add one). The file is
owner-only (0600) like every store. It does not decide anything (see `llmos.kernel.security.guard`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos import params
from llmos.errors import AuditError
from llmos.store.db import Database, Migration

GENESIS = "0" * 64
DECISIONS = ("allowed", "denied", "approved", "denied-timeout", "refused")
_FIELDS = ("ts", "owner", "pid", "program", "device", "args", "decision", "by", "reason")


def _create(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            owner TEXT NOT NULL,
            pid INTEGER NOT NULL,
            program TEXT NOT NULL,
            device TEXT NOT NULL,
            args TEXT NOT NULL,
            decision TEXT NOT NULL,
            by TEXT NOT NULL,
            reason TEXT NOT NULL,
            prev TEXT NOT NULL,
            hash TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX audit_owner ON audit(owner, id)")


MIGRATIONS: list[Migration] = [("001_audit", _create)]


def record_hash(prev: str, record: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the record's fields, in canonical JSON."""
    body = json.dumps(
        [prev, *(record[f] for f in _FIELDS)], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Verdict:
    """What `verify` found: how many records it checked, and the first broken one if any."""

    records: int
    broken_at: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


class AuditLog:
    """The audit table of one `audit.db`. Thread-safe (one connection behind the db lock)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    def open(cls, path: Path) -> AuditLog:
        db = Database.open(
            path,
            label="audit store",
            error=AuditError,
            migrations=MIGRATIONS,
            busy_timeout_s=params.AUDIT_BUSY_TIMEOUT_S,
        )
        return cls(db)

    def append(
        self,
        *,
        owner: str,
        pid: int,
        program: str,
        device: str,
        args: str,
        decision: str,
        by: str,
        reason: str,
    ) -> int:
        """Add one record at the end of the chain; its id."""
        assert decision in DECISIONS, decision
        record: dict[str, Any] = {
            "ts": round(time.time(), 6),
            "owner": owner,
            "pid": pid,
            "program": program,
            "device": device,
            "args": args[: params.AUDIT_ARGS_CHARS],
            "decision": decision,
            "by": by,
            "reason": reason,
        }
        with self.db.transaction("audit append") as conn:
            row = conn.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            prev = row[0] if row else GENESIS
            cur = conn.execute(
                f"INSERT INTO audit ({', '.join(_FIELDS)}, prev, hash) "
                f"VALUES ({', '.join('?' * (len(_FIELDS) + 2))})",
                (*(record[f] for f in _FIELDS), prev, record_hash(prev, record)),
            )
            return int(cur.lastrowid or 0)

    def query(
        self,
        owner: str | None,
        *,
        pid: int | None = None,
        device: str | None = None,
        decision: str | None = None,
        limit: int = params.AUDIT_LIST_DEFAULT,
    ) -> list[dict[str, Any]]:
        """The newest `limit` records matching the filters, oldest first; `owner` None means
        every owner's (for an admin)."""
        where, args = [], []
        for column, value in (("owner", owner), ("pid", pid), ("device", device)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if decision is not None:
            where.append("decision = ?")
            args.append(decision)
        sql = f"SELECT id, {', '.join(_FIELDS)}, hash FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.db.read(sql + " ORDER BY id DESC LIMIT ?", (*args, max(1, limit)))
        keys = ("id", *_FIELDS, "hash")
        return [dict(zip(keys, r, strict=True)) for r in reversed(rows)]

    def verify(self) -> Verdict:
        """Recompute the chain from the first record; the first record that breaks it."""
        rows = self.db.read(f"SELECT id, {', '.join(_FIELDS)}, prev, hash FROM audit ORDER BY id")
        prev = GENESIS
        for n, row in enumerate(rows, 1):
            rid, values, stored_prev, stored_hash = row[0], row[1:-2], row[-2], row[-1]
            record = dict(zip(_FIELDS, values, strict=True))
            if stored_prev != prev:
                return Verdict(n - 1, rid, "its link to the record before does not match")
            if record_hash(prev, record) != stored_hash:
                return Verdict(n - 1, rid, "its content does not match its hash")
            prev = stored_hash
        return Verdict(len(rows))

    def close(self) -> None:
        self.db.close()
