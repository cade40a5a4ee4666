"""Long-term memory and the swap store: one SQLite file that outlives processes and reboots.

`<home>/memory.db` holds three things for every user:
- memories: what a process chose to `remember(text, tags)`, until someone `forget`s it;
- pages: context segments paged out of a process's context window
  (`llmos.kernel.mm.paging`), kept so that every page-out can be undone (`page_in`) and
  searched (`recall`);
- shared memory segments (`llmos.store.shm`).

Retrieval is hybrid. A query runs through SQLite FTS5 (BM25, English stop words and words too
common to rank by dropped, the owner's rows chosen by a join) and through a cosine index over
embeddings from `llmos.store.embed` (exact when small, a sign-bit shortlist rescored exactly
when large, the BM25 candidates always scored); each side gives up to
params.RECALL_CANDIDATES ids and the two rankings are fused by reciprocal rank
(score = sum of 1 / (params.RRF_K + rank)). Above params.RECALL_PARALLEL_MIN_ROWS rows the
BM25 query runs on one worker thread per store while the caller's thread embeds the query and
takes the sign-bit shortlist; the answer is the same as run one after the other. Vectors are
stored with their rows (float16) and cached in RAM per scope; the cache catches up with other
writers (another llmos, the daemon) by reading rows newer than it has seen and the tombstones
`forget` leaves.

Invariants:
- Every write is one transaction (BEGIN IMMEDIATE): a failure, the disk full included, leaves
  the store as it was and raises MemoryStoreError; nothing is half-written.
- A memory or page is only ever read by its owner (shared segments have their own rights).
- Pages are never deleted: a page-out is always reversible. `forget` deletes a memory for
  real (its text, its index entries), leaving only a tombstone with its id.
- A corrupt or locked store gives one clear MemoryStoreError naming the file and is left
  untouched; llmos never repairs or replaces it on its own. Opening, locking, migrations and
  that error mapping are `llmos.store.db`'s; threads share one connection behind its lock.

What this module does not do: decide what to page out (see `llmos.kernel.mm.paging`), or
check shared-segment rights (see `llmos.store.shm`).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos import params
from llmos.errors import InputError, MemoryStoreError, QuotaError
from llmos.store import embed
from llmos.store.db import Database, Migration

# Words too common to rank by: dropping them keeps BM25 meaningful and fast on large stores.
_STOP = """a about after all also an and any are as at be been but by can could did do does for
    from had has have he her him his how i if in into is it its me my no not of on or our she
    so than that the their them then there these they this to up us was we were what when
    where which who whom why will with would you your"""
STOP_WORDS = frozenset(_STOP.split())
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class Hit:
    """One retrieval result: a memory (`m<id>`) or a page (`p<id>`)."""

    ref: str
    text: str
    score: float
    tags: list[str] = field(default_factory=list)
    created_at: float = 0.0
    bm25_rank: int | None = None
    vector_rank: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.ref, "text": self.text, "score": round(self.score, 5)}
        if self.tags:
            out["tags"] = self.tags
        return out


def snippet(text: str, query: str, size: int) -> str:
    """About `size` characters of `text` around the first word of `query` it contains (the
    start when none); marked with ... where cut."""
    if len(text) <= size:
        return text
    low = text.lower()
    words = [w for w in _WORD.findall(query.lower()) if w not in STOP_WORDS]
    found = [i for i in (low.find(w) for w in words) if i >= 0]
    at = min(found) if found else 0
    start = max(0, min(at - size // 4, len(text) - size))
    cut = text[start : start + size]
    return ("..." if start else "") + cut + ("..." if start + size < len(text) else "")


def check_text(text: str, what: str, max_bytes: int) -> str:
    """`text` if it is non-empty UTF-8 within `max_bytes`, else InputError."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} is not valid UTF-8 text (at character {exc.start})") from exc
    if not text.strip():
        raise InputError(f"{what} is empty")
    if len(data) > max_bytes:
        raise InputError(f"{what} is {len(data)} bytes; the limit is {max_bytes}")
    return text


