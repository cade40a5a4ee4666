"""Paging: keep a process's context within its window by moving segments to its swap store.

Before every step of a process, `Pager.fit` checks that the rendered context plus room for
the reply fits the limit (the CPU's window, or the program's smaller `llmos.context`). When it
does not, the pager pages out segments, in the order its policy gives, until the context is
back under params.PAGE_LOW_WATER of the limit (hysteresis: the next few steps need no
page-out, and each page-out edits the prompt once rather than every step):

- `oldest`: the oldest segments first (FIFO);
- `lru`: the least recently referenced first (created, quoted by a reply, recalled);
- `summarize`: the oldest first, but each run of consecutive victims gets a one-line summary
  written by the process's own CPU (at most params.SUMMARY_MAX_CALLS a page-out; the rest
  get the extractive one), which the stub shows in their place.

Policies are pluggable: a policy is a `Policy` subclass (one method, `order`, and optionally
`summarize`), registered by name through the `llmos_register_paging_policies` hook, the way
the built-in three are.

Pinned segments (the program's text, the end of the latest message) never leave; if they
alone do not fit, the process fails with ContextOverflowError. A paged-out segment is written
to the swap store (`MemoryStore.page_out`, one transaction) before it leaves the context, and
leaves a stub: page ids and one-line summaries. `recall` searches the process's pages (and the
owner's long-term memories), `page_in` reads one back. Nothing is deleted: the full history is
in the log, every page stays in the store.

How this meets KV swapping (the other layer): the scheduler parks whole sequences (their KV
saved and restored, `llmos.hw.cpu.llama`); the pager edits what a sequence holds. A page-out
changes the prompt from the first paged-out segment on, so the next step's prompt shares its
prefix, up to that point, with the KV already computed: the embedded CPU keeps the previous
step's prompt KV resident and reuses the longest common token prefix (`llmos.hw.cpu.prefix`), then
re-prefills only the changed suffix. Oldest-first policies cut early and so re-prefill more;
the low-water mark makes that rare. See docs/ARCHITECTURE.md.

Invariants: a failed page-out (the store's disk full, say) changes nothing in the context and
raises MemoryStoreError; a segment is marked paged out only after its page is committed.

What this module does not do: store or search pages (see `llmos.store.memory`), or render
messages (see `llmos.kernel.mm.context`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmos import params
from llmos.errors import ContextOverflowError, LlmosError
from llmos.kernel.mm.context import UNTRUSTED, Context, Counter, Segment, fence, one_line
from llmos.store.memory import MemoryStore

Summarizer = Callable[[str], str]


class Policy:
    """Orders the candidates (resident, unpinned segments): page out the first ones first."""

    name = "policy"

    def order(self, candidates: list[Segment]) -> list[Segment]:
        raise NotImplementedError

    def summarize(self, text: str) -> str | None:
        """A one-line summary of text leaving the context (None: use the extractive one)."""
        return None


class Oldest(Policy):
    name = "oldest"

    def order(self, candidates: list[Segment]) -> list[Segment]:
        return sorted(candidates, key=lambda s: s.id)


class LRU(Policy):
    name = "lru"

    def order(self, candidates: list[Segment]) -> list[Segment]:
        return sorted(candidates, key=lambda s: (s.last_ref, s.id))


class Summarize(Oldest):
    name = "summarize"

    def __init__(self, summarizer: Summarizer | None = None) -> None:
        self.summarizer = summarizer

    def summarize(self, text: str) -> str | None:
        if self.summarizer is None:
            return None
        line = one_line(self.summarizer(text[: params.SUMMARY_INPUT_CHARS]), 160)
        return line or None


@dataclass
class Pager:
    """Fits one process's context to its limit by paging to its swap store."""

    store: Callable[[], MemoryStore]  # opened on first page-out
    owner: str
    process: str  # the process's key in the swap store
    policy: Policy
    reserve: int  # tokens kept free for the reply
    label: str = "context"  # how errors name the process (its program's path)
    pages_out: int = 0
    page_outs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    context: Context | None = None
    # Told what is happening, for people waiting: `on_progress` as a page-out starts (and None
    # when it is done), `on_paged(segments, chars, limit)` once a fit has paged anything out.
    on_progress: Callable[[str | None], None] | None = None
    on_paged: Callable[[int, int, int], None] | None = None

    def attach(self, ctx: Context) -> None:
        ctx.fitter = self.fit
        self.context = ctx

    def touch_pages(self, page_ids: list[int | None]) -> None:
        """Pages a recall or page_in returned count as referenced now (LRU)."""
        ctx = self.context
        if ctx is None:
            return
        wanted = {p for p in page_ids if p is not None}
        for seg in ctx.segments:
            if seg.page in wanted:
                seg.last_ref = ctx.step

    def budget(self, ctx: Context) -> int:
        reserve = min(self.reserve, max(params.MIN_REPLY_TOKENS, ctx.limit // 4))
        return max(1, ctx.limit - reserve)

    def fit(self, ctx: Context) -> None:
        budget = self.budget(ctx)
        # Counting a huge context exactly costs more than it tells: past this size it
        # cannot fit (no tokenizer packs this many characters in a token), so page first.
        small = ctx.resident_chars() <= budget * params.MAX_CHARS_PER_TOKEN
        if small and ctx.measure() <= budget:
            return
        pinned = self._pinned(ctx, budget)
        pinned_tokens = sum(ctx.count(s) for s in pinned)
        if pinned_tokens > budget:
            raise ContextOverflowError(
                f"{self.label}: the program's text and latest message are {pinned_tokens} "
                f"tokens; the context limit leaves {budget} (of {ctx.limit}) after room for "
                "the reply"
            )
        held = {s.id for s in pinned}
        order = self.policy.order([s for s in ctx.segments if s.resident and s.id not in held])
        target = int(budget * params.PAGE_LOW_WATER)
        overhead = params.MESSAGE_OVERHEAD_GUESS
        msgs = {s.msg for s in pinned}
        kept = pinned_tokens + overhead * len(msgs) + params.STUB_TOKENS_GUESS
        keep: set[int] = set()
        for seg in reversed(order):  # the most valuable first
            tokens = ctx.count(seg) + (0 if seg.msg in msgs else overhead)
            if kept + tokens > target:
                break
            kept += tokens
            msgs.add(seg.msg)
            keep.add(seg.id)
        victims = [s for s in order if s.id not in keep]
        before = (self.pages_out, sum(s.chars for s in ctx.paged()))
        if self.on_progress is not None and victims:
            mb = sum(len(s.text) for s in victims) / 1e6
            self.on_progress(f"paging out {len(victims)} segments ({mb:.1f} MB) to the swap store")
        try:
            self._page_out(ctx, victims)
            # Stubs and chat-template overhead were estimated: check exactly, page more if short.
            rest = [s for s in order if s.id in keep]
            while ctx.measure() > budget:
                if not rest:
                    raise ContextOverflowError(
                        f"{self.label}: context is {ctx.used} tokens after paging out all it "
                        f"may; the limit leaves {budget} (of {ctx.limit})"
                    )
                take = max(1, len(rest) // 4)
                self._page_out(ctx, rest[:take])
                rest = rest[take:]
        finally:
            if self.on_progress is not None:
                self.on_progress(None)
        paged = self.pages_out - before[0]
        if paged and self.on_paged is not None:
            chars = sum(s.chars for s in ctx.paged()) - before[1]
            self.on_paged(paged, chars, ctx.limit)

    @staticmethod
    def _pinned(ctx: Context, budget: int) -> list[Segment]:
        """What may not leave: pinned segments, and the whole latest message (what the model
        must answer or has just been given) when it takes at most half the budget."""
        pinned = [s for s in ctx.segments if s.resident and s.pinned]
        if not ctx.segments:
            return pinned
        last = [s for s in ctx.segments if s.resident and s.msg == ctx.segments[-1].msg]
        if sum(len(s.text) for s in last) <= budget * params.MAX_CHARS_PER_TOKEN and (
            sum(ctx.count(s) for s in last) <= budget // 2
        ):
            pinned += [s for s in last if not s.pinned]
        return pinned

    def _page_out(self, ctx: Context, victims: list[Segment]) -> None:
        if not victims:
            return
        summaries = self._summaries(ctx, victims)
        pages = [
            {
                "kind": s.kind,
                "role": s.role,
                "text": s.text,
                "summary": summaries[s.id],
                "tokens": s.tokens,
                "provenance": {**s.provenance, "segment": s.id},
            }
            for s in victims
        ]
        ids = self.store().page_out(self.owner, self.process, pages)  # all or nothing
        for seg, page_id in zip(victims, ids, strict=True):
            seg.page, seg.summary, seg.chars = page_id, summaries[seg.id], len(seg.text)
            seg.text, seg.tokens = "", None
        self.pages_out += len(ids)
        self.page_outs += 1
        self.history.append({"step": ctx.step, "pages": [ids[0], ids[-1]], "count": len(ids)})

    def _summaries(self, ctx: Context, victims: list[Segment]) -> dict[int, str]:
        """Each victim's one-line summary: extractive, or the policy's for a whole run."""
        out = {s.id: one_line(s.text) for s in victims}
        calls = 0
        chosen = {s.id for s in victims}
        run: list[Segment] = []
        for seg in [*ctx.segments, None]:
            if seg is not None and seg.id in chosen and (not run or run[-1].msg == seg.msg):
                run.append(seg)
                continue
            if run and calls < params.SUMMARY_MAX_CALLS:
                text = "".join(s.text for s in run)
                try:
                    line = self.policy.summarize(text)
                except LlmosError:  # the CPU failed or the process ran out: extractive
                    line = None
                if line is not None:
                    calls += 1
                    for s in run:
                        out[s.id] = line
            run = [seg] if seg is not None and seg.id in chosen else []
        return out


def cpu_summarizer(cpu: Any, entity: Any = None) -> Summarizer:
    """A summarizer that asks `cpu` for one line (the summarize policy's default)."""
    from llmos.hw.cpu.base import GenRequest, collect

    def summarize(text: str) -> str:
        request = GenRequest(
            messages=[
                {
                    "role": "system",
                    "content": "Summarize the text in one short line. Reply with the line only.",
                },
                {"role": "user", "content": text},
            ],
            max_tokens=params.SUMMARY_MAX_TOKENS,
            temperature=0.0,
            entity=entity,
        )
        reply, _ = collect(cpu.generate(request))
        return reply.strip().splitlines()[0] if reply.strip() else ""

    return summarize


def recall_into(
    ctx: Context,
    hits: list[Any],
    budget_tokens: int,
    *,
    header: str,
    kind: str = "memory",
    counter: Counter | None = None,
    at_end: bool = False,
) -> list[str]:
    """Insert retrieved texts as one message, best first, within `budget_tokens`; the refs
    inserted. At spawn they go right after the program's text; in a running conversation
    (`at_end`) they go at the end, next to the question: that keeps the KV of everything
    before (no re-prefill) and puts them where a small model attends most."""
    counter = counter or ctx.counter
    lines: list[str] = []
    refs: list[str] = []
    used = counter.count_tokens(header)
    for hit in hits:
        line = f"- ({hit.ref}) {hit.text}"
        n = counter.count_tokens(line) + 1
        if used + n > budget_tokens:
            continue
        used += n
        lines.append(line)
        refs.append(hit.ref)
    if lines:
        # Memories are untrusted (an injected `remember` must not come back as an
        # instruction): a user-role message, fenced as data.
        text = fence(header, "\n".join(lines))
        provenance = {"recalled": refs, "source": "memory"}
        if at_end:
            ctx.append("user", text, kind, provenance, label=UNTRUSTED)
        else:
            ctx.insert_after_program("user", text, kind, provenance, label=UNTRUSTED)
    return refs
