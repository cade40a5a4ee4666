"""Prompt lookup: draft tokens for speculative decoding from n-grams a sequence already holds.

Programs that copy from their input (extract, summarize, rewrite, edit) emit long runs of
tokens that already occur in their prompt or their own output. `Lookup` keeps an index from
each n-gram (params.SPEC_NGRAM_MIN..SPEC_NGRAM_MAX tokens) of a sequence's history to where it
last ended; when the history's tail matches an earlier n-gram (the longest first), the tokens
that followed it there are the draft. The engine verifies a draft in the same batched step as
everyone's next token and keeps the longest prefix the model itself would have chosen, so the
output is the model's own (no second model; greedy output unchanged).

Verifying a draft is not free: on a CPU each extra token in a batch costs much of what a token
costs alone (a small model is compute-bound), so a rejected draft is time lost. How long a
draft is therefore follows the economics of each step. `StepCost` keeps what the engine's
steps of each size took (a fitted line for sizes not yet seen), and each sequence keeps an
estimate of how often its drafted tokens hold (decayed counts over a prior, see `feedback`).
A draft of k tokens is expected to yield
p + p^2 + ... + p^k more tokens for a step that many tokens longer; the length chosen is the
one with the most tokens per second for the whole batch, and there is no draft unless that
beats not drafting by params.SPEC_MIN_GAIN. Where a batch token is nearly free (a GPU) drafts
run long; on a 2-core CPU they stay short unless the sequence is copying. A sequence not
worth drafting for (its drafts failed) waits, then probes with one token (the wait doubles
after each failed probe, up to params.SPEC_BACKOFF_MAX steps), so a program that copies
nothing pays almost nothing and one that starts copying later is found again.

It is opt-in (`llmos.speculative: true` in a program, or LLMOS_SPECULATIVE=1). Accepted tokens
are the model's own argmax, and a position's logits are bit-identical whether it is decoded
alone or in a batch: a sequence alone in the KV cache gives exactly the tokens it gives without
drafting. With other sequences in the cache it may not, and neither does anything else: freed
cells (a finished reply's, a rejected draft's) are reused by later tokens, where llama.cpp puts
a token depends on the batch's size, and attention sums a sequence's cells in cell order, so
the same prompt's greedy reply can change in its last bits with what ran before it, drafting
or not (a reply measured alone and after another reply differed, with drafting off).

What it gains is bounded by the hardware. On the 2-core AVX2 test machine (quiet), a step of
one token takes ~13 ms with the shipped Q4_1 weights, of two ~24 ms, of four ~43 ms, of eight
~79 ms and of sixteen ~154 ms (~9.6 ms a token: the model is compute-bound there, and the
output layer, a fifth of it, runs for every checked position). So a reply that copies whole
16-token drafts gets tokens ~1.36x faster at most (Q8_0 weights: ~1.6x), and one whose drafts
break sooner much less. bench/speculative.py measures it.

Invariants: the tail n-gram is indexed only once a later token exists, so a match always has a
token after it; `extend` must see every token of the sequence, prompt first, in order; only
ratios of step costs are used, so `StepCost` needs no unit beyond being consistent.

What this does not do: verify drafts (`llmos.hw.cpu.engine.Engine.step` does), or draft for
sampled (non-greedy) or grammar-constrained sequences (the engine gives those no lookup).
"""

from __future__ import annotations

from llmos import params


class StepCost:
    """What a decode step of n tokens costs: for each size seen, a moving average of its time
    (small batches need not cost in proportion: on a CPU, two tokens can cost two steps), and
    for sizes not seen, a least-squares line fixed + per_token * n over recent steps (each
    older step weighs params.SPEC_COST_DECAY less)."""

    def __init__(self, decay: float = params.SPEC_COST_DECAY) -> None:
        self.decay = decay
        self.seen: dict[int, float] = {}  # step size -> its moving-average time
        self._w = self._n = self._nn = self._t = self._nt = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        if not 1 <= tokens <= params.SPEC_COST_MAX_TOKENS or seconds <= 0:
            return
        old = self.seen.get(tokens)
        self.seen[tokens] = (
            seconds if old is None else old + params.SPEC_COST_ALPHA * (seconds - old)
        )
        d = self.decay
        self._w = self._w * d + 1.0
        self._n = self._n * d + tokens
        self._nn = self._nn * d + tokens * tokens
        self._t = self._t * d + seconds
        self._nt = self._nt * d + tokens * seconds

    def cost(self, tokens: int) -> float:
        """A step of `tokens` tokens: measured, fitted, or (nothing measured yet) in units
        of a one-token step with params.SPEC_COST_PRIOR_PER_TOKEN for each more token."""
        if tokens in self.seen:
            return self.seen[tokens]
        prior = 1.0 + params.SPEC_COST_PRIOR_PER_TOKEN * (tokens - 1)
        w = self._w
        if w <= 0:
            return prior
        mean_n, mean_t = self._n / w, self._t / w
        var = self._nn / w - mean_n * mean_n
        if var < 0.25:  # one step size only: no slope to see, the prior's shape on its time
            return mean_t / (1.0 + params.SPEC_COST_PRIOR_PER_TOKEN * (mean_n - 1)) * prior
        slope = max(0.0, (self._nt / w - mean_n * mean_t) / var)
        return max(mean_t + slope * (tokens - mean_n), params.SPEC_COST_MIN_SHARE * mean_t)

    def ratio(self, batch: int, extra: int) -> float:
        """How many times a step of `batch` tokens a step of `batch + extra` costs (>= 1)."""
        base = self.cost(batch)
        return max(1.0, self.cost(batch + extra) / base) if base > 0 else 1.0


