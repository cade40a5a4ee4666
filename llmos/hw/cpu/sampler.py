"""The sampler: how one sequence picks its next token from the logits of a decoded batch.

A `Sampler` belongs to one sequence (`llmos.hw.cpu.engine.Sequence`) and lives as long as it:
its grammar state and repeat-penalty window are that sequence's history. Two paths pick the
same tokens: a greedy sampler without a grammar picks in Python over the logits row in place;
every other sampler (a grammar, a temperature, or `chain=True`, which tests use to compare
the two) is a llama.cpp sampler chain owned through `ptr` until `free`.

Invariants:
- The greedy path picks the token llama.cpp's chain would pick from the same logits (ban,
  then the repeat penalty once per distinct token of the window, then the first maximum).
- `sample` accepts the token it returns into the history (window or chain); `accept` feeds
  tokens sampled elsewhere as if this sampler had picked them.
- A sampler is used only by the thread that owns its engine, right after `llama_decode`.

What this module does not do: decode (`llmos.hw.cpu.engine`), build grammars
(`llmos.hw.cpu.grammar`), or decide stop strings and end of reply (`llmos.hw.cpu.llama`).
"""

from __future__ import annotations

import collections
import ctypes

import llama_cpp as ll
import numpy as np

from llmos import params
from llmos.errors import LlmosError


class Sampler:
    """How one sequence picks its tokens: grammar, then end-of-generation ban, repeat penalty,
    then greedy or top-k/top-p/temp/dist.

    A greedy sampler without a grammar picks in Python over the logits row in place (the
    banned tokens, the penalty on the few tokens of its window, then the first maximum): the
    same token llama.cpp's chain picks, without the chain's pass over the whole vocabulary
    per token (its repeat penalty looks every vocabulary entry up in a hash map, most of a
    token's time outside llama_decode on a small model). It needs only the row's first
    maximum when that token is neither banned nor in the window (with a penalty >= 1 both only
    lower logits). Every other sampler is a llama.cpp chain."""

    def __init__(
        self,
        vocab: ll.llama_vocab_p,
        *,
        temperature: float,
        top_k: int,
        top_p: float,
        seed: int,
        grammar: str | None = None,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = params.REPEAT_LAST_N,
        banned: list[int] | None = None,
        n_vocab: int = 0,
        lazy_triggers: list[str] | None = None,
        chain: bool = False,
    ) -> None:
        self.ptr: ll.llama_sampler_p | None = None
        # The greedy path (unless `chain` asks for llama.cpp's chain, to compare them).
        self.greedy = temperature <= 0 and grammar is None and n_vocab > 0 and not chain
        if self.greedy:
            self.row_type = ctypes.c_float * n_vocab  # one logits row, read in place
            self.banned = np.array(sorted(set(banned or ())), dtype=np.intp)
            self.banned_set = frozenset(int(t) for t in self.banned)
            self.penalty = np.float32(repeat_penalty)
            self.window: collections.deque[int] | None = (
                collections.deque(maxlen=repeat_last_n)
                if repeat_penalty != 1.0 and repeat_last_n > 0
                else None
            )
            return
        sparams = ll.llama_sampler_chain_default_params()
        sparams.no_perf = True
        self.ptr = ll.llama_sampler_chain_init(sparams)
        if grammar is not None:
            if lazy_triggers:
                # The grammar applies only from where a trigger pattern's first group matches
                # (a tool call's opening marker); text before it is free, and fast.
                pats = (ctypes.c_char_p * len(lazy_triggers))(*[p.encode() for p in lazy_triggers])
                gptr = ll.llama_sampler_init_grammar_lazy_patterns(
                    vocab,
                    grammar.encode(),
                    b"root",
                    pats,
                    len(lazy_triggers),
                    (ll.llama_token * 0)(),
                    0,
                )
            else:
                gptr = ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not gptr:
                ll.llama_sampler_free(self.ptr)
                raise LlmosError("cannot build a grammar sampler from the output schema")
            ll.llama_sampler_chain_add(self.ptr, gptr)
        if banned:
            # These tokens can never be sampled (end-of-generation, for ignore_eos).
            biases = (ll.llama_logit_bias * len(banned))()
            for i, token in enumerate(banned):
                biases[i].token = ll.llama_token(token)
                biases[i].bias = float("-inf")
            ll.llama_sampler_chain_add(
                self.ptr, ll.llama_sampler_init_logit_bias(n_vocab, len(banned), biases)
            )
        if repeat_penalty != 1.0:
            # The binding declares a leading n_vocab that the C function no longer has; on the
            # x86-64 and arm64 ABIs the ints and floats travel in separate registers, so
            # passing last_n in both int positions is right for either signature.
            ll.llama_sampler_chain_add(
                self.ptr,
                ll.llama_sampler_init_penalties(
                    repeat_last_n, repeat_last_n, repeat_penalty, 0.0, 0.0
                ),
            )
        if temperature <= 0:
            ll.llama_sampler_chain_add(self.ptr, ll.llama_sampler_init_greedy())
        else:
            if top_k > 0:
                ll.llama_sampler_chain_add(self.ptr, ll.llama_sampler_init_top_k(top_k))
            if 0 < top_p < 1:
                ll.llama_sampler_chain_add(self.ptr, ll.llama_sampler_init_top_p(top_p, 1))
            ll.llama_sampler_chain_add(self.ptr, ll.llama_sampler_init_temp(temperature))
            ll.llama_sampler_chain_add(self.ptr, ll.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: ll.llama_context_p, index: int) -> int:
        """Sample from the logits at batch `index` and accept the token into the chain."""
        if not self.greedy:
            # llama_sampler_sample also accepts the token (grammar state advances).
            return int(ll.llama_sampler_sample(self.ptr, ctx, index))
        address = ctypes.addressof(ll.llama_get_logits_ith(ctx, index).contents)
        row = np.frombuffer(memoryview(self.row_type.from_address(address)), dtype=np.float32)
        window = self.window
        token = int(row.argmax())  # the first maximum, as the greedy sampler
        # The ban and a penalty >= 1 only lower logits, so a first maximum that is neither
        # banned nor in the window stays the first maximum: most tokens end here.
        if token in self.banned_set or (window and (token in window or self.penalty < 1)):
            # As llama.cpp's chain: the ban adds -inf; the penalty then multiplies a logit
            # <= 0 by it and divides any other (float32 both), once per distinct token. Done
            # on the row itself, which is put back after: no copy of the whole vocabulary.
            banned = self.banned
            ids = np.fromiter(set(window), dtype=np.intp) if window else banned[:0]
            kept_banned, kept_ids = row[banned], row[ids]
            row[banned] = -np.inf
            got = row[ids]
            row[ids] = np.where(got <= 0, got * self.penalty, got / self.penalty)
            token = int(row.argmax())
            row[ids] = kept_ids
            row[banned] = kept_banned
        if window is not None:
            window.append(token)
        return token

    def accept(self, tokens: list[int]) -> None:
        """Feed tokens sampled earlier (a continued reply, or one moved here from another
        engine) into the chain's history, as if this chain had sampled them: the repeat
        penalty's window is what it would have been."""
        if self.greedy:
            if self.window is not None:
                self.window.extend(tokens)
            return
        for token in tokens:
            ll.llama_sampler_accept(self.ptr, token)

    def free(self) -> None:
        if self.ptr:
            ll.llama_sampler_free(self.ptr)
        self.ptr = None