def scope_token(kind: str, key: str) -> str:
    """The FTS5 token stored with each row naming its owner (memories) or process (pages).
    Searches no longer match on it (see `fts_query`); it stays for the stores that have it."""
    return kind + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def query_words(query: str) -> list[str]:
    """The words of a query worth searching for: stop words dropped (unless that leaves none),
    each once, in order."""
    every = _WORD.findall(query.lower())
    words = [w for w in every if w not in STOP_WORDS] or every
    return list(dict.fromkeys(words))


def fts_query(columns: list[str], words: list[str]) -> str | None:
    """An FTS5 MATCH expression: any of the words in any of the columns (None: no words).
    The owner's rows are chosen by a join, not by matching the scope column as well: that
    would make FTS5 read the scope's whole doclist (30 ms a query at a million memories)."""
    if not words:
        return None
    terms = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
    return "{" + " ".join(columns) + "}: (" + terms + ")"


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """Each statement of `script`, inside the caller's transaction (executescript would
    commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _migration_1(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE memories (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            owner TEXT NOT NULL,
            text TEXT NOT NULL,
            tags TEXT NOT NULL DEFAULT '[]',
            source TEXT,
            created_at REAL NOT NULL,
            embedding BLOB NOT NULL
        );
        CREATE INDEX memories_owner ON memories(owner, id);
        CREATE VIRTUAL TABLE memories_fts USING fts5(text, tags, scope);
        CREATE TABLE tombstones (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            owner TEXT NOT NULL,
            memory_id INTEGER NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX tombstones_owner ON tombstones(owner, seq);
        CREATE TABLE pages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            owner TEXT NOT NULL,
            process TEXT NOT NULL,
            kind TEXT NOT NULL,
            role TEXT NOT NULL,
            text TEXT NOT NULL,
            summary TEXT NOT NULL,
            tokens INTEGER,
            provenance TEXT NOT NULL,
            created_at REAL NOT NULL,
            embedding BLOB NOT NULL
        );
        CREATE INDEX pages_process ON pages(process, id);
        CREATE VIRTUAL TABLE pages_fts USING fts5(text, scope);
        CREATE TABLE shm (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            text TEXT NOT NULL,
            others TEXT NOT NULL DEFAULT '',
            acl TEXT NOT NULL DEFAULT '{}',
            version INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            updated_by TEXT NOT NULL
        );
        """,
    )


def _migration_2(db: sqlite3.Connection) -> None:
    # Document frequencies, to leave out of a BM25 query the words too common to rank by.
    db.execute("CREATE VIRTUAL TABLE memories_vocab USING fts5vocab(memories_fts, 'row')")
    db.execute("CREATE VIRTUAL TABLE pages_vocab USING fts5vocab(pages_fts, 'row')")


MIGRATIONS: list[Migration] = [
    ("001_memories_pages_shm", _migration_1),
    ("002_fts_vocab", _migration_2),
]


class _Cache:
    """The vector index of one scope, and how far it has read the store."""

    def __init__(self) -> None:
        self.index = embed.VectorIndex()
        self.last_id = 0
        self.last_tombstone = 0


