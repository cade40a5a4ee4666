"""Prompt lookup: draft tokens for speculative decoding from n-grams a sequence already holds.

Programs that copy from their input (extract, summarize, rewrite, edit) emit long runs of
tokens that already occur in their prompt or their own output. `Lookup` keeps an index from
each n-gram (params.SPEC_NGRAM_MIN..SPEC_NGRAM_MAX tokens) of a sequence's history to where it
last ended; when the history's tail matches an earlier n-gram (the longest first), the tokens
that followed it there are the draft. The engine verifies a draft in the same batched step as
everyone's next token and keeps the longest prefix the model itself would have chosen, so the
output is the model's own (no second model; greedy output unchanged).

Verifying a draft is not free: on a CPU each extra token in a batch costs most of what a
token costs alone (a small model is compute-bound), so a rejected draft is time lost. The
draft length therefore adapts per sequence: it starts short, doubles while drafts are accepted
whole, shrinks to what was accepted after a partial one, and after a draft rejected at its
first token the sequence drafts nothing for a while (a back-off that doubles with each such
failure, up to params.SPEC_BACKOFF_MAX steps), so a program that copies nothing pays almost
nothing.

It is opt-in (`llmos.speculative: true` in a program, or LLMOS_SPECULATIVE=1). Accepted tokens
are the model's own argmax, and a position's logits are bit-identical whether it is decoded
alone or in a batch: a sequence alone in the KV cache gives exactly the tokens it gives without
drafting. With other sequences in the cache it may not, and neither does anything else: freed
cells (a finished reply's, a rejected draft's) are reused by later tokens, where llama.cpp puts
a token depends on the batch's size, and attention sums a sequence's cells in cell order, so
the same prompt's greedy reply can change in its last bits with what ran before it, drafting
or not (a reply measured alone and after another reply differed, with drafting off).

What it gains is bounded by the hardware. On a 2-core AVX2 machine with the Q8_0 weights a
decode of one token takes ~14 ms and a verify step ~6 ms plus ~10 ms per token it checks (the
output layer, a fifth of the model, runs for every checked position): even a 16-token draft
accepted whole makes 17 tokens ~1.35x faster, and a program that copies most of its reply gains
little (bench/speculative.py). Machines where one decode is mostly fixed cost (wide SIMD, GPUs)
gain more.

Invariants: the tail n-gram is indexed only once a later token exists, so a match always has a
token after it; `extend` must see every token of the sequence, prompt first, in order.

What this does not do: verify drafts (`llmos.hw.cpu.engine.Engine.step` does), or draft for
sampled (non-greedy) or grammar-constrained sequences (the engine gives those no lookup).
"""

from __future__ import annotations

from llmos import params


class Lookup:
    """The n-gram index of one sequence's tokens (see the module note)."""

    def __init__(
        self,
        tokens: list[int],
        *,
        ngram_min: int = params.SPEC_NGRAM_MIN,
        ngram_max: int = params.SPEC_NGRAM_MAX,
        draft_max: int = params.SPEC_DRAFT_MAX,
    ) -> None:
        self.history: list[int] = []
        self.sizes = range(ngram_max, ngram_min - 1, -1)  # longest first
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self.draft_max = draft_max
        self.k = min(params.SPEC_DRAFT_START, draft_max)  # the current draft length
        self.wait = 0  # steps left to draft nothing (after a draft rejected at once)
        self.backoff = params.SPEC_BACKOFF_MIN
        self.drafted = self.accepted = 0  # totals, for statistics
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        history = self.history
        for token in tokens:
            end = len(history) - 1  # the old tail gets a successor: index the n-grams ending there
            if end >= 0:
                for n in self.sizes:
                    if end + 1 >= n:
                        self._index[n][tuple(history[end + 1 - n : end + 1])] = end
            history.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to min(k, limit) tokens that followed the latest earlier occurrence of the
        history's tail; [] when nothing matches."""
        if self.wait > 0:
            self.wait -= 1
            return []
        limit = min(limit, self.k)
        if limit <= 0:
            return []
        history = self.history
        for n in self.sizes:
            if len(history) < n:
                continue
            end = self._index[n].get(tuple(history[-n:]))
            if end is not None:
                return history[end + 1 : end + 1 + limit]
        return []

    def feedback(self, drafted: int, accepted: int) -> None:
        """Adapt the draft length to how much of the last draft the model confirmed."""
        self.drafted += drafted
        self.accepted += accepted
        if accepted == drafted:
            self.k = min(self.draft_max, self.k * 2)
            self.backoff = params.SPEC_BACKOFF_MIN
        elif accepted == 0:
            self.k = min(params.SPEC_DRAFT_START, self.draft_max)
            self.wait = self.backoff
            self.backoff = min(params.SPEC_BACKOFF_MAX, self.backoff * 2)
        else:
            self.k = max(1, accepted + 1)
            self.backoff = params.SPEC_BACKOFF_MIN
