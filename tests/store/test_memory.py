"""Long-term memory: remember/recall/forget, hybrid retrieval (BM25 + vectors, fused), memory
across a kernel restart, auto-recall at spawn, the memory devices in the agent loop, and the
faults: non-UTF-8 text, an empty query, concurrent writers, a corrupt or locked store."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from llmos import params
from llmos.errors import InputError, MemoryStoreError
from llmos.hw.cpu.base import ToolCall
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel import boot
from llmos.kernel.core import Kernel
from llmos.store import embed
from llmos.store import memory as memmod
from llmos.store.memory import MemoryStore, fts_query, query_words
from tests.conftest import RunCli

FACTS = [
    "Alice's dog is called Biscuit.",
    "The staging database password rotates every Tuesday.",
    "Bob prefers green tea over coffee.",
    "The quarterly report is due on the fifth of March.",
    "Carol's car is a blue hatchback.",
]


@pytest.fixture
def store(tmp_path: Path) -> MemoryStore:
    s = MemoryStore.open(tmp_path / "memory.db")
    yield s
    s.close()


def test_embeddings_are_normalised_and_offline() -> None:
    vectors = embed.embed(["a dog", "a puppy", "tax law"])
    assert vectors.shape == (3, params.EMBED_DIM)
    norms = (vectors**2).sum(axis=1)
    assert all(abs(n - 1) < 1e-4 for n in norms)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])


def test_remember_recall_forget(store: MemoryStore) -> None:
    ids = [store.remember("alice", f, ["fact"]) for f in FACTS]
    hits = store.recall("alice", "What is the name of Alice's dog?", 3)
    assert hits[0].ref == f"m{ids[0]}" and hits[0].tags == ["fact"]
    assert store.recall("bob", "dog", 3) == []  # owners are kept apart
    assert store.forget("alice", ids[0])
    assert not store.forget("alice", ids[0])
    assert not store.forget("bob", ids[1])  # not bob's to forget
    assert all(h.ref != f"m{ids[0]}" for h in store.recall("alice", "Biscuit dog", 5))
    # forget removes the text for real
    assert (
        store.db.execute("SELECT count(*) FROM memories WHERE id = ?", (ids[0],)).fetchone()[0] == 0
    )


def test_hybrid_retrieval_fuses_both_rankings(store: MemoryStore) -> None:
    for f in FACTS:
        store.remember("alice", f)
    # An exact rare word: BM25 finds it.
    hit = store.recall("alice", "Biscuit", 1)[0]
    assert "Biscuit" in hit.text and hit.bm25_rank == 1
    # No word in common (after stop words): only the vectors can find it.
    hit = store.recall("alice", "which beverage does he like to drink", 1)[0]
    assert "tea" in hit.text and hit.bm25_rank is None and hit.vector_rank == 1
    # Both sides agree: the fused score is the sum of both reciprocal ranks.
    hit = store.recall("alice", "Carol car colour hatchback", 1)[0]
    assert "hatchback" in hit.text and hit.bm25_rank == 1 and hit.vector_rank is not None
    assert hit.score == pytest.approx(
        1 / (params.RRF_K + hit.bm25_rank) + 1 / (params.RRF_K + hit.vector_rank)
    )


def test_fts_query_drops_stop_words_and_quotes() -> None:
    q = fts_query(["text", "tags"], query_words('what is "the" pass"word? pass"word'))
    assert q == '{text tags}: ("pass" OR "word")'
    assert fts_query(["text"], query_words('say "x""y"')) == '{text}: ("say" OR "x" OR "y")'
    assert fts_query(["text"], query_words("   ")) is None
    assert query_words("what is it") == ["what", "is", "it"]  # only stop words: keep them


def test_bad_text_and_queries(store: MemoryStore) -> None:
    with pytest.raises(InputError, match="not valid UTF-8"):
        store.remember("alice", "bad \udcff surrogate")
    with pytest.raises(InputError, match="empty"):
        store.remember("alice", "   ")
    with pytest.raises(InputError, match="empty"):
        store.recall("alice", "")
    with pytest.raises(InputError, match="bytes; the limit"):
        store.remember("alice", "x" * (params.MEMORY_MAX_TEXT_BYTES + 1))


def _writer(path: str, n: int, who: int) -> None:
    s = MemoryStore.open(Path(path))
    for i in range(n):
        s.remember("alice", f"writer {who} fact number {i} about topic{who}x{i}")
    s.close()


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    reader = MemoryStore.open(path)
    assert reader.recall("alice", "anything") == []  # warm its cache before the writers
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), 25, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert reader.db.execute("SELECT count(*) FROM memories").fetchone()[0] == 100
    assert reader.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    hits = reader.recall("alice", "topic3x17", 1)  # the cache caught up with other writers
    assert hits and "writer 3 fact number 17" in hits[0].text
    reader.close()


def test_a_corrupt_store_is_reported_and_left_alone(home: Path, run_cli: RunCli) -> None:
    result = run_cli("memory", "remember", "hello")
    assert result.returncode == 0, result.stderr
    db = home / "memory.db"
    data = bytearray(db.read_bytes())
    data[:16] = b"garbage-garbage!"  # the SQLite header
    db.write_bytes(bytes(data))
    for wal in db.parent.glob("memory.db-*"):
        wal.unlink()
    before = db.read_bytes()
    result = run_cli("memory", "recall", "hello")
    assert result.returncode == 15
    assert result.stderr.strip().startswith("llmos: error: memory store")
    assert "corrupt" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert db.read_bytes() == before


def test_a_locked_store_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    MemoryStore.open(path).close()
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        store = MemoryStore.open(path, busy_timeout_s=0.2)
    except MemoryStoreError as exc:  # WAL readers may fail at open already
        assert "locked" in str(exc)
    else:
        with pytest.raises(MemoryStoreError, match="locked by another writer"):
            store.remember("alice", "blocked")
        store.close()
    holder.execute("ROLLBACK")
    holder.close()
    s = MemoryStore.open(path)
    assert s.db.execute("SELECT count(*) FROM memories").fetchone()[0] == 0
    s.close()


def test_a_store_made_by_the_old_layout_opens_without_migrating_again(tmp_path: Path) -> None:
    """memory.db as llmos wrote it before `llmos.store.db`: its `migrations` table is taken over."""
    path = tmp_path / "memory.db"
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    for name, step in memmod.MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")
        step(conn)
        conn.execute("INSERT INTO migrations VALUES (?, ?)", (name, 1000.0))
        conn.execute("COMMIT")
    vector = embed.embed([FACTS[0] + " fact"])[0]
    conn.execute(
        "INSERT INTO memories (owner, text, tags, created_at, embedding) VALUES (?, ?, ?, ?, ?)",
        ("alice", FACTS[0], '["fact"]', 1000.0, embed.to_blob(vector)),
    )
    conn.execute(
        "INSERT INTO memories_fts (rowid, text, tags, scope) VALUES (1, ?, 'fact', ?)",
        (FACTS[0], memmod.scope_token("u", "alice")),
    )
    conn.close()
    mid = 1
    s = MemoryStore.open(path)
    assert s.recall("alice", "Biscuit", 1)[0].ref == f"m{mid}"
    assert s.remember("alice", FACTS[1]) == mid + 1
    rows = s.db.read("SELECT name, applied_at FROM _migrations ORDER BY name")
    assert rows == [(name, 1000.0) for name, _ in memmod.MIGRATIONS]
    assert not s.db.read("SELECT 1 FROM sqlite_master WHERE name = 'migrations'")
    s.close()


# --- memory through the kernel ---------------------------------------------------------------
REMEMBERER = """---
name: rememberer
model: scripted
tools: [remember]
input:
  schema:
    input: string