class MemoryStore:
    """The store behind `remember`, `recall`, `forget`, page-out/in and shared segments.
    Thread-safe: one connection under `db.lock`, the RAM vector caches under their own lock
    (taken first), and a large scope's BM25 query on one worker thread (see the module note)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.path = db.path
        self._caches: dict[tuple[str, str], _Cache] = {}
        # Guards the caches (a VectorIndex is not thread-safe). Taken before db.lock, never
        # while holding it; the BM25 worker takes db.lock only.
        self._index_lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None
        # (table, word) -> (documents holding the word, the scope's size when counted)
        self._df: dict[tuple[str, str], tuple[int, int]] = {}

    @classmethod
    def open(
        cls, path: Path, *, busy_timeout_s: float = params.MEMORY_BUSY_TIMEOUT_S
    ) -> MemoryStore:
        db = Database.open(
            path,
            label="memory store",
            error=MemoryStoreError,
            migrations=MIGRATIONS,
            busy_timeout_s=busy_timeout_s,
            legacy_migrations_table="migrations",
            pragmas=("PRAGMA synchronous = NORMAL",),
        )
        return cls(db)

    def close(self) -> None:
        with self._index_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.db.close()

    # --- long-term memories ----------------------------------------------------------------------
    def remember(
        self,
        owner: str,
        text: str,
        tags: list[str] | None = None,
        *,
        source: str | None = None,
        quota: int = params.QUOTA_MEMORIES,
    ) -> int:
        """Store a memory; its id. InputError for empty, non-UTF-8 or oversized text."""
        return self.remember_many(owner, [(text, tags or [])], source=source, quota=quota)[0]

    def remember_many(
        self,
        owner: str,
        items: list[tuple[str, list[str]]],
        *,
        source: str | None = None,
        quota: int = params.QUOTA_MEMORIES,
    ) -> list[int]:
        """Store memories in one transaction (all or none); their ids. QuotaError when the
        owner would hold more than `quota` memories."""
        checked: list[tuple[str, list[str]]] = []
        for text, tags in items:
            text = check_text(text, "memory text", params.MEMORY_MAX_TEXT_BYTES)
            tags = [check_text(str(t), "tag", params.MEMORY_MAX_TAG_BYTES).strip() for t in tags]
            if len(tags) > params.MEMORY_MAX_TAGS:
                raise InputError(f"{len(tags)} tags; the limit is {params.MEMORY_MAX_TAGS}")
            checked.append((text, tags))
        vectors = embed.embed([t + (" " + " ".join(g) if g else "") for t, g in checked])
        scope = scope_token("u", owner)
        now = time.time()
        ids: list[int] = []
        with self.db.transaction("remember") as conn:
            _check_quota(conn, owner, len(checked), quota)
            for (text, tags), vector in zip(checked, vectors, strict=True):
                cur = conn.execute(
                    "INSERT INTO memories (owner, text, tags, source, created_at, embedding) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (owner, text, json.dumps(tags), source, now, embed.to_blob(vector)),
                )
                mid = int(cur.lastrowid or 0)
                conn.execute(
                    "INSERT INTO memories_fts (rowid, text, tags, scope) VALUES (?, ?, ?, ?)",
                    (mid, text, " ".join(tags), scope),
                )
                ids.append(mid)
        return ids

    def forget(self, owner: str, memory_id: int) -> bool:
        """Delete one of the owner's memories; False if there is no such memory of theirs."""
        with self.db.transaction("forget") as conn:
            row = conn.execute(
                "SELECT text, tags FROM memories WHERE id = ? AND owner = ?", (memory_id, owner)
            ).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM memories WHERE id = ?", (memory_id,))
            conn.execute("DELETE FROM memories_fts WHERE rowid = ?", (memory_id,))
            conn.execute(
                "INSERT INTO tombstones (owner, memory_id, at) VALUES (?, ?, ?)",
                (owner, memory_id, time.time()),
            )
        return True

    def memories(self, owner: str, limit: int = params.MEMORY_LIST_DEFAULT) -> list[Hit]:
        rows = self.db.read(
            "SELECT id, text, tags, created_at FROM memories WHERE owner = ? "
            "ORDER BY id DESC LIMIT ?",
            (owner, limit),
        )
        return [Hit(f"m{r[0]}", r[1], 0.0, json.loads(r[2]), r[3]) for r in rows]

    def recall(
        self, owner: str, query: str, k: int = params.RECALL_DEFAULT_K, *, mode: str = "hybrid"
    ) -> list[Hit]:
        """The owner's k memories most relevant to `query`: hybrid (BM25 and vectors, fused),
        or one side alone (`mode` "bm25" or "vector", for comparison)."""
        query = _check_query(query)
        ranked = self._hybrid("memories", owner, query, k, mode)
        return self._hits("memories", "m", owner, ranked)

    # --- pages (the swap store of llmos.paging) --------------------------------------------------
    def page_out(self, owner: str, process: str, pages: list[dict[str, Any]]) -> list[int]:
        """Write segments leaving a context; their page ids, in order. All or nothing."""
        if not pages:
            return []
        vectors = embed.embed([p["text"] for p in pages])
        scope = scope_token("p", process)
        now = time.time()
        ids: list[int] = []
        with self.db.transaction("page_out") as conn:
            for page, vector in zip(pages, vectors, strict=True):
                cur = conn.execute(
                    "INSERT INTO pages (owner, process, kind, role, text, summary, tokens, "
                    "provenance, created_at, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        owner,
                        process,
                        page["kind"],
                        page["role"],
                        page["text"],
                        page["summary"],
                        page.get("tokens"),
                        json.dumps(page.get("provenance") or {}),
                        now,
                        embed.to_blob(vector),
                    ),
                )
                pid = int(cur.lastrowid or 0)
                conn.execute(
                    "INSERT INTO pages_fts (rowid, text, scope) VALUES (?, ?, ?)",
                    (pid, page["text"], scope),
                )
                ids.append(pid)
        return ids

    def page(self, owner: str, page_id: int) -> dict[str, Any] | None:
        """A page of the owner's (None if there is none with that id)."""
        rows = self.db.read(
            "SELECT id, process, kind, role, text, summary, tokens, provenance, created_at "
            "FROM pages WHERE id = ? AND owner = ?",
            (page_id, owner),
        )
        if not rows:
            return None
        r = rows[0]
        return {
            "id": r[0],
            "process": r[1],
            "kind": r[2],
            "role": r[3],
            "text": r[4],
            "summary": r[5],
            "tokens": r[6],
            "provenance": json.loads(r[7]),
            "created_at": r[8],
        }

    def search_pages(
        self, owner: str, process: str, query: str, k: int = params.RECALL_DEFAULT_K
    ) -> list[Hit]:
        """The k pages of one process most relevant to `query`."""
        query = _check_query(query)
        ranked = self._hybrid("pages", process, query, k)
        return self._hits("pages", "p", owner, ranked)

    def _hits(
        self,
        table: str,
        prefix: str,
        owner: str,
        ranked: list[tuple[int, float, int | None, int | None]],
    ) -> list[Hit]:
        """The ranked ids as Hits, read back (and checked to be the owner's) in one query."""
        if not ranked:
            return []
        ids = [i for i, _, _, _ in ranked]
        tags = "tags" if table == "memories" else "'[]'"
        rows = {
            r[0]: r
            for r in self.db.read(
                f"SELECT id, text, {tags}, created_at FROM {table} WHERE owner = ? AND id IN "
                f"({','.join('?' * len(ids))})",
                (owner, *ids),
            )
        }
        return [
            Hit(f"{prefix}{i}", rows[i][1], score, json.loads(rows[i][2]), rows[i][3], b, v)
            for i, score, b, v in ranked
            if i in rows
        ]

    # --- hybrid retrieval ------------------------------------------------------------------------
    def _hybrid(
        self, table: str, key: str, query: str, k: int, mode: str = "hybrid"
    ) -> list[tuple[int, float, int | None, int | None]]:
        """(id, fused score, BM25 rank, vector rank), best first, at most k."""
        if mode not in ("hybrid", "bm25", "vector"):
            raise InputError(f"unknown retrieval mode {mode!r} (hybrid, bm25 or vector)")
        k = max(1, min(k, params.RECALL_MAX_K))
        n = max(params.RECALL_CANDIDATES, k)
        with self._index_lock:
            cache = self._caches.setdefault((table, key), _Cache())
            self._catch_up(table, key, cache)
            total = len(cache.index)
        bm25: list[int] = []
        pending: Future[list[int]] | None = None
        if mode == "hybrid" and total > params.RECALL_PARALLEL_MIN_ROWS:
            pending = self._worker().submit(self._bm25, table, key, query, total, n)
        elif mode != "vector":
            bm25 = self._bm25(table, key, query, total, n)
        vectors = []
        if mode != "bm25":
            vector = embed.embed([query])[0]
            with self._index_lock:
                shortlist = cache.index.shortlist(vector)  # while BM25 runs beside it
                if pending is not None:
                    bm25 = pending.result()
                # The BM25 candidates are scored too, so that a large index's shortlist never
                # hides how close they are (see llmos.store.embed.VectorIndex).
                found = cache.index.search(vector, n, also=bm25, shortlist=shortlist)
            vectors = [i for i, _ in found]
        scores: dict[int, float] = {}
        b_rank: dict[int, int] = {}
        v_rank: dict[int, int] = {}
        for rank, i in enumerate(bm25, 1):
            scores[i] = scores.get(i, 0.0) + 1.0 / (params.RRF_K + rank)
            b_rank[i] = rank
        for rank, i in enumerate(vectors, 1):
            scores[i] = scores.get(i, 0.0) + 1.0 / (params.RRF_K + rank)
            v_rank[i] = rank
        best = sorted(scores, key=lambda i: (-scores[i], i))[:k]
        return [(i, scores[i], b_rank.get(i), v_rank.get(i)) for i in best]

    def _bm25(self, table: str, key: str, query: str, total: int, n: int) -> list[int]:
        """Up to n of the scope's ids best by BM25 for `query`'s rare words, best first."""
        columns = ["text", "tags"] if table == "memories" else ["text"]
        match = fts_query(columns, self._rare_words(table, query, total))
        if match is None:
            return []
        column = "owner" if table == "memories" else "process"
        return [
            r[0]
            for r in self.db.read(
                f"SELECT f.rowid FROM {table}_fts AS f JOIN {table} AS t ON t.id = f.rowid "
                f"WHERE {table}_fts MATCH ? AND t.{column} = ? ORDER BY f.rank LIMIT ?",
                (match, key, n),
            )
        ]

    def _worker(self) -> ThreadPoolExecutor:
        """The thread that runs a large scope's BM25 query while the caller's thread embeds
        the query and takes the sign-bit shortlist (SQLite, the tokenizer and faiss all let go
        of the GIL, so on two cores the two overlap)."""
        with self._index_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmos-recall")
            return self._pool

    def _rare_words(self, table: str, query: str, total: int) -> list[str]:
        """The query's words minus those in more than params.BM25_COMMON_SHARE of the scope's
        `total` documents (and at least params.BM25_COMMON_MIN of them): such words barely
        move BM25 but make it score every document they occur in. The rarest word always
        stays. Document frequencies (FTS5 counts them by reading a word's doclist: 5 ms for a
        word in 150k rows) are remembered while the scope stays within
        params.BM25_DF_STALE_SHARE of its size then; they only decide what is too common."""
        words = query_words(query)
        if not words:
            return []
        df: dict[str, int] = {}
        missing: list[str] = []
        for w in words:
            cached = self._df.get((table, w))
            if cached is not None and abs(total - cached[1]) <= params.BM25_DF_STALE_SHARE * max(
                cached[1], 1
            ):
                df[w] = cached[0]
            else:
                missing.append(w)
        if missing:
            rows = dict(
                self.db.read(
                    f"SELECT term, doc FROM {table}_vocab WHERE term IN "
                    f"({','.join('?' * len(missing))})",
                    tuple(missing),
                )
            )
            if len(self._df) + len(missing) > params.BM25_DF_CACHE_TERMS:
                self._df.clear()
            for w in missing:
                df[w] = int(rows.get(w, 0))
                self._df[(table, w)] = (df[w], total)
        limit = max(params.BM25_COMMON_MIN, params.BM25_COMMON_SHARE * total)
        kept = [w for w in words if df[w] <= limit]
        return kept or [min(words, key=lambda w: df[w])]

    def _catch_up(self, table: str, key: str, cache: _Cache) -> None:
        """Read rows (and, for memories, tombstones) this cache has not seen yet."""
        column = "owner" if table == "memories" else "process"
        rows = self.db.read(
            f"SELECT id, embedding FROM {table} WHERE {column} = ? AND id > ? ORDER BY id",
            (key, cache.last_id),
        )
        if rows:
            cache.index.add([r[0] for r in rows], embed.from_blobs([r[1] for r in rows]))
            cache.last_id = rows[-1][0]
        if table == "memories":
            gone = self.db.read(
                "SELECT seq, memory_id FROM tombstones WHERE owner = ? AND seq > ? ORDER BY seq",
                (key, cache.last_tombstone),
            )
            if gone:
                cache.index.remove({g[1] for g in gone})
                cache.last_tombstone = gone[-1][0]


def _check_query(query: str) -> str:
    query = check_text(query, "recall query", params.MEMORY_QUERY_MAX_BYTES)
    return query[: params.MEMORY_QUERY_MAX_CHARS]


def _check_quota(conn: sqlite3.Connection, owner: str, adding: int, quota: int) -> None:
    """QuotaError when `owner` would hold more than `quota` memories after `adding` more."""
    (held,) = conn.execute("SELECT COUNT(*) FROM memories WHERE owner = ?", (owner,)).fetchone()
    if held + adding > quota:
        raise QuotaError(f"{owner} holds {held} memories; the quota is {quota} (forget some)")
