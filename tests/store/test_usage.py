"""The usage ledger in the log database: upserts add up, reads are scoped, rows survive a reopen;
UTC days and the wait to the next one; prices in config.json."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from llmos import config
from llmos.errors import ConfigError
from llmos.store.log import Log
from llmos.store.usage import CpuUsage, Usage, day_of, parse_day, seconds_to_next_day


def test_usage_rows_add_up_per_owner_and_day_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    with Log.open(path) as log:
        log.usage.add("alice", "2031-01-01", Usage(10, 5, 1.5, 1))
        log.usage.add("alice", "2031-01-01", Usage(1, 2, 0.5, 1))
        log.usage.add("alice", "2031-01-02", Usage(7, 0, 0.0, 1))
        log.usage.add("bob", "2031-01-01", Usage(100, 100, 9.0, 3))
    with Log.open(path) as log:
        assert log.usage.day("alice", "2031-01-01") == Usage(11, 7, 2.0, 2)
        assert log.usage.day("carol", "2031-01-01") == Usage()
        mine = log.usage.rows("alice")
        assert [(o, d) for o, d, _ in mine] == [("alice", "2031-01-01"), ("alice", "2031-01-02")]
        assert {o for o, _, _ in log.usage.rows()} == {"alice", "bob"}
        assert [d for _, d, _ in log.usage.rows("alice", since="2031-01-02")] == ["2031-01-02"]
        assert [d for _, d, _ in log.usage.rows(until="2031-01-01")] == ["2031-01-01"] * 2
    conn = sqlite3.connect(path)
    applied = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
    conn.close()
    assert {"001_schema", "002_usage"} <= applied


def test_per_cpu_rows_add_up_with_the_owner_s_row_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    with Log.open(path) as log:
        log.usage.add(
            "alice",
            "2031-01-01",
            Usage(10, 5, 1.0, 1),
            {"a": CpuUsage(1, 10, 3, 0.5, 0.026), "b": CpuUsage(1, 10, 2, 0.25, 0.0)},
        )
        log.usage.add(
            "alice", "2031-01-01", Usage(4, 4, 0.1, 1), {"a": CpuUsage(1, 4, 4, 0.1, 0.016)}
        )
        log.usage.add("bob", "2031-01-02", Usage(1, 1, 0.0, 1), {"b": CpuUsage(1, 1, 1, 0.0, 0.0)})
        log.usage.add("bob", "2031-01-02", Usage(1, 1, 0.0, 1))  # not on a pool: no CPU rows
    with Log.open(path) as log:
        rows = {(o, d, c): u for o, d, c, u in log.usage.cpu_rows()}
        assert rows[("alice", "2031-01-01", "a")] == CpuUsage(2, 14, 7, 0.6, pytest.approx(0.042))
        assert rows[("alice", "2031-01-01", "b")] == CpuUsage(1, 10, 2, 0.25, 0.0)
        assert list(rows)[-1] == ("bob", "2031-01-02", "b") and len(rows) == 3
        assert [c for _, _, c, _ in log.usage.cpu_rows("bob")] == ["b"]
        assert log.usage.cpu_rows(since="2031-01-03") == []
        assert log.usage.day("alice", "2031-01-01") == Usage(14, 9, pytest.approx(1.1), 2)


def test_concurrent_adds_lose_nothing(tmp_path: Path) -> None:
    with Log.open(tmp_path / "logs.db") as log:

        def add() -> None:
            for _ in range(50):
                log.usage.add("alice", "2031-01-01", Usage(1, 1, 0.01, 1))

        threads = [threading.Thread(target=add) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = log.usage.day("alice", "2031-01-01")
        assert (total.prompt_tokens, total.generated_tokens, total.processes) == (200, 200, 200)
        assert total.cpu_s == pytest.approx(2.0)


def test_days_are_utc_and_the_wait_runs_to_midnight() -> None:
    noon = dt.datetime(2031, 3, 4, 12, 0, tzinfo=dt.UTC).timestamp()
    assert day_of(noon) == "2031-03-04"
    assert seconds_to_next_day(noon) == 12 * 3600
    assert seconds_to_next_day(noon + 12 * 3600 - 1) == 1
    assert parse_day("2031-03-04") == "2031-03-04"
    with pytest.raises(ValueError):
        parse_day("yesterday")


def test_prices_in_config(tmp_path: Path) -> None:
    assert config.load(tmp_path).prices == {
        "prompt_per_1m": 0.0,
        "generated_per_1m": 0.0,
        "cpu_hour": 0.0,
    }
    (tmp_path / "config.json").write_text(json.dumps({"prices": {"generated_per_1m": 8}}))
    cfg = config.load(tmp_path)
    assert cfg.prices["generated_per_1m"] == 8.0
    assert cfg.cost(0, 2_000_000, 0.0) == pytest.approx(16.0)
    for bad in ({"gpu_hour": 1}, {"cpu_hour": -1}, {"cpu_hour": "1"}, []):
        (tmp_path / "config.json").write_text(json.dumps({"prices": bad}))
        with pytest.raises(ConfigError):
            config.load(tmp_path)