def expected_gain(p: float, k: int, ratio: float, batch: int) -> float:
    """How many times the batch's tokens/s a k-token draft is expected to give, where each
    drafted token holds with chance p (given the ones before it held), the batch already
    holds `batch` tokens, and the k more make the step `ratio` times as long."""
    p = min(max(p, 0.0), 0.999)
    extra = p * (1 - p**k) / (1 - p)  # p + p^2 + ... + p^k
    return (1 + extra / batch) / ratio


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
        self.hits = self.misses = 0.0  # verified drafted tokens that held / failed, decayed
        self.p = params.SPEC_ACCEPT_PRIOR  # the chance a drafted token holds (see feedback)
        self.wait = 0  # steps left before a probe (while drafting does not pay)
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

    def draft(self, limit: int, cost: StepCost | None = None, batch: int = 1) -> list[int]:
        """The draft worth verifying now, at most `limit` tokens: what followed the latest
        earlier occurrence of the history's tail, cut to the length with the best expected
        gain in a step of `batch` other tokens costing as `cost` says (no measurements: the
        prior); [] when nothing matches or no length pays (a 1-token probe once the wait is
        over)."""
        limit = min(limit, self.draft_max)
        if limit <= 0:
            return []
        found = self._match(limit)
        if not found:
            return []
        cost = cost or StepCost()
        best, best_k = 1.0 + params.SPEC_MIN_GAIN, 0
        for k in range(1, len(found) + 1):
            gain = expected_gain(self.p, k, cost.ratio(batch, k), batch)
            if gain > best:
                best, best_k = gain, k
        if best_k:
            return found[:best_k]
        if self.wait > 0:
            self.wait -= 1
            return []
        self.wait = self.backoff  # a probe: if it fails, the next comes later
        self.backoff = min(params.SPEC_BACKOFF_MAX, self.backoff * 2)
        return found[:1]

    def _match(self, limit: int) -> list[int]:
        history = self.history
        for n in self.sizes:
            if len(history) < n:
                continue
            end = self._index[n].get(tuple(history[-n:]))
            if end is not None:
                return history[end + 1 : end + 1 + limit]
        return []

    def feedback(self, drafted: int, accepted: int) -> None:
        """Fold the last draft's outcome into the hit rate: each confirmed token a hit, the
        first rejected one a miss (the tokens after it were never tested). The rate is the
        mean of a Beta posterior: decayed counts of hits and misses (each verified token
        weighs older ones params.SPEC_ACCEPT_DECAY less) over a prior of
        params.SPEC_ACCEPT_STRENGTH tokens at params.SPEC_ACCEPT_PRIOR. A copied span holds
        for tens of tokens and then breaks once, so one miss after a long run of hits barely
        moves it, while misses in a row (the sequence stopped copying) soon do."""
        self.drafted += drafted
        self.accepted += accepted
        d = params.SPEC_ACCEPT_DECAY
        hits, misses = self.hits, self.misses
        for _ in range(accepted):
            hits, misses = hits * d + 1.0, misses * d
        if accepted < drafted:
            hits, misses = hits * d, misses * d + 1.0
        self.hits, self.misses = hits, misses
        strength = params.SPEC_ACCEPT_STRENGTH
        self.p = (hits + params.SPEC_ACCEPT_PRIOR * strength) / (hits + misses + strength)
        if accepted:  # a probe that held: drafting is judged again at the next step
            self.backoff = params.SPEC_BACKOFF_MIN
            self.wait = 0
