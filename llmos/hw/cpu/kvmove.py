"""Moving a reply between embedded engines of one model: whose KV it is, whether a state may
be loaded here, and what a sequence hands over.

A reply leaves one `EmbeddedCPU` as a `KVState` (`llmos.hw.cpu.base`): its tokens (the
prompt's, then every sampled one) and the KV of a prefix of them, tagged with the identity of
the model that computed it. Another engine loads it only when it is safe to go on from it:

- the same model: `model_identity` is the SHA-256 of the GGUF file (computed once per file
  version), so two copies of one file agree, and a requantized or other model never does;
- the same conversation: the request's prompt tokens are exactly the state's first `n_prompt`;
- the same reply: the text of its sampled tokens begins with what the caller has received
  (`GenRequest.prefix`); the rest of that text is still to come (`unsent_text`);
- room: its tokens fit the context, and its KV covers fewer tokens than it has (one at least
  is still to feed, since a saved state holds no logits).

Anything else is refused (`resumable` returns None) and the reply is re-prefilled from its
text, so a foreign state is never continued. A state that passes but whose KV fails to
restore is recomputed from its tokens by the engine (`Engine._restore`).

What this module does not do: decide when to move (the pool does), or restore the KV (the
engine does, on admission).
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from pathlib import Path

from llmos import params
from llmos.hw.cpu.base import GenRequest, KVState
from llmos.hw.cpu.engine import Engine, Sequence


@functools.cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def model_identity(path: Path) -> str:
    """The identity of a GGUF's weights: the SHA-256 of the file."""
    st = path.stat()
    return "sha256:" + _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _text(engine: Engine, tokens: tuple[int, ...] | list[int]) -> str:
    return b"".join(engine.piece(t) for t in tokens).decode("utf-8", errors="replace")


def resumable(request: GenRequest, prompt: list[int], model: str, engine: Engine) -> KVState | None:
    """`request.resume` if `engine`, running `model`, may go on from it (see the module
    note); None otherwise."""
    state = request.resume
    if state is None or request.tools or request.json_schema:
        return None
    n = state.n_prompt
    ok = (
        state.model == model
        and n == len(prompt)
        and list(state.tokens[:n]) == prompt
        and 0 <= state.n_kv < len(state.tokens) < engine.n_ctx
        and (state.n_kv == 0) == (not state.kv)
    )
    if ok and not _text(engine, state.tokens[n:]).startswith(request.prefix):
        ok = False
    return state if ok else None


def unsent_text(engine: Engine, state: KVState, prefix: str) -> str:
    """The text of a moved reply's sampled tokens that the caller has not received."""
    return _text(engine, state.tokens[state.n_prompt :])[len(prefix) :]


def hand_over(engine: Engine, seq: Sequence) -> tuple[list[int], bytes, int]:
    """What a live sequence hands over: its tokens, and the KV of the first `n_kv` of them
    (resident: copied; parked: its saved bytes, a swap file only if its CRC holds)."""
    tokens = seq.tokens + seq.pending
    kv = b""
    if seq.resident and seq.tokens:
        kv = engine.snapshot(seq)
    elif seq.saved is not None:
        kv = seq.saved
    elif seq.saved_path is not None:
        try:
            data = seq.saved_path.read_bytes()
        except OSError:
            data = b""
        kv = data if zlib.crc32(data) == seq.saved_crc else b""
    return tokens, kv, seq.n_past if kv else 0


def checkpoint_due(every: int, since: int, n_past: int) -> bool:
    """Whether a reply that generated `since` tokens since its last checkpoint, with `n_past`
    tokens in KV, is due another: every `every` tokens, or a POOL_KV_CHECKPOINT_SPREAD-th of
    its KV if that is more (a copy costs in proportion to the KV)."""
    return since >= max(every, n_past // params.POOL_KV_CHECKPOINT_SPREAD)
