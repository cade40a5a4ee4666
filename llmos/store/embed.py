"""Text embeddings for retrieval, from a small model that ships inside a PyPI wheel.

The model is WordLlama's `l2_supercat` (256 dimensions): a static token-embedding table
distilled from a large LLM's embeddings, with its tokenizer, both inside the `wordllama` wheel.
It runs on numpy alone (no PyTorch, no ONNX runtime, no download): about 25 microseconds per
query and some 40,000 short texts a second on one core, which is what lets `recall` stay far
inside its latency goal at 100k memories (see bench/retrieval.py for recall@5 and latency).

`VectorIndex` is the vector side of hybrid retrieval: one float32 matrix of the rows, scored
by cosine (one matrix-vector product). Up to params.VECTOR_EXACT_MAX rows every row is scored.
Above that a full product reads 1 KB a row (a gigabyte at a million memories, 100+ ms on the
machines llmos is tested on), so the index also keeps each row's sign bits (32 bytes) in a faiss
binary index: a query takes the params.VECTOR_SHORTLIST rows nearest to its own sign bits by
Hamming distance, plus any rows the caller names (`also`: the BM25 candidates of hybrid
retrieval), and scores only those exactly. Measured by bench/retrieval.py: recall@5 of hybrid
retrieval stays that of the exact scan at 100k and 1M memories, at a few milliseconds.
(sqlite-vec's `vec0` and faiss's HNSW and IVF indexes were measured too: HNSW takes minutes to
build at 1M on two cores; IVF and product quantization agree with the exact top 50 less often
than the sign-bit shortlist does for the same time.)

Invariants: embeddings are L2-normalised float32 rows of params.EMBED_DIM; an index's ids
ascend (rows are added in id order), and its sign-bit index, when it has one, holds exactly
its rows in the same order; searching holds numpy's BLAS to one thread for the whole
process (see `_one_blas_thread`); the model is loaded
once per OS process, from files in the wheel only (`wordllama`'s own loader would try the
network for its tokenizer, so it is not used); loading it leaves the process's logging
configuration as it found it (the package configures INFO logging on import).

What this module does not do: store vectors (see `llmos.store.memory`) or BM25 (SQLite FTS5 does).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from llmos import params
from llmos.errors import LlmosError

Vectors = npt.NDArray[np.float32]

_lock = threading.Lock()
_model: Any = None


def _load() -> Any:
    global _model
    with _lock:
        if _model is None:
            root_logger = logging.getLogger()
            level, handlers = root_logger.level, list(root_logger.handlers)
            try:
                # wordllama calls logging.basicConfig(level=INFO) on import, which would turn
                # on INFO lines (HTTP requests among them) on stderr for the whole process.
                import wordllama
                from safetensors import safe_open
                from wordllama import WordLlama
                from wordllama.inference import WordLlamaInference
            except ImportError as exc:  # pragma: no cover - a broken install
                raise LlmosError(
                    f"the embedding model package is missing ({exc}); "
                    f"reinstall llmos (it depends on {params.EMBED_PACKAGE})"
                ) from exc
            finally:
                root_logger.setLevel(level)
                root_logger.handlers[:] = handlers
            root = Path(wordllama.__file__).parent
            weights = root / "weights" / f"{params.EMBED_CONFIG}_{params.EMBED_DIM}.safetensors"
            tokenizer = root / "tokenizers" / f"{params.EMBED_CONFIG}_tokenizer_config.json"
            for path in (weights, tokenizer):
                if not path.is_file():
                    raise LlmosError(f"embedding model file missing from its wheel: {path}")
            with safe_open(str(weights), framework="np", device="cpu") as f:
                table = f.get_tensor("embedding.weight")
            _model = WordLlamaInference(table, WordLlama.load_tokenizer(tokenizer), binary=False)
    return _model


def embed(texts: list[str]) -> Vectors:
    """One L2-normalised row per text (a text with no known token gets a zero row)."""
    if not texts:
        return np.zeros((0, params.EMBED_DIM), dtype=np.float32)
    model = _load()
    vectors = model.embed(texts, norm=True, batch_size=params.EMBED_BATCH)
    out = np.nan_to_num(np.asarray(vectors, dtype=np.float32))
    return out.reshape(len(texts), params.EMBED_DIM)


def count_tokens(texts: list[str]) -> int:
    """How many tokens of the embedding model's tokenizer `texts` hold (what is metered)."""
    if not texts:
        return 0
    model = _load()
    return sum(len(e.ids) for e in model.tokenizer.encode_batch(texts))


def to_blob(vector: npt.NDArray[Any]) -> bytes:
    """A vector as stored in SQLite: float16, little-endian (half the bytes of float32; the
    recall figures of bench/retrieval.py are measured on vectors read back from this)."""
    return np.asarray(vector, dtype="<f2").tobytes()


def from_blobs(blobs: list[bytes]) -> Vectors:
    if not blobs:
        return np.zeros((0, params.EMBED_DIM), dtype=np.float32)
    raw = np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(blobs), params.EMBED_DIM)
    return raw.astype(np.float32)


_blas_limited = False


def _one_blas_thread() -> None:
    """Hold numpy's BLAS to one thread in this process, once. A matrix-vector product this
    size gains nothing from more, and OpenBLAS's threads spinning against other work on a
    busy machine made a 10k-row product take 8 ms instead of 0.2 ms."""
    global _blas_limited
    if not _blas_limited:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
        _blas_limited = True


def _faiss() -> Any:
    """faiss, imported on first use and held to one thread per search (searches run one query
    at a time, beside the model's own threads)."""
    import faiss

    faiss.omp_set_num_threads(1)
    return faiss