---
{{role "system"}}
Remember what you are told.
{{role "user"}}
{{input}}
"""

RECALLER = """---
name: recaller
tools: [recall]
llmos.memory:
  auto_recall: 200
input:
  schema:
    input: string
---
{{role "system"}}
Answer from memory.
{{role "user"}}
{{input}}
"""


def test_memory_survives_a_kernel_restart(home: Path, tmp_path: Path) -> None:
    (tmp_path / "rememberer.prompt").write_text(REMEMBERER)
    (tmp_path / "recaller.prompt").write_text(RECALLER)
    cpu = ScriptedCPU(
        [
            [
                ToolCall(
                    id="c1",
                    name="remember",
                    arguments=json.dumps({"text": FACTS[0], "tags": ["pets"]}),
                )
            ],
            "Remembered.",
        ]
    )
    system = boot.boot()
    kernel = Kernel(system)
    proc = kernel.spawn(
        str(tmp_path / "rememberer.prompt"), {"input": FACTS[0]}, owner="alice", cpu=cpu
    )
    proc.wait(30)
    assert proc.exit_status == "ok", proc.error
    kernel.shutdown()
    system.close()

    # A new boot (a new kernel, a new store handle): the memory is still there, and
    # auto-recall pages it into the context of a new process at spawn.
    system = boot.boot()
    kernel = Kernel(system)
    cpu2 = ScriptedCPU(
        [
            [ToolCall(id="c2", name="recall", arguments=json.dumps({"query": "dog name"}))],
            "Biscuit.",
        ]
    )
    proc = kernel.spawn(
        str(tmp_path / "recaller.prompt"),
        {"input": "What is my dog called?"},
        owner="alice",
        cpu=cpu2,
    )
    proc.wait(30)
    assert proc.exit_status == "ok", proc.error
    first = cpu2.requests[0].messages
    # Recalled text is data, never instructions: it enters as fenced user-role text.
    assert any(m["role"] == "user" and FACTS[0] in str(m["content"]) for m in first)
    assert not any(FACTS[0] in str(m["content"]) for m in first if m["role"] == "system")
    tool = next(m for m in cpu2.requests[1].messages if m["role"] == "tool")
    assert FACTS[0] in str(tool["content"])
    segs = proc.context.accounting()["by_kind"]
    assert "memory" in segs and "syscall" in segs
    # Another owner's process sees none of alice's memories.
    cpu3 = ScriptedCPU(["I don't know."])
    proc = kernel.spawn(
        str(tmp_path / "recaller.prompt"),
        {"input": "What is my dog called?"},
        owner="bob",
        cpu=cpu3,
    )
    proc.wait(30)
    assert all(FACTS[0] not in str(m["content"]) for m in cpu3.requests[0].messages)
    kernel.shutdown()
    system.close()


PAGER_PROGRAM = """---
name: pager
tools: [page_in, recall]
llmos.context: 1200
config:
  maxOutputTokens: 32
