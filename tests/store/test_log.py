"""Tests for llmos.store.log: the run journal (schema, content addressing, search, concurrency)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos import params
from llmos.errors import LogStoreError
from llmos.store import db as dbmod
from llmos.store import log as logmod
from llmos.store.log import MIGRATIONS, Log, message_hash, new_run_id

REPO = Path(__file__).resolve().parents[2]

SYSTEM = {"role": "system", "content": "You are a careful summarizer."}
USER = {"role": "user", "content": "Summarize the zebra migration report."}


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


def count(path: Path, table: str) -> int:
    conn = raw(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "logs.db"


@pytest.fixture
def lg(db: Path) -> Iterator[Log]:
    with Log.open(db) as log:
        yield log


# --- opening and migrations ------------------------------------------------------------------


def test_migrations_run_once(db: Path) -> None:
    Log.open(db).close()
    conn = raw(db)
    first = conn.execute("SELECT name, applied_at FROM _migrations ORDER BY name").fetchall()
    conn.close()
    Log.open(db).close()
    Log.open(db).close()
    conn = raw(db)
    again = conn.execute("SELECT name, applied_at FROM _migrations ORDER BY name").fetchall()
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert [name for name, _ in first] == [name for name, _ in MIGRATIONS]
    assert len(first) == len(MIGRATIONS) == 3  # 001_schema, 002_usage, 003_usage_cpu
    assert again == first
    assert mode == "wal"


def test_migration_step_runs_once(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def extra(conn: sqlite3.Connection) -> None:
        calls.append("x")
        conn.execute("CREATE TABLE extra_table (x INT)")

    monkeypatch.setattr(logmod, "MIGRATIONS", [*MIGRATIONS, ("999_extra", extra)])
    Log.open(db).close()
    Log.open(db).close()
    assert calls == ["x"]
    assert count(db, "_migrations") == len(MIGRATIONS) + 1


def test_default_path_is_in_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    with Log.open() as log:
        assert log.path == tmp_path / "home" / params.LOG_DB_NAME
        log.start_run("p", "cpu", {}, [USER])
    assert (tmp_path / "home" / params.LOG_DB_NAME).is_file()
    assert count(tmp_path / "home" / params.LOG_DB_NAME, "runs") == 1


def test_fts5_missing(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbmod, "has_fts5", lambda: False)
    with pytest.raises(LogStoreError, match="FTS5") as info:
        Log.open(db)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 9
    assert not db.exists()


def test_fts5_probe_true_here() -> None:
    assert dbmod.has_fts5() is True


def test_corrupt_file_refused_and_untouched(db: Path) -> None:
    garbage = os.urandom(4096)
    db.write_bytes(garbage)
    with pytest.raises(LogStoreError, match="corrupt or not a database") as info:
        Log.open(db)
    assert str(db) in str(info.value)
    assert db.read_bytes() == garbage
    assert sorted(p.name for p in db.parent.iterdir()) == ["logs.db"]


def test_corrupt_file_with_sqlite_header_refused_and_untouched(db: Path) -> None:
    data = b"SQLite format 3\x00" + b"\xff" * (4096 - 16)
    db.write_bytes(data)
    with pytest.raises(LogStoreError, match="corrupt or not a database"):
        Log.open(db)
    assert db.read_bytes() == data
    assert sorted(p.name for p in db.parent.iterdir()) == ["logs.db"]


def test_locked_beyond_busy_timeout(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(params, "LOG_BUSY_TIMEOUT_S", 0.2)
    with Log.open(db) as log:
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        with pytest.raises(LogStoreError, match="locked") as info:
            log.start_run("p", "cpu", {}, [USER])
        assert time.monotonic() - t0 >= 0.15
        assert str(db) in str(info.value)
        other.execute("ROLLBACK")
        other.close()
        run_id = log.start_run("p", "cpu", {}, [USER])  # the log is still usable
        assert log.count_runs() == 1
        assert log.get_run(run_id) is not None


def test_closed_log_raises(db: Path) -> None:
    log = Log.open(db)
    log.close()
    log.close()  # harmless
    with pytest.raises(LogStoreError, match="closed"):
        log.count_runs()


# --- runs and messages -----------------------------------------------------------------------


def test_round_trip(lg: Log) -> None:
    before = time.time()
    run_id = lg.start_run(
        "summarize",
        "embedded",
        {"text": "hello", "path": Path("/tmp/x"), "n": 3},
        [SYSTEM, USER],
        program_path="/progs/summarize.prompt",
        pid=1234,
        owner="alice",
        parent_run="parent-1",
    )
    assert len(run_id) == 32
    rec = lg.get_run(run_id)
    assert rec is not None
    assert rec.status == "running"
    assert rec.program == "summarize"
    assert rec.cpu == "embedded"
    assert rec.inputs == {"text": "hello", "path": "/tmp/x", "n": 3}
    assert rec.program_path == "/progs/summarize.prompt"
    assert (rec.pid, rec.owner, rec.parent_run) == (1234, "alice", "parent-1")
    assert rec.ended_at is None and rec.response is None and rec.response_head is None
    assert rec.prompt_head == message_hash(USER, message_hash(SYSTEM, None))
    assert before <= rec.started_at <= time.time()
    assert lg.messages(run_id) == [SYSTEM, USER]

    lg.finish_run(
        run_id,
        status="ok",
        response="Zebras walk far.",
        prompt_tokens=20,
        completion_tokens=50,
        ttft_ms=12.5,
        duration_ms=2000.0,
        extra={"finish_reason": "stop"},
    )
    rec = lg.get_run(run_id)
    assert rec is not None
    assert rec.status == "ok"
    assert rec.response == "Zebras walk far."
    assert (rec.prompt_tokens, rec.completion_tokens) == (20, 50)
    assert (rec.ttft_ms, rec.duration_ms) == (12.5, 2000.0)
    assert rec.tokens_per_s == 25.0
    assert rec.extra == {"finish_reason": "stop"}
    assert rec.error is None and rec.error_kind is None
    assert rec.ended_at is not None and rec.ended_at >= rec.started_at
    reply = {"role": "assistant", "content": "Zebras walk far."}
    assert rec.response_head == message_hash(reply, rec.prompt_head)
    assert lg.messages(run_id) == [SYSTEM, USER, reply]
    assert lg.messages(run_id[:20]) == [SYSTEM, USER, reply]
    assert lg.get_run(run_id[:16]) == rec
    assert lg.count_runs() == 1


def test_unusual_messages_round_trip(lg: Log) -> None:
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "weather in Paris? ünïcode ✓"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
        {"role": "user"},
    ]
    run_id = lg.start_run("tools", "cpu", {}, msgs)
    assert lg.messages(run_id) == msgs


def test_tokens_per_s_not_sensible(lg: Log) -> None:
    run_id = lg.start_run("p", "cpu", {}, [USER])
    lg.finish_run(run_id, status="ok", response="x", completion_tokens=0, duration_ms=100.0)
    rec = lg.get_run(run_id)
    assert rec is not None and rec.tokens_per_s is None
    run2 = lg.start_run("p", "cpu", {}, [USER])
    lg.finish_run(run2, status="ok", response="x", completion_tokens=5, duration_ms=0.0)
    rec2 = lg.get_run(run2)
    assert rec2 is not None and rec2.tokens_per_s is None


def test_duration_defaults_to_wall_time(lg: Log) -> None:
    run_id = lg.start_run("p", "cpu", {}, [USER])
    time.sleep(0.05)
    lg.finish_run(run_id, status="cancelled")
    rec = lg.get_run(run_id)
    assert rec is not None
    assert rec.status == "cancelled"
    assert rec.duration_ms is not None and 40.0 <= rec.duration_ms < 5000.0
    assert rec.response_head is None
    assert lg.messages(run_id) == [USER]


def test_empty_prompt(lg: Log) -> None:
    run_id = lg.start_run("p", "cpu", {}, [])
    lg.finish_run(run_id, status="ok", response="hi")
    rec = lg.get_run(run_id)
    assert rec is not None and rec.prompt_head is None
    assert rec.response_head == message_hash({"role": "assistant", "content": "hi"}, None)
    assert lg.messages(run_id) == [{"role": "assistant", "content": "hi"}]


def test_content_addressing_shares_prefix(lg: Log) -> None:
    a = lg.start_run("p", "cpu", {}, [SYSTEM, USER])
    b = lg.start_run("p", "cpu", {}, [SYSTEM, USER])
    lg.finish_run(a, status="ok", response="answer A")
    lg.finish_run(b, status="ok", response="answer B")
    # system + user stored once; two distinct replies
    assert count(lg.path, "messages") == 4
    ra, rb = lg.get_run(a), lg.get_run(b)
    assert ra is not None and rb is not None
    assert ra.prompt_head == rb.prompt_head
    assert ra.response_head != rb.response_head

    # a longer conversation that extends the same prefix adds only its new messages
    follow = {"role": "user", "content": "Shorter, please."}
    c = lg.start_run("p", "cpu", {}, [SYSTEM, USER, {"role": "assistant", "content": "answer A"}])
    d = lg.start_run(
        "p", "cpu", {}, [SYSTEM, USER, {"role": "assistant", "content": "answer A"}, follow]
    )
    assert count(lg.path, "messages") == 5
    rc, rd = lg.get_run(c), lg.get_run(d)
    assert rc is not None and rd is not None
    assert rc.prompt_head == ra.response_head
    assert lg.messages(d)[-1] == follow

    # a different conversation sharing system + first user message shares those two rows
    other = [SYSTEM, USER, {"role": "assistant", "content": "answer Z"}]
    lg.start_run("q", "cpu", {}, other)
    assert count(lg.path, "messages") == 6


def test_hash_depends_on_parent_and_content() -> None:
    h1 = message_hash(USER, None)
    h2 = message_hash(USER, message_hash(SYSTEM, None))
    assert h1 != h2
    assert len(h1) == 64
    assert message_hash(dict(reversed(list(USER.items()))), None) == h1  # key order irrelevant
    assert message_hash({**USER, "name": "bob"}, None) != h1  # every key counts
    assert message_hash({"role": "user", "content": "other"}, None) != h1


def test_same_content_different_parent_stored_twice(lg: Log) -> None:
    lg.start_run("p", "cpu", {}, [USER])
    lg.start_run("p", "cpu", {}, [SYSTEM, USER])
    conn = raw(lg.path)
    rows = conn.execute(
        "SELECT count(*), count(DISTINCT hash) FROM messages WHERE content = ?", (USER["content"],)
    ).fetchone()
    conn.close()
    assert rows == (2, 2)
    assert count(lg.path, "messages") == 3


def test_failed_run_logged_with_error(lg: Log) -> None:
    run_id = lg.start_run("p", "openai/gpt", {"q": "x"}, [USER])
    lg.finish_run(
        run_id,
        status="failed",
        error_kind="backend",
        error="server at http://localhost:1 refused the connection",
        prompt_tokens=7,
    )
    rec = lg.get_run(run_id)
    assert rec is not None
    assert rec.status == "failed"
    assert rec.error_kind == "backend"
    assert rec.error == "server at http://localhost:1 refused the connection"
    assert rec.response is None and rec.prompt_tokens == 7
    assert [r.id for r in lg.list_runs(query="refused")] == [run_id]
    assert [r.id for r in lg.list_runs(status="failed")] == [run_id]


def test_finish_errors(lg: Log) -> None:
    run_id = lg.start_run("p", "cpu", {}, [USER])
    lg.finish_run(run_id, status="ok", response="done")
    with pytest.raises(LogStoreError, match="already finished"):
        lg.finish_run(run_id, status="ok", response="again")
    with pytest.raises(LogStoreError, match="no run"):
        lg.finish_run("0" * 32, status="ok")
    other = lg.start_run("p", "cpu", {}, [USER])
    with pytest.raises(LogStoreError, match="status"):
        lg.finish_run(other, status="running")
    with pytest.raises(LogStoreError, match="status"):
        lg.finish_run(other, status="bogus")
    rec = lg.get_run(run_id)
    assert rec is not None and rec.response == "done"
    rec2 = lg.get_run(other)
    assert rec2 is not None and rec2.status == "running"


def test_get_run_unknown_and_ambiguous(lg: Log) -> None:
    a = lg.start_run("p", "cpu", {}, [USER])
    b = lg.start_run("p", "cpu", {}, [USER])
    assert lg.get_run("f" * 32) is None
    assert lg.get_run("") is None
    assert lg.get_run("not-hex!") is None
    common = ""
    for x, y in zip(a, b, strict=True):
        if x != y:
            break
        common += x
    assert len(common) >= 6  # same second
    with pytest.raises(LogStoreError, match="ambiguous"):
        lg.get_run(common)
    with pytest.raises(LogStoreError, match="no run"):
        lg.messages("f" * 32)


def test_run_ids_sortable() -> None:
    ids = [new_run_id() for _ in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 2000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    ms = int(ids[-1][:12], 16)
    assert abs(ms / 1000 - time.time()) < 5


# --- listing and search ----------------------------------------------------------------------


def _finished(lg: Log, program: str, inputs: dict, prompt: str, response: str) -> str:
    run_id = lg.start_run(program, "cpu", inputs, [{"role": "user", "content": prompt}])
    lg.finish_run(run_id, status="ok", response=response)
    return run_id


def test_search_finds_each_field(lg: Log) -> None:
    a = _finished(lg, "haiku-writer", {"topic": "lighthouses"}, "Write a poem.", "Waves break.")
    b = _finished(lg, "translator", {"lang": "french"}, "Translate: good morning", "Bonjour")
    c = _finished(lg, "echo", {"x": "1"}, "nothing special", "a quokka appeared")
    assert [r.id for r in lg.list_runs(query="haiku")] == [a]
    assert [r.id for r in lg.list_runs(query="lighthouses")] == [a]
    assert [r.id for r in lg.list_runs(query="french")] == [b]
    assert [r.id for r in lg.list_runs(query="morning")] == [b]
    assert [r.id for r in lg.list_runs(query="Bonjour")] == [b]
    assert [r.id for r in lg.list_runs(query="quokka")] == [c]
    assert [r.id for r in lg.list_runs(query="QUOKKA appeared")] == [c]
    assert [r.id for r in lg.list_runs(query="quok*")] == [c]
    assert lg.list_runs(query="quokka french") == []
    assert lg.list_runs(query="absent") == []
    # the run id is indexed for bookkeeping only, never matched by a user's query
    assert lg.list_runs(query=a) == []


def test_search_running_run_by_prompt(lg: Log) -> None:
    run_id = lg.start_run("p", "cpu", {}, [SYSTEM, USER])
    assert [r.id for r in lg.list_runs(query="zebra")] == [run_id]
    assert [r.id for r in lg.list_runs(query="summarizer")] == [run_id]
    lg.finish_run(run_id, status="ok", response="ok")
    assert [r.id for r in lg.list_runs(query="zebra")] == [run_id]
    assert count(lg.path, "runs_fts") == 1


@pytest.mark.parametrize(
    "query",
    ['"a AND (b', "*", "a*b", "NEAR(", "col:x", '"', "^x", "AND", "OR NOT", "{x}:y", "-", "'"],
)
def test_query_syntax_never_raises(lg: Log, query: str) -> None:
    _finished(lg, "p", {}, "a b", "c")
    result = lg.list_runs(query=query)
    assert isinstance(result, list)


def test_query_quoting_semantics(lg: Log) -> None:
    a = _finished(lg, "p", {}, "alpha AND (beta", "x")
    _finished(lg, "p", {}, "alpha only", "x")
    assert [r.id for r in lg.list_runs(query='"alpha AND (beta')] == [a]
    # queries with no word in them filter nothing
    assert len(lg.list_runs(query="*")) == 2
    assert len(lg.list_runs(query="")) == 2
    assert len(lg.list_runs(query="  ")) == 2


def test_fts_query_builder() -> None:
    cols = "{program inputs prompt response error}"
    assert logmod._fts_query('say "hi" now*') == f'{cols} : ("say" """hi""" "now"*)'
    assert logmod._fts_query("( * )") is None
    assert logmod._fts_query("") is None


def test_list_filters_and_ordering(lg: Log) -> None:
    ids = []
    for i in range(5):
        run_id = lg.start_run("alpha" if i % 2 == 0 else "beta", "cpu", {"i": i}, [USER])
        ids.append(run_id)
    lg.finish_run(ids[0], status="ok", response="r")
    lg.finish_run(ids[1], status="failed", error="boom")
    newest_first = list(reversed(ids))
    assert [r.id for r in lg.list_runs()] == newest_first
    assert [r.id for r in lg.list_runs(limit=2)] == newest_first[:2]
    assert [r.id for r in lg.list_runs(limit=0)] == newest_first
    assert [r.id for r in lg.list_runs(program="alpha")] == [ids[4], ids[2], ids[0]]
    assert [r.id for r in lg.list_runs(program="beta")] == [ids[3], ids[1]]
    assert [r.id for r in lg.list_runs(status="running")] == [ids[4], ids[3], ids[2]]
    assert [r.id for r in lg.list_runs(program="alpha", status="ok")] == [ids[0]]
    assert [r.id for r in lg.list_runs(program="alpha", status="failed")] == []
    # equal relevance: newest first; filters combine with the query
    assert [r.id for r in lg.list_runs(query="zebra")] == newest_first
    assert [r.id for r in lg.list_runs(query="zebra", program="beta")] == [ids[3], ids[1]]
    assert [r.id for r in lg.list_runs(query="zebra", limit=1)] == [ids[4]]
    assert [r.inputs["i"] for r in lg.list_runs()] == [4, 3, 2, 1, 0]


def test_list_default_limit(lg: Log) -> None:
    for _ in range(params.LOG_LIST_DEFAULT + 3):
        lg.start_run("p", "cpu", {}, [])
    assert len(lg.list_runs()) == params.LOG_LIST_DEFAULT
    assert lg.count_runs() == params.LOG_LIST_DEFAULT + 3


def test_search_ranks_by_relevance(lg: Log) -> None:
    strong = _finished(lg, "kiwi", {"fruit": "kiwi"}, "kiwi kiwi kiwi", "kiwi")
    weak = _finished(lg, "misc", {}, "a long prompt about many things and one kiwi", "no")
    assert [r.id for r in lg.list_runs(query="kiwi")] == [strong, weak]


# --- stale runs ------------------------------------------------------------------------------


def test_fail_stale_runs(lg: Log) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead_pid = proc.pid
    dead = lg.start_run("p", "cpu", {}, [USER], pid=dead_pid)
    alive = lg.start_run("p", "cpu", {}, [USER], pid=os.getpid())
    young = lg.start_run("p", "cpu", {}, [USER])
    old = lg.start_run("p", "cpu", {}, [USER])
    done = lg.start_run("p", "cpu", {}, [USER], pid=dead_pid)
    lg.finish_run(done, status="ok", response="fine")
    conn = raw(lg.path)
    with conn:
        conn.execute(
            "UPDATE runs SET started_at = ? WHERE id = ?",
            (time.time() - params.LOG_STALE_NO_PID_S - 60, old),
        )
    conn.close()

    assert lg.fail_stale_runs("the llmos process died") == 2
    statuses = {}
    for run_id in (dead, alive, young, old, done):
        rec = lg.get_run(run_id)
        assert rec is not None
        statuses[run_id] = (rec.status, rec.error_kind, rec.error)
    assert statuses == {
        dead: ("failed", "lost", "the llmos process died"),
        alive: ("running", None, None),
        young: ("running", None, None),
        old: ("failed", "lost", "the llmos process died"),
        done: ("ok", None, None),
    }
    assert {r.id for r in lg.list_runs(query="died")} == {dead, old}
    assert lg.fail_stale_runs("again") == 0


# --- concurrency -----------------------------------------------------------------------------


def _check_db(path: Path, runs: int) -> None:
    conn = raw(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == runs
        assert conn.execute("SELECT count(*) FROM runs_fts").fetchone()[0] == runs
        assert conn.execute("SELECT count(*) FROM runs WHERE status != 'ok'").fetchone()[0] == 0
        conn.execute("INSERT INTO runs_fts(runs_fts) VALUES ('integrity-check')")
    finally:
        conn.close()


def test_concurrent_threads(lg: Log) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(50):
                run_id = lg.start_run(
                    f"thread{n}", "cpu", {"i": i}, [SYSTEM, {"role": "user", "content": f"{i}"}]
                )
                lg.finish_run(run_id, status="ok", response=f"reply {n} {i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert lg.count_runs() == 200
    for n in range(4):
        assert len(lg.list_runs(limit=0, program=f"thread{n}")) == 50
    # system + 50 distinct user messages, shared by the threads; 200 distinct replies
    assert count(lg.path, "messages") == 1 + 50 + 200
    _check_db(lg.path, 200)


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from llmos.store.log import Log

    path, name = Path(sys.argv[1]), sys.argv[2]
    with Log.open(path) as log:
        for i in range(50):
            run_id = log.start_run(name, "cpu", {"i": i}, [{"role": "user", "content": str(i)}])
            log.finish_run(run_id, status="ok", response=f"{name} {i}")
    """
)


def test_concurrent_processes(db: Path, lg: Log) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), f"proc{n}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(2)
    ]
    # this process writes at the same time through its own connection
    for i in range(20):
        run_id = lg.start_run("parent", "cpu", {"i": i}, [USER])
        lg.finish_run(run_id, status="ok", response=str(i))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    assert lg.count_runs() == 120
    assert len(lg.list_runs(limit=0, program="proc0")) == 50
    assert len(lg.list_runs(limit=0, program="proc1")) == 50
    _check_db(db, 120)


def test_concurrent_processes_fresh_file(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "logs.db"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), f"proc{n}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    _check_db(db, 150)
    assert count(db, "_migrations") == len(MIGRATIONS)