def sign_bits(matrix: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Each row's sign bits, packed: params.EMBED_DIM / 8 bytes a row."""
    return np.packbits(np.asarray(matrix).reshape(-1, params.EMBED_DIM) > 0, axis=1)


class VectorIndex:
    """A cosine index over (id, vector) rows: exact up to params.VECTOR_EXACT_MAX rows, a
    sign-bit shortlist rescored exactly above (see the module note). Not thread-safe on its
    own; the memory store guards it. Rows live in a buffer that grows by doubling, so adding a
    few rows to a large index does not copy it."""

    def __init__(self) -> None:
        self._ids: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._rows: Vectors = np.zeros((0, params.EMBED_DIM), dtype=np.float32)
        self._n = 0
        self._bits: Any = None  # faiss.IndexBinaryFlat over the rows' sign bits, once built

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> npt.NDArray[np.int64]:
        return self._ids[: self._n]

    @property
    def matrix(self) -> Vectors:
        return self._rows[: self._n]

    def reset(self, ids: list[int], matrix: Vectors) -> None:
        order = np.asarray(ids, dtype=np.int64)
        if len(order) > 1 and not bool(np.all(order[1:] > order[:-1])):
            raise ValueError("vector index ids must ascend")
        self._ids = order
        self._rows = np.ascontiguousarray(matrix, dtype=np.float32)
        self._n = len(self._ids)
        self._bits = None

    def add(self, ids: list[int], matrix: Vectors) -> None:
        k = len(ids)
        if k == 0:
            return
        new = np.asarray(ids, dtype=np.int64)
        if (self._n and new[0] <= self._ids[self._n - 1]) or bool(np.any(new[1:] <= new[:-1])):
            raise ValueError("vector index ids must ascend")
        if self._n + k > len(self._ids):
            capacity = max(2 * len(self._ids), self._n + k, 1024)
            grown_ids = np.zeros(capacity, dtype=np.int64)
            grown_rows = np.zeros((capacity, params.EMBED_DIM), dtype=np.float32)
            grown_ids[: self._n] = self.ids
            grown_rows[: self._n] = self.matrix
            self._ids, self._rows = grown_ids, grown_rows
        self._ids[self._n : self._n + k] = new
        self._rows[self._n : self._n + k] = matrix
        self._n += k
        if self._bits is not None:
            self._bits.add(sign_bits(matrix))

    def remove(self, ids: set[int]) -> None:
        keep = ~np.isin(self.ids, np.fromiter(ids, dtype=np.int64))
        if bool(keep.all()):
            return
        bits = self._bits
        if bits is not None:
            gone = np.flatnonzero(~keep).astype(np.int64)
            bits.remove_ids(_faiss().IDSelectorBatch(gone))  # compacts, keeping the order
        self.reset(list(self.ids[keep]), self.matrix[keep])
        self._bits = bits

    def shortlist(self, query: Vectors) -> npt.NDArray[np.int64] | None:
        """The positions `search` scores for `query` besides its `also` ids: None (every row)
        up to params.VECTOR_EXACT_MAX rows, else the sign-bit shortlist. Valid for `search`
        until the index next changes (a caller computes it while waiting on other work)."""
        if self._n <= params.VECTOR_EXACT_MAX:
            return None
        return self._shortlist(np.asarray(query, dtype=np.float32).reshape(-1))

    def search(
        self,
        query: Vectors,
        k: int,
        also: list[int] | None = None,
        shortlist: npt.NDArray[np.int64] | None = None,
    ) -> list[tuple[int, float]]:
        """The k ids most similar to `query` (one row), best first. Above
        params.VECTOR_EXACT_MAX rows the candidates are the sign-bit shortlist (`shortlist`'s,
        when the caller has it already) and the ids in `also` (any not in the index are
        skipped)."""
        n = self._n
        if n == 0 or k <= 0:
            return []
        _one_blas_thread()
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        ids = self.ids
        if n <= params.VECTOR_EXACT_MAX:
            rows = np.arange(n)
        else:
            rows = self._shortlist(q) if shortlist is None else shortlist
            if also:
                wanted = np.asarray(also, dtype=np.int64)
                at = np.minimum(np.searchsorted(ids, wanted), n - 1)
                at = at[ids[at] == wanted]
                # Those not on the shortlist already (sorted, so a binary search each); cheaper
                # than np.union1d, which sorts and deduplicates the whole concatenation.
                near = rows[np.minimum(np.searchsorted(rows, at), len(rows) - 1)]
                rows = np.sort(np.concatenate((rows, np.unique(at[near != at]))))
        scores = self._rows[rows] @ q if len(rows) < n else self.matrix @ q
        k = min(k, len(rows))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(ids[rows[i]]), float(scores[i])) for i in top]

    def _shortlist(self, query: Vectors) -> npt.NDArray[np.int64]:
        """Positions of the params.VECTOR_SHORTLIST rows nearest to `query` by sign bits (the
        sign-bit index is built on first use, then kept in step by add and remove)."""
        if self._bits is None:
            bits = _faiss().IndexBinaryFlat(params.EMBED_DIM)
            # faiss's default top-k selection keeps a heap, slow for a shortlist this long
            # (1.2 ms of a 100k search); its counting selection (Hamming distances are 0..256)
            # picks the same rows in under half the time (bench/retrieval.py, index p95).
            bits.use_heap = False
            bits.add(sign_bits(self.matrix))
            self._bits = bits
        _, found = self._bits.search(sign_bits(query), min(params.VECTOR_SHORTLIST, self._n))
        return np.sort(found[0][found[0] >= 0]).astype(np.int64)