input:
  schema:
    input: string
---
{{role "system"}}
Read the notes.
{{role "user"}}
{{input}}
"""


def test_a_process_pages_out_and_pages_back_in(home: Path, tmp_path: Path) -> None:
    (tmp_path / "pager.prompt").write_text(PAGER_PROGRAM)
    notes = "\n".join(f"Note {i}: the code word of note {i} is CODE{i}. " * 3 for i in range(60))
    cpu = ScriptedCPU(n_ctx=4096)
    system = boot.boot()
    kernel = Kernel(system)
    # A fresh store numbers pages from 1: the stub will name p1 as the first page.
    recall = json.dumps({"query": "CODE7", "source": "pages", "k": 2})
    cpu.queue(
        [ToolCall(id="c1", name="recall", arguments=recall)],
        [ToolCall(id="c2", name="page_in", arguments=json.dumps({"page": "p1"}))],
        "CODE7.",
    )
    proc = kernel.spawn(
        str(tmp_path / "pager.prompt"),
        {"input": notes + "\nWhich is note 7's code?"},
        owner="alice",
        cpu=cpu,
    )
    proc.wait(30)
    assert proc.exit_status == "ok", proc.error
    kernel.shutdown()
    info = proc.info()
    assert info["pages_out"] > 0 and info["context_limit"] == 1200
    recall_result = [m for m in cpu.requests[1].messages if m["role"] == "tool"][-1]
    assert "CODE7" in str(recall_result["content"])
    page_result = [m for m in cpu.requests[2].messages if m["role"] == "tool"][-1]
    assert "Note 0" in str(page_result["content"])
    for request in cpu.requests:
        assert cpu.count_messages(request.messages) <= 1200
    assert _first_page(str(cpu.requests[0].messages[1]["content"])) == "p1"
    run = system.log.get_run(proc.run_id)
    assert run is not None and run.extra["context"]["paged"] > 0
    system.close()


def _first_page(stub: str) -> str:
    import re

    match = re.search(r"\[paged out: (p\d+)", stub)
    assert match
    return match.group(1)


def test_cli_memory_commands(run_cli: RunCli) -> None:
    result = run_cli("memory", "remember", "-t", "pets", input=FACTS[0])
    assert result.returncode == 0 and result.stdout.strip().startswith("m"), result.stderr
    mid = result.stdout.strip()
    result = run_cli("memory", "recall", "dog name", "--json")
    hits = json.loads(result.stdout)
    assert hits[0]["id"] == mid and hits[0]["tags"] == ["pets"]
    result = run_cli("memory", "remember", input=b"caf\xe9 \xff")
    assert result.returncode == 4 and "not UTF-8" in result.stderr
    result = run_cli("memory", "recall", "")
    assert result.returncode == 4 and "empty" in result.stderr
    assert run_cli("memory", "forget", mid).returncode == 0
    result = run_cli("memory", "forget", mid)  # not found: its own code, not bad input's 4
    assert result.returncode == 21 and "no memory" in result.stderr
    result = run_cli("memory", "page", "p999")
    assert result.returncode == 21 and result.stderr.startswith("llmos: error: no page p999 of ")
    assert run_cli("memory", "list").stdout == ""


def test_memory_across_a_daemon_restart(run_cli: RunCli, tmp_path: Path) -> None:
    """The real path: the CLI remembers, a daemon's process recalls it at spawn; the daemon
    restarts and a new process still gets it (the store outlives both kernels)."""
    program = tmp_path / "ask.prompt"
    program.write_text(
        "---\nname: ask\nllmos.memory:\n  auto_recall: 200\nconfig:\n  maxOutputTokens: 8\n"
        "input:\n  schema:\n    input: string\n---\n"
        '{{role "system"}}\nAnswer briefly.\n{{role "user"}}\n{{input}}\n'
    )
    assert run_cli("memory", "remember", FACTS[1]).returncode == 0
    for _ in range(2):
        assert run_cli("kernel", "start").returncode == 0
        try:
            pid = run_cli("run", "-d", program, input="When does the password rotate?")
            assert pid.returncode == 0, pid.stderr
            assert run_cli("wait", pid.stdout.strip()).returncode == 0
            runs = json.loads(run_cli("logs", "--json", "-n", "1").stdout)
            record = json.loads(run_cli("logs", runs[0]["id"], "--json").stdout)
            attached = record["context"]["attached"]
            assert attached[0]["kind"] == "memory" and FACTS[1] in attached[0]["text"]
        finally:
            assert run_cli("kernel", "stop").returncode == 0


def test_cli_on_a_locked_store_exits_15(run_cli: RunCli, home: Path) -> None:
    assert run_cli("memory", "remember", "first").returncode == 0
    holder = sqlite3.connect(str(home / "memory.db"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the store
    try:
        result = run_cli("memory", "remember", "second")
        assert result.returncode == 15, result.stderr
        assert "locked by another writer" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        read = run_cli("memory", "list")  # readers are not blocked by a writer (WAL)
        assert read.returncode == 0 and "first" in read.stdout
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert run_cli("memory", "remember", "second").returncode == 0
    assert run_cli("memory", "list").stdout.count("\n") == 2


def test_the_recall_example_answers_from_memory(run_cli: RunCli) -> None:
    """examples/recall.prompt on the embedded model: auto-recall puts the memory in view."""
    assert run_cli("memory", "remember", "My bike lock code is 4719.").returncode == 0
    assert run_cli("memory", "remember", "The team offsite is in Lisbon in May.").returncode == 0
    example = Path(__file__).resolve().parents[2] / "examples" / "recall.prompt"
    result = run_cli("run", example, input="What is the code of my bike lock?")
    assert result.returncode == 0, result.stderr
    assert "4719" in result.stdout


def test_vector_index_grows_in_place_and_removes() -> None:
    vectors = embed.embed([f"fact number {i} about topic {i % 7}" for i in range(3000)])
    whole = embed.VectorIndex()
    whole.reset(list(range(3000)), vectors)
    grown = embed.VectorIndex()
    for start in range(0, 3000, 7):  # many small adds, as a store catching up does
        grown.add(list(range(start, min(start + 7, 3000))), vectors[start : start + 7])
    assert len(grown) == 3000
    query = embed.embed(["topic 3 fact number 1234"])[0]
    assert grown.search(query, 10) == whole.search(query, 10)
    best = grown.search(query, 1)[0][0]
    grown.remove({best})
    assert len(grown) == 2999 and best not in {i for i, _ in grown.search(query, 50)}


def test_large_vector_index_shortlists_by_sign_bits_and_scores_the_named_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above VECTOR_EXACT_MAX rows: the sign-bit shortlist, rescored exactly, finds what the
    exact scan finds for a close query; rows named in `also` are scored even when the
    shortlist misses them; add and remove keep the sign bits in step with the rows."""
    words = "cat dog owl pear plum oak fir tin zinc salt rain snow mud clay silk wool map ink"
    texts = [" ".join(c) for c in itertools.combinations(words.split(), 4)][:3000]
    vectors = embed.embed(texts)
    exact = embed.VectorIndex()
    exact.reset(list(range(1, 3001)), vectors)
    query = embed.embed([texts[1234]])[0]
    truth = exact.search(query, 5)
    monkeypatch.setattr(params, "VECTOR_EXACT_MAX", 500)
    monkeypatch.setattr(params, "VECTOR_SHORTLIST", 50)
    large = embed.VectorIndex()
    large.add(list(range(1, 2001)), vectors[:2000])
    assert large.search(query, 5)  # builds the sign-bit index
    large.add(list(range(2001, 3001)), vectors[2000:])  # kept in step from here on
    assert large.search(query, 5)[0] == truth[0] == (1235, pytest.approx(1.0, abs=1e-5))
    # The row farthest by sign bits is not on the shortlist, but when named it is scored.
    hamming = np.unpackbits(embed.sign_bits(vectors) ^ embed.sign_bits(query), axis=1).sum(1)
    far = int(np.argmax(hamming)) + 1
    assert far not in {i for i, _ in large.search(query, 3000)}
    scored = dict(large.search(query, 3000, also=[far, 99_999]))
    assert scored[far] == pytest.approx(float(vectors[far - 1] @ query), abs=1e-5)
    assert 99_999 not in scored
    large.remove({1235, 7})
    exact.remove({1235, 7})
    near = embed.embed([texts[2500]])[0]
    assert large.search(near, 1) == exact.search(near, 1)
    assert 1235 not in {i for i, _ in large.search(query, 50)}
    with pytest.raises(ValueError, match="ascend"):
        large.add([5], vectors[:1])


