"""The usage ledger: what each owner's processes used, per UTC day, in the log (`logs.db`).

One row per (owner, day): prompt tokens, generated tokens, CPU-seconds (time resident on a
CPU) and processes. The kernel adds a process's counters once, when it exits (`add`); what a
live process has used so far is the kernel's to add on top (`llmos.kernel.meter`). The table is
created by the log's migration `002_usage` (`migrate`), so it lives and moves with the journal.

    usage(owner, day 'YYYY-MM-DD', prompt_tokens, generated_tokens, cpu_s, processes)

A process on a pool of CPUs (`llmos.kernel.pool`) also has its use of each CPU of the pool
added to `usage_cpu` (migration `003_usage_cpu`), in the same transaction: which CPU served
its tokens, for how long, at what cost (the pool's prices).

    usage_cpu(owner, day, cpu, requests, prompt_tokens, generated_tokens, seconds, cost)

Invariants:
- Rows only grow: `add` is one upsert that adds to the row in one statement, so two kernels
  sharing the file (a server and an `llmos run`) never lose each other's counts.
- Days are UTC calendar days (`day_of`), so "per day" quotas reset at UTC midnight everywhere.
- Reads can be scoped to one owner; the filter is in the SQL.

What this module does not do: decide when a process's usage is final (the kernel does), price
anything (prices are configuration, applied by the API), or prune old rows.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from typing import Any

from llmos.store.db import Database

DAY_FORMAT = "%Y-%m-%d"


def migrate(conn: sqlite3.Connection) -> None:
    """The log's migration `002_usage`."""
    conn.execute(
        """CREATE TABLE usage (
            owner TEXT NOT NULL,
            day TEXT NOT NULL,
            prompt_tokens INT NOT NULL DEFAULT 0,
            generated_tokens INT NOT NULL DEFAULT 0,
            cpu_s REAL NOT NULL DEFAULT 0,
            processes INT NOT NULL DEFAULT 0,
            PRIMARY KEY (owner, day)
        )"""
    )
    conn.execute("CREATE INDEX usage_day ON usage(day, owner)")


def migrate_cpu(conn: sqlite3.Connection) -> None:
    """The log's migration `003_usage_cpu`."""
    conn.execute(
        """CREATE TABLE usage_cpu (
            owner TEXT NOT NULL,
            day TEXT NOT NULL,
            cpu TEXT NOT NULL,
            requests INT NOT NULL DEFAULT 0,
            prompt_tokens INT NOT NULL DEFAULT 0,
            generated_tokens INT NOT NULL DEFAULT 0,
            seconds REAL NOT NULL DEFAULT 0,
            cost REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (owner, day, cpu)
        )"""
    )


def day_of(ts: float) -> str:
    """The UTC day of a UNIX time, as 'YYYY-MM-DD'."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime(DAY_FORMAT)


def seconds_to_next_day(ts: float) -> float:
    """Seconds from `ts` to the next UTC midnight (when a per-day quota resets)."""
    now = dt.datetime.fromtimestamp(ts, dt.UTC)
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


def parse_day(text: str) -> str:
    """`text` as a day 'YYYY-MM-DD'; ValueError if it is not one."""
    return dt.datetime.strptime(text, DAY_FORMAT).strftime(DAY_FORMAT)


@dataclass
class Usage:
    """Counters of one owner on one day (or any sum of them)."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    cpu_s: float = 0.0
    processes: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.generated_tokens += other.generated_tokens
        self.cpu_s += other.cpu_s
        self.processes += other.processes

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "cpu_s": round(self.cpu_s, 3),
            "processes": self.processes,
        }


@dataclass
class CpuUsage:
    """One owner's (or one process's) use of one CPU of a pool: generations placed on it,
    the prompt tokens it read and the tokens it generated, seconds, and their cost at its
    price per 1000 tokens."""

    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    cost: float = 0.0

    def add(self, other: CpuUsage) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.generated_tokens += other.generated_tokens
        self.seconds += other.seconds
        self.cost += other.cost

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "seconds": round(self.seconds, 3),
            "cost": round(self.cost, 6),
        }


