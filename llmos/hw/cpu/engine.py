"""The engine: one llama.cpp context time-shared by many sequences, stepped in batches.

This is the embedded CPU's execution unit, written on llama.cpp's low-level API (the high-level
`Llama` object decodes one sequence at a time and is not a multiplexer). One `Engine` owns one
model and one context with `n_seq_max` sequence slots over a unified KV cache. A `Sequence` is
one process's registers: the tokens whose KV is resident in its slot, the tokens still to feed,
and its own `Sampler` (`llmos.hw.cpu.sampler`: greedy in place, or a llama.cpp chain with a
grammar when its output is constrained).

One engine step (`Engine.step`) is one `llama_decode` over a batch holding one token for every
decoding sequence plus bounded prefill chunks for sequences still reading their prompt, so a
long prompt never stalls the others. Each sequence whose chunk ends its pending tokens gets its
sampled token back. A greedy, unconstrained sequence may also carry a draft (prompt lookup,
`llmos.hw.cpu.lookup`): its next token and the draft are fed together, and the longest draft
prefix the model confirms comes back too, with the token after it, so one step can yield
several tokens; the KV of the rejected draft tokens is removed in the same step.

Invariants:
- `seq.n_past == len(seq.tokens)` tokens of `seq` are in KV at positions 0..n_past-1 of its slot.
- `seq.pending` is never empty while the sequence runs: it holds the prompt remainder or the
  last sampled token (a sampled token is fed on the next step; saved state holds no logits).
- A sequence is resident (has a slot) or parked (its KV saved as bytes, or in a file, or not
  saved at all, in which case it re-prefills on resume). Saving frees the slot's KV.
- Only the thread that owns the engine calls it; `llama_decode` releases the GIL.
- Greedy output is a function of a sequence's tokens and of the order of its cells in the
  unified KV cache, not of their offset nor of how the tokens were batched (prefill chunk,
  one decode step each, a restore). Cells leave position order when a hole opens below a
  live sequence (another's cells freed: an evicted kept prefix, a finished or parked
  sequence): llama.cpp's allocator puts the sequence's next tokens there, attention then sums
  its cells in another order, and the last bits change (a near tie can flip a greedy token).
  Comparisons of greedy output (a continued or a restored reply with an uninterrupted one)
  hold exactly from the same layout, e.g. an empty prefix cache (`forget_prefixes`).

What this module does not do: pick a sequence's tokens from the logits (its sampler does),
choose which sequences run (the scheduler does), chat templates or stop strings (see
`llmos.hw.cpu.llama`), or decide when to swap to disk (the kernel does).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp as ll

from llmos import params
from llmos.errors import ContextOverflowError, LlmosError, ModelError
from llmos.hw.cpu.lookup import Lookup, StepCost
from llmos.hw.cpu.sampler import Sampler

GGUF_MAGIC = b"GGUF"

_backend_lock = threading.Lock()
_backend_ready = False


@ll.llama_log_callback
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's loader chatter is not the user's business; errors surface as codes."""


def init_backend() -> None:
    """Initialise llama.cpp once per process (and silence its loader unless asked)."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            if not os.environ.get("LLMOS_LLAMA_VERBOSE"):
                ll.llama_log_set(_quiet_log, ctypes.c_void_p())
            ll.llama_backend_init()
            _backend_ready = True


def extra_buffers_safe() -> bool:
    """Whether llama.cpp may use its extra CPU buffer types (repacked and AMX kernels).

    llama.cpp's AMX matmul crashes (SIGSEGV) on the Intel CPUs with AMX we run on, for every
    quantization we tried, so on a CPU that reports AMX the extra buffers are off (the plain
    kernels are used). `LLMOS_EXTRA_BUFTS=0|1` overrides the detection.
    """
    env = os.environ.get("LLMOS_EXTRA_BUFTS")
    if env in ("0", "1"):
        return env == "1"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "amx_tile" not in line.split()
    except OSError:
        pass
    return True


def check_gguf(path: Path) -> None:
    """Raise ModelError unless `path` is a readable GGUF file."""
    if not path.exists():
        raise ModelError(f"{path}: model file does not exist")
    if not path.is_file():
        raise ModelError(f"{path}: model path is not a file")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path}: not a GGUF model file (bad magic {magic!r})")


class EngineFull(LlmosError):
    """The KV cache has no room for this batch (llama_decode returned 1)."""


_seq_ids = itertools.count(1)


@dataclass(eq=False)
class Sequence:
    """One process's decoding state. Created by `Engine.new_sequence`."""

    pending: list[int]
    sampler: Sampler
    id: int = field(default_factory=lambda: next(_seq_ids))
    tokens: list[int] = field(default_factory=list)  # in KV (when resident) or in saved state
    slot: int | None = None
    saved: bytes | None = None  # KV bytes of `tokens` while parked in RAM
    saved_path: Path | None = None  # KV file of `tokens` while parked on disk
    saved_crc: int = 0  # CRC-32 of the file's bytes, checked before it is loaded
    n_prompt: int = 0
    prompt: list[int] = field(default_factory=list)
    restore_failures: int = 0  # times a saved state could not be restored
    lookup: Lookup | None = None  # draft source (greedy, unconstrained sequences only)
    draft_limit: int = 0  # the most draft tokens worth verifying now (set by the caller)
    # Pending tokens at positions from here on are fed one a step, as they were when first
    # sampled (a reply moved here): llama.cpp's numbers depend on the batch's shape, so a
    # greedy reply goes on exactly as it would have. None: prefill in chunks.
    replay_from: int | None = None

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def resident(self) -> bool:
        return self.slot is not None

    @property
    def prefilling(self) -> bool:
        return len(self.pending) > 1


