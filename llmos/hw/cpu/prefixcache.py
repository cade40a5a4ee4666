"""The prefix cache: which resident KV a new prompt may share, and finished prompts kept for it.

Processes whose prompts begin alike (one program's system prompt, one document, the earlier
turns of a conversation) should compute that prefix's KV once. `PrefixCache` indexes the prompt
tokens of every resident sequence in a `PrefixIndex` (`llmos.hw.cpu.prefix`); a sequence about
to be admitted asks `best` for the one to copy its common prefix from, and `pending` whether
one is still computing a useful prefix (it then waits rather than compute the same tokens).
When a sequence ends, `retire` keeps its prompt's KV resident as a shareable prefix, so the
next step of the same process (or another run of the same program) finds it.

Invariants:
- Only resident sequences are in the index (a parked one is `remove`d before its slot goes).
- Kept prefixes hold at most `params.PREFIX_CACHE_TOKENS` tokens in all; the oldest go first,
  and any of them may go whenever a live sequence needs its slot or its cells (`evict_oldest`,
  `clear`): they are a cache, never state.
- Only prefixes of at least `params.PREFIX_MIN_SHARE` tokens are kept or waited for.

What this module does not do: copy KV (the engine does, on admission), choose who is resident
(the dispatcher does), or run on any thread but the engine's.
"""

from __future__ import annotations

from llmos import params
from llmos.hw.cpu.engine import Engine, Sequence
from llmos.hw.cpu.prefix import PrefixIndex


class PrefixCache:
    """The prompt prefixes resident in `engine`. See the module note."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._index = PrefixIndex()
        self._kept: list[Sequence] = []  # finished prompts kept resident, oldest first

    def __len__(self) -> int:
        """The number of kept prefixes."""
        return len(self._kept)

    def insert(self, seq: Sequence) -> None:
        """A sequence just admitted: its prompt may be shared from now on."""
        self._index.insert(seq, seq.prompt)

    def remove(self, seq: Sequence) -> None:
        """A sequence leaving its slot: nothing may share from it any more."""
        self._index.remove(seq)

    def best(self, seq: Sequence) -> Sequence | None:
        """The resident sequence sharing the longest token prefix with `seq`'s prompt (None
        for a sequence that has KV of its own)."""
        if seq.tokens:
            return None
        best, n = self._index.longest(seq.pending)
        return best if isinstance(best, Sequence) and best.resident and n > 0 else None

    def pending(self, seq: Sequence) -> bool:
        """Whether a resident sequence shares a useful prefix with `seq` but has not computed
        it yet (then `seq` should wait for it rather than compute it again)."""
        if seq.tokens or seq.saved is not None or seq.saved_path is not None:
            return False
        src, n = self._index.longest(seq.pending)
        n = min(n, len(seq.pending) - 1)
        return (
            isinstance(src, Sequence)
            and src.resident
            and n >= params.PREFIX_MIN_SHARE
            and src.n_past < n
        )

    def retire(self, seq: Sequence) -> None:
        """A sequence that has ended: its prompt's KV is kept resident as a shareable prefix
        if it is worth it and fits (evicting the oldest kept ones), else it is freed."""
        self._index.remove(seq)
        n = min(seq.n_prompt, seq.n_past)
        if not seq.resident or n < params.PREFIX_MIN_SHARE or n > params.PREFIX_CACHE_TOKENS:
            self.engine.finish(seq)
            return
        while self._kept and sum(c.n_past for c in self._kept) + n > params.PREFIX_CACHE_TOKENS:
            self.evict_oldest()
        self.engine.truncate(seq, n)
        self._index.insert(seq, seq.tokens)
        self._kept.append(seq)

    def evict_oldest(self) -> None:
        """Free the slot of the oldest kept prefix, if there is one."""
        if self._kept:
            seq = self._kept.pop(0)
            self._index.remove(seq)
            self.engine.finish(seq)

    def clear(self) -> None:
        """Free every kept prefix."""
        while self._kept:
            self.evict_oldest()