def test_sign_bit_shortlist_is_the_nearest_rows_and_named_rows_are_scored_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shortlist holds the VECTOR_SHORTLIST rows nearest by Hamming distance (none left
    out nearer than one taken); a named row already on it is not scored twice; a shortlist
    taken beforehand gives the same answer as one taken inside `search`."""
    words = "cat dog owl pear plum oak fir tin zinc salt rain snow mud clay silk wool map ink"
    texts = [" ".join(c) for c in itertools.combinations(words.split(), 4)][:2000]
    vectors = embed.embed(texts)
    monkeypatch.setattr(params, "VECTOR_EXACT_MAX", 300)
    monkeypatch.setattr(params, "VECTOR_SHORTLIST", 100)
    index = embed.VectorIndex()
    index.reset(list(range(10, 2010)), vectors)
    query = embed.embed(["owl pear rain ink"])[0]
    rows = index.shortlist(query)
    assert rows is not None and len(rows) == 100 and len(set(rows.tolist())) == 100
    hamming = np.unpackbits(embed.sign_bits(vectors) ^ embed.sign_bits(query), axis=1).sum(1)
    outside = np.ones(len(texts), dtype=bool)
    outside[rows] = False
    assert hamming[rows].max() <= hamming[outside].min()
    inside, far = int(index.ids[rows[0]]), int(index.ids[np.argmax(hamming)])
    found = index.search(query, 2000, also=[inside, far, inside])
    assert len(found) == 101 and len({i for i, _ in found}) == 101
    assert index.search(query, 20, also=[far], shortlist=rows) == index.search(
        query, 20, also=[far]
    )
    small = embed.VectorIndex()
    small.reset(list(range(10, 210)), vectors[:200])
    assert small.shortlist(query) is None  # every row is scored


def test_hybrid_recall_with_bm25_on_the_worker_thread_answers_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large scope runs BM25 on a worker thread beside the vector search: the same hits as
    running it in line, still only the owner's; closing the store ends the worker."""
    monkeypatch.setattr(params, "VECTOR_EXACT_MAX", 100)
    monkeypatch.setattr(params, "VECTOR_SHORTLIST", 40)
    store = MemoryStore.open(tmp_path / "memory.db")
    try:
        store.remember_many(
            "alice", [(f"ticket TK-{i} printer jam on floor {i % 9}", []) for i in range(400)]
        )
        store.remember_many(
            "bob", [(f"ticket TK-{i} printer jam on floor {i % 9}", []) for i in range(400)]
        )
        queries = ["what happened in TK-123", "printer on floor 4", "paper stuck", "TK-7"]
        monkeypatch.setattr(params, "RECALL_PARALLEL_MIN_ROWS", 10**9)
        inline = [store.recall("alice", q, 10) for q in queries]
        assert store._pool is None
        monkeypatch.setattr(params, "RECALL_PARALLEL_MIN_ROWS", 0)
        beside = [store.recall("alice", q, 10) for q in queries]
        assert store._pool is not None
        assert beside == inline and inline[0][0].text == "ticket TK-123 printer jam on floor 6"
        alice = {int(h.ref[1:]) for hits in beside for h in hits}
        assert all(i <= 400 for i in alice)  # bob's rows come after alice's
        pool = store._pool
    finally:
        store.close()
    assert store._pool is None and pool._shutdown
