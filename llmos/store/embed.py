"""Text embeddings for retrieval, from a small model that ships inside a PyPI wheel.

The model is WordLlama's `l2_supercat` (256 dimensions): a static token-embedding table
distilled from a large LLM's embeddings, with its tokenizer, both inside the `wordllama` wheel.
It runs on numpy alone (no PyTorch, no ONNX runtime, no download): about 25 microseconds per
query and some 40,000 short texts a second on one core, which is what lets `recall` stay far
inside its latency goal at 100k memories (see bench/retrieval.py for recall@5 and latency).

`VectorIndex` is the vector side of hybrid retrieval: an exact flat index (one float32 matrix,
cosine similarity by one matrix-vector product). It was chosen by measurement over sqlite-vec's
brute-force `vec0` table (bench/retrieval.py prints both when sqlite-vec is installed): at 100k
vectors of 256 dimensions a numpy product takes a few milliseconds, and an approximate index
would trade recall for time this size does not need.

Invariants: embeddings are L2-normalised float32 rows of params.EMBED_DIM; the model is loaded
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


class VectorIndex:
    """An exact flat cosine index over (id, vector) rows. Not thread-safe on its own; the
    memory store guards it. Rows live in a buffer that grows by doubling, so adding a few
    rows to a large index does not copy it."""

    def __init__(self) -> None:
        self._ids: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._rows: Vectors = np.zeros((0, params.EMBED_DIM), dtype=np.float32)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> npt.NDArray[np.int64]:
        return self._ids[: self._n]

    @property
    def matrix(self) -> Vectors:
        return self._rows[: self._n]

    def reset(self, ids: list[int], matrix: Vectors) -> None:
        self._ids = np.asarray(ids, dtype=np.int64)
        self._rows = np.ascontiguousarray(matrix, dtype=np.float32)
        self._n = len(self._ids)

    def add(self, ids: list[int], matrix: Vectors) -> None:
        k = len(ids)
        if self._n + k > len(self._ids):
            capacity = max(2 * len(self._ids), self._n + k, 1024)
            grown_ids = np.zeros(capacity, dtype=np.int64)
            grown_rows = np.zeros((capacity, params.EMBED_DIM), dtype=np.float32)
            grown_ids[: self._n] = self.ids
            grown_rows[: self._n] = self.matrix
            self._ids, self._rows = grown_ids, grown_rows
        self._ids[self._n : self._n + k] = ids
        self._rows[self._n : self._n + k] = matrix
        self._n += k

    def remove(self, ids: set[int]) -> None:
        keep = ~np.isin(self.ids, np.fromiter(ids, dtype=np.int64))
        self.reset(list(self.ids[keep]), self.matrix[keep])

    def search(self, query: Vectors, k: int) -> list[tuple[int, float]]:
        """The k ids most similar to `query` (one row), best first."""
        n = self._n
        if n == 0 or k <= 0:
            return []
        scores = self.matrix @ query.reshape(-1)
        k = min(k, n)
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-scores[top], kind="stable")]
        ids = self.ids
        return [(int(ids[i]), float(scores[i])) for i in top]
