"""Tests for llmos.store.db, the SQLite layer under the stores: migrations (once, in order, all
or nothing), file modes, adopting a legacy migrations table, transactions, error mapping."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from llmos.errors import LogStoreError, MemoryStoreError
from llmos.store.db import MIGRATIONS_TABLE, Database, Migration


def _step(name: str, calls: list[str]) -> Migration:
    def run(conn: sqlite3.Connection) -> None:
        calls.append(name)
        conn.execute(f"CREATE TABLE t_{name} (x INT)")

    return (name, run)


def _open(path: Path, migrations: Sequence[Migration], legacy: str | None = None) -> Database:
    return Database.open(
        path,
        label="test store",
        error=MemoryStoreError,
        migrations=migrations,
        busy_timeout_s=0.2,
        legacy_migrations_table=legacy,
    )


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def _applied(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY rowid")]
    finally:
        conn.close()


def test_migrations_applied_once_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    calls: list[str] = []
    steps = [_step("001_a", calls), _step("002_b", calls)]
    _open(path, steps).close()
    _open(path, steps).close()
    assert calls == ["001_a", "002_b"]
    steps.append(_step("003_c", calls))
    _open(path, steps).close()
    assert calls == ["001_a", "002_b", "003_c"]
    assert _applied(path) == ["001_a", "002_b", "003_c"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_failing_migration_rolls_back_and_leaves_the_store_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    calls: list[str] = []
    _open(path, [_step("001_a", calls)]).close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE t_half (x INT)")
        conn.execute("INSERT INTO t_001_a VALUES (1)")
        conn.execute("THIS IS NOT SQL")

    with pytest.raises(MemoryStoreError, match=f"test store {path} failed during migration 002"):
        _open(path, [_step("001_a", calls), ("002_broken", broken)])
    assert "t_half" not in _tables(path)
    assert _applied(path) == ["001_a"]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM t_001_a").fetchone()[0] == 0
    conn.close()
    # A Python exception in a step rolls back the same way and is raised as it is.

    def raises(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE t_half (x INT)")
        raise ValueError("step failed")

    with pytest.raises(ValueError, match="step failed"):
        _open(path, [_step("001_a", calls), ("002_raises", raises)])
    assert "t_half" not in _tables(path) and _applied(path) == ["001_a"]
    assert calls == ["001_a"]


def test_a_new_file_is_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "new" / "deeper" / "x.db"
        db = _open(path, [_step("001_a", [])])
        with db.transaction("write") as conn:
            conn.execute("INSERT INTO t_001_a VALUES (1)")
        for file in [path, *path.parent.glob("x.db-*")]:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        assert any(path.parent.glob("x.db-wal"))
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        db.close()
    finally:
        os.umask(old)


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "x.db"
    path.touch()
    os.chmod(path, 0o640)
    _open(path, []).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_a_legacy_migrations_table_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    conn.execute("CREATE TABLE t_001_a (x INT)")
    conn.execute("INSERT INTO t_001_a VALUES (7)")
    conn.execute("INSERT INTO migrations VALUES ('001_a', 1234.5)")
    conn.close()
    calls: list[str] = []
    db = _open(path, [_step("001_a", calls), _step("002_b", calls)], legacy="migrations")
    assert calls == ["002_b"]  # 001_a is not applied again
    assert db.read("SELECT x FROM t_001_a") == [(7,)]
    rows = db.read(f"SELECT name, applied_at FROM {MIGRATIONS_TABLE} ORDER BY name")
    assert rows[0] == ("001_a", 1234.5) and rows[1][0] == "002_b"
    db.close()
    assert "migrations" not in _tables(path)
    _open(path, [_step("001_a", calls), _step("002_b", calls)], legacy="migrations").close()
    assert calls == ["002_b"]


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    db = _open(tmp_path / "x.db", [_step("001_a", [])])
    with pytest.raises(RuntimeError), db.transaction("write") as conn:
        conn.execute("INSERT INTO t_001_a VALUES (1)")
        raise RuntimeError("boom")
    with (
        pytest.raises(MemoryStoreError, match="failed during write"),
        db.transaction("write") as conn,
    ):
        conn.execute("INSERT INTO t_001_a VALUES (2)")
        conn.execute("INSERT INTO no_such_table VALUES (3)")
    assert db.read("SELECT count(*) FROM t_001_a") == [(0,)]
    with db.transaction("write") as conn:
        conn.execute("INSERT INTO t_001_a VALUES (4)")
    assert db.read("SELECT x FROM t_001_a") == [(4,)]
    db.close()


def test_errors_are_the_stores_own(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    db = Database.open(
        path, label="log database", error=LogStoreError, migrations=[], busy_timeout_s=0.2
    )
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    t0 = time.monotonic()
    with (
        pytest.raises(LogStoreError, match="locked by another writer") as info,
        db.transaction("write"),
    ):
        pass
    assert time.monotonic() - t0 >= 0.15
    assert info.value.exit_code == 9 and str(path) in str(info.value)
    holder.execute("ROLLBACK")
    holder.close()
    db.execute("PRAGMA max_page_count = 1")
    with pytest.raises(LogStoreError, match="disk is full"), db.transaction("write") as conn:
        conn.execute("CREATE TABLE big (x TEXT)")
        conn.execute("INSERT INTO big VALUES (?)", ("x" * 100_000,))
    db.close()
    db.close()  # twice is harmless
    with pytest.raises(LogStoreError, match="closed"):
        db.read("SELECT 1")


def test_a_file_that_is_not_a_database_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    data = b"not a database at all" * 100
    path.write_bytes(data)
    with pytest.raises(MemoryStoreError, match="is corrupt or not a database") as info:
        _open(path, [])
    assert info.value.exit_code == 15 and "\n" not in str(info.value)
    assert path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["x.db"]