class Engine:
    """One model, one context, `n_seq_max` slots. See the module note."""

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = params.EMBEDDED_N_CTX,
        n_batch: int = params.EMBEDDED_N_BATCH,
        n_seq_max: int = params.EMBEDDED_N_SEQ_MAX,
        n_threads: int = params.EMBEDDED_N_THREADS,
    ) -> None:
        check_gguf(model_path)
        init_backend()
        self.model_path = model_path
        mparams = ll.llama_model_default_params()
        mparams.use_extra_bufts = extra_buffers_safe()
        self.model = ll.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            raise ModelError(f"{model_path}: llama.cpp could not load this GGUF model")
        threads = n_threads or os.cpu_count() or 1
        cparams = ll.llama_context_default_params()
        n_ctx_train = ll.llama_model_n_ctx_train(self.model)
        cparams.n_ctx = min(n_ctx, n_ctx_train) if n_ctx_train > 0 else n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_seq_max
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = True
        cparams.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            ll.llama_model_free(self.model)
            raise ModelError(f"{model_path}: llama.cpp could not create a context")
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.mem = ll.llama_get_memory(self.ctx)
        self.n_ctx = int(ll.llama_n_ctx(self.ctx))
        self.n_batch = n_batch
        self.n_seq_max = n_seq_max
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
        self._batch = ll.llama_batch_init(n_batch, 0, 1)
        self._free_slots = list(range(n_seq_max - 1, -1, -1))
        self.cost = StepCost()  # what steps of n tokens take: the drafts' economics
        self._piece_buf = ctypes.create_string_buffer(256)
        self._eog: list[int] | None = None
        # Per token, as first asked (the engine thread's per-token work makes no C call).
        self._pieces: dict[int, bytes] = {}
        self._is_eog: dict[int, bool] = {}
        self.closed = False

    # --- vocabulary ---------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = False, special: bool = True) -> list[int]:
        data = text.encode("utf-8", errors="replace")
        cap = len(data) + 16
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, special)
        if n < 0:
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, special)
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        if not special:
            got = self._pieces.get(token)
            if got is None:
                got = self._pieces[token] = self._piece(token, special=False)
            return got
        return self._piece(token, special=True)

    def _piece(self, token: int, *, special: bool) -> bytes:
        n = ll.llama_token_to_piece(self.vocab, token, self._piece_buf, 256, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
            return buf.raw[:n]
        return self._piece_buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        got = self._is_eog.get(token)
        if got is None:
            got = self._is_eog[token] = bool(ll.llama_vocab_is_eog(self.vocab, token))
        return got

    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token of the vocabulary (computed once)."""
        if self._eog is None:
            self._eog = [t for t in range(self.n_vocab) if ll.llama_vocab_is_eog(self.vocab, t)]
        return self._eog

    def meta(self, key: str) -> str | None:
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = ll.llama_model_meta_val_str(self.model, key.encode(), buf, size)
        if n < 0:
            return None
        if n >= size:
            buf = ctypes.create_string_buffer(n + 1)
            n = ll.llama_model_meta_val_str(self.model, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    # --- sequences ----------------------------------------------------------------------------
    def new_sequence(
        self,
        prompt: list[int],
        *,
        temperature: float = params.DEFAULT_TEMPERATURE,
        top_k: int = params.DEFAULT_TOP_K,
        top_p: float = params.DEFAULT_TOP_P,
        seed: int = params.EMBEDDED_SEED,
        grammar: str | None = None,
        repeat_penalty: float = params.DEFAULT_REPEAT_PENALTY,
        ignore_eos: bool = False,
        lazy_triggers: list[str] | None = None,
        speculate: bool = False,
    ) -> Sequence:
        """A parked sequence that will prefill `prompt` once it gets a slot. `speculate`:
        draft by prompt lookup (only for a greedy reply without a grammar)."""
        if not prompt:
            raise ContextOverflowError("empty prompt: nothing to decode")
        if len(prompt) >= self.n_ctx:
            raise ContextOverflowError(
                f"prompt of {len(prompt)} tokens does not fit the {self.n_ctx}-token context"
            )
        sampler = Sampler(
            self.vocab,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            grammar=grammar,
            repeat_penalty=repeat_penalty,
            banned=self.eog_tokens() if ignore_eos else None,
            n_vocab=self.n_vocab,
            lazy_triggers=lazy_triggers,
        )
        lookup = None
        if speculate and temperature <= 0 and grammar is None:
            lookup = Lookup(prompt)
        return Sequence(
            pending=list(prompt),
            sampler=sampler,
            n_prompt=len(prompt),
            prompt=list(prompt),
            lookup=lookup,
        )

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    def admit(self, seq: Sequence, share_from: Sequence | None = None) -> None:
        """Give `seq` a slot and bring its KV back (restore saved state, share a prefix, or
        leave it to prefill). Raises EngineFull if no slot is free."""
        if seq.slot is not None:
            return
        if not self._free_slots:
            raise EngineFull("no free sequence slot")
        seq.slot = self._free_slots.pop()
        ll.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
        if seq.saved is not None or seq.saved_path is not None:
            self._restore(seq)
        elif share_from is not None and share_from.slot is not None and not seq.tokens:
            self._share_prefix(seq, share_from)

    def _restore(self, seq: Sequence) -> None:
        assert seq.slot is not None
        data = seq.saved
        if data is None and seq.saved_path is not None:
            try:
                data = seq.saved_path.read_bytes()
            except OSError:
                data = None
            if data is not None and zlib.crc32(data) != seq.saved_crc:
                data = None  # a swap file damaged on disk is never loaded
        ok = False
        if data:
            buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
            ok = ll.llama_state_seq_set_data(self.ctx, buf, len(data), seq.slot) > 0
            if ok and int(ll.llama_memory_seq_pos_max(self.mem, seq.slot)) + 1 != seq.n_past:
                ok = False
        self.drop_saved(seq)
        if not ok:
            # Fallback: recompute the KV from the tokens (correct, just slower).
            ll.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
            seq.pending = seq.tokens + seq.pending
            seq.tokens = []
            seq.restore_failures += 1

    def _share_prefix(self, seq: Sequence, src: Sequence) -> None:
        n = 0
        limit = min(len(src.tokens), len(seq.pending) - 1)  # keep >= 1 token to feed
        while n < limit and src.tokens[n] == seq.pending[n]:
            n += 1
        if n == 0:
            return
        assert seq.slot is not None and src.slot is not None
        ll.llama_memory_seq_cp(self.mem, src.slot, seq.slot, 0, n)
        seq.tokens = seq.pending[:n]
        seq.pending = seq.pending[n:]

    def save(self, seq: Sequence, to_path: Path | None = None) -> int:
        """Save `seq`'s KV (to RAM, or to `to_path`) and free its slot. Returns bytes saved."""
        if seq.slot is None:
            return 0
        size = 0
        if seq.tokens:
            data = self.snapshot(seq)
            got = len(data)
            if to_path is not None:
                tmp = to_path.with_suffix(".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, to_path)
                seq.saved_path = to_path
                seq.saved_crc = zlib.crc32(data)
            else:
                seq.saved = data
            size = got
        self.release(seq)
        return size

    def snapshot(self, seq: Sequence) -> bytes:
        """A copy of a resident sequence's KV (of its `tokens`); the slot keeps it."""
        assert seq.slot is not None
        size = int(ll.llama_state_seq_get_size(self.ctx, seq.slot))
        buf = (ctypes.c_uint8 * size)()
        got = int(ll.llama_state_seq_get_data(self.ctx, buf, size, seq.slot))
        return ctypes.string_at(buf, got)

    def resume(self, seq: Sequence, tokens: list[int], kv: bytes, n_kv: int) -> None:
        """Make a new sequence, built on the first `seq.n_prompt` of `tokens`, continue a
        reply begun elsewhere: its sampler replays the sampled tokens, the KV of `tokens[:n_kv]`
        is restored when it is admitted (re-prefilled if that fails), the rest is fed (the
        sampled tokens one a step, see `Sequence.replay_from`)."""
        assert not seq.tokens and seq.slot is None and 0 <= n_kv < len(tokens)
        generated = tokens[seq.n_prompt :]
        seq.sampler.accept(generated)
        if seq.lookup is not None:
            seq.lookup.extend(generated)
        seq.tokens = list(tokens[:n_kv]) if kv else []
        seq.pending = list(tokens[len(seq.tokens) :])
        seq.saved = kv or None
        seq.replay_from = seq.n_prompt

    def release(self, seq: Sequence) -> None:
        """Free the slot of `seq` without saving (its KV is dropped)."""
        if seq.slot is None:
            return
        ll.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
        self._free_slots.append(seq.slot)
        seq.slot = None

    def drop_saved(self, seq: Sequence) -> None:
        seq.saved = None
        if seq.saved_path is not None:
            seq.saved_path.unlink(missing_ok=True)
            seq.saved_path = None

    def truncate(self, seq: Sequence, n: int) -> None:
        """Keep only the first `n` tokens of a resident sequence's KV (it will not decode
        again: used to keep a finished prompt's KV as a shareable prefix)."""
        n = min(n, seq.n_past)
        if seq.slot is not None:
            ll.llama_memory_seq_rm(self.mem, seq.slot, n, -1)
        del seq.tokens[n:]
        seq.pending = []
        seq.sampler.free()

    def finish(self, seq: Sequence) -> None:
        """The sequence is done: free its slot, saved state and sampler."""
        self.release(seq)
        self.drop_saved(seq)
        seq.sampler.free()

    # --- one step -------------------------------------------------------------------------------
    def step(
        self,
        seqs: list[Sequence],
        prefill_chunk: int = params.PREFILL_CHUNK,
        *,
        before_decode: Callable[[], None] | None = None,
    ) -> dict[Sequence, list[int]]:
        """Decode one batch for the resident `seqs`; return the tokens sampled for each sequence
        whose pending tokens were all fed in this step (one, or more when a draft held).
        `before_decode` is called once the batch is built, right before llama_decode (not
        at all when there is nothing to decode)."""
        batch = self._batch
        n = 0
        plan: list[tuple[Sequence, int, int, list[int]]] = []  # seq, fed, logits index, draft
        decoding = [s for s in seqs if not s.prefilling]
        prefilling = [s for s in seqs if s.prefilling]
        room = self.n_batch
        if not decoding:  # nobody waits on this step: prefill in the largest chunks
            prefill_chunk = self.n_batch
        drafted = 0
        for seq in decoding + prefilling:
            if seq.slot is None or not seq.pending or room <= 0:
                continue
            take = 1 if not seq.prefilling else min(len(seq.pending), prefill_chunk, room)
            if seq.replay_from is not None and take > 1:
                ahead = seq.replay_from - seq.n_past
                take = 1 if ahead <= 0 else min(take, ahead)
            if seq.n_past + take > self.n_ctx:
                raise ContextOverflowError(
                    f"sequence would exceed the {self.n_ctx}-token context window"
                )
            draft: list[int] = []
            if take == 1 and seq.lookup is not None:
                limit = min(seq.draft_limit, room - 1, self.n_ctx - seq.n_past - 1)
                draft = seq.lookup.draft(limit, self.cost, len(decoding) + drafted)
                drafted += len(draft)
            last = take == len(seq.pending)
            pos0 = seq.n_past
            for j, token in enumerate(seq.pending[:take] + draft):
                batch.token[n] = token
                batch.pos[n] = pos0 + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq.slot
                batch.logits[n] = last and j >= take - 1
                n += 1
            plan.append((seq, take, n - 1 - len(draft) if last else -1, draft))
            room -= take + len(draft)
        if n == 0:
            return {}
        batch.n_tokens = n
        if before_decode is not None:
            before_decode()
        started = time.perf_counter()
        rc = ll.llama_decode(self.ctx, batch)
        self.cost.observe(n, time.perf_counter() - started)
        if rc == 1:
            raise EngineFull("KV cache is full")
        if rc != 0:
            raise LlmosError(f"llama_decode failed with code {rc}")
        out: dict[Sequence, list[int]] = {}
        for seq, take, idx, draft in plan:
            seq.tokens.extend(seq.pending[:take])
            del seq.pending[:take]
            if idx < 0:
                continue
            got = [seq.sampler.sample(self.ctx, idx)]
            for j, proposed in enumerate(draft):
                if got[-1] != proposed:
                    break
                got.append(seq.sampler.sample(self.ctx, idx + j + 1))
            if draft:
                kept = len(got) - 1  # draft tokens the model confirmed: their KV stays
                seq.tokens.extend(draft[:kept])
                ll.llama_memory_seq_rm(self.mem, seq.slot, seq.n_past, -1)
                assert seq.lookup is not None
                seq.lookup.feedback(len(draft), kept)
            if seq.lookup is not None:
                seq.lookup.extend(got)
            seq.pending.append(got[-1])
            out[seq] = got
        return out

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        ll.llama_batch_free(self._batch)
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)