CpuRow = tuple[str, str, str, CpuUsage]  # owner, day, cpu, usage


def _filter(owner: str | None, since: str | None, until: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause (empty or with a leading space) and its arguments for a read scoped
    to `owner` and days `since`..`until` (each when given)."""
    where: list[str] = []
    args: list[Any] = []
    for clause, value in (("owner = ?", owner), ("day >= ?", since), ("day <= ?", until)):
        if value is not None:
            where.append(clause)
            args.append(value)
    return (" WHERE " + " AND ".join(where) if where else ""), args


class Ledger:
    """The usage table of one log database; safe to share between threads."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(
        self, owner: str, day: str, usage: Usage, cpus: dict[str, CpuUsage] | None = None
    ) -> None:
        """Add `usage` to `owner`'s row for `day` (creating it), and each of `cpus` to the
        row of that CPU, in one transaction."""
        with self._db.transaction("usage add") as conn:
            for cpu, used in (cpus or {}).items():
                conn.execute(
                    "INSERT INTO usage_cpu (owner, day, cpu, requests, prompt_tokens,"
                    " generated_tokens, seconds, cost) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (owner, day, cpu) DO UPDATE SET"
                    " requests = requests + excluded.requests,"
                    " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                    " generated_tokens = generated_tokens + excluded.generated_tokens,"
                    " seconds = seconds + excluded.seconds, cost = cost + excluded.cost",
                    (
                        owner,
                        day,
                        cpu,
                        used.requests,
                        used.prompt_tokens,
                        used.generated_tokens,
                        used.seconds,
                        used.cost,
                    ),
                )
            conn.execute(
                "INSERT INTO usage (owner, day, prompt_tokens, generated_tokens, cpu_s, processes)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (owner, day) DO UPDATE SET"
                " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                " generated_tokens = generated_tokens + excluded.generated_tokens,"
                " cpu_s = cpu_s + excluded.cpu_s,"
                " processes = processes + excluded.processes",
                (
                    owner,
                    day,
                    usage.prompt_tokens,
                    usage.generated_tokens,
                    usage.cpu_s,
                    usage.processes,
                ),
            )

    def rows(
        self,
        owner: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, str, Usage]]:
        """(owner, day, usage) rows, by owner then day; only `owner`'s when given; days from
        `since` through `until` (inclusive) when given; at most `limit` rows."""
        where, args = _filter(owner, since, until)
        sql = "SELECT owner, day, prompt_tokens, generated_tokens, cpu_s, processes FROM usage"
        sql += where + " ORDER BY owner, day LIMIT ?"
        args.append(-1 if limit is None else limit)
        return [
            (row[0], row[1], Usage(int(row[2]), int(row[3]), float(row[4]), int(row[5])))
            for row in self._db.read(sql, args)
        ]

    def cpu_rows(
        self, owner: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[CpuRow]:
        """(owner, day, cpu, usage) rows of pool CPUs, by owner, day and CPU; filtered like
        `rows`."""
        where, args = _filter(owner, since, until)
        sql = (
            "SELECT owner, day, cpu, requests, prompt_tokens, generated_tokens, seconds, cost"
            " FROM usage_cpu" + where + " ORDER BY owner, day, cpu"
        )
        return [
            (
                row[0],
                row[1],
                row[2],
                CpuUsage(int(row[3]), int(row[4]), int(row[5]), float(row[6]), float(row[7])),
            )
            for row in self._db.read(sql, args)
        ]

    def day(self, owner: str, day: str) -> Usage:
        """`owner`'s counters for `day` (zeros if there is no row)."""
        found = self.rows(owner, since=day, until=day)
        return found[0][2] if found else Usage()
