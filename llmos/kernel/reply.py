"""A process's reply: how it streams, what it must be, and how its run ends.

- `TextGate` streams a step's text to the caller, holding back a syscall from its marker on
  (so a call is never printed as if it were the answer); `stream_reply` drains one generation,
  charging each chunk to a process whose CPU does not police budgets itself.
- `check_fits` and `context_limit`: the prompt must leave room to answer within the process's
  limit (the CPU's window, or the program's smaller `llmos.context`); `prompt_over_budget` is
  the one line for a prompt that leaves nothing of a token budget.
- `validate_json`: a JSON answer parsed and checked against the output schema, or an
  OutputError saying where it fails.
- `RunResult` is the one result type of a run, and `ended` makes it when a run ends.

Invariants: a gate that saw the call marker never emits again in that step; `stream_reply`
always closes the generator it drained (the CPU frees the sequence), even when it stops early.
What this module does not do: decide what happens next (retries, syscalls, votes: see
`llmos.kernel.loop` and `llmos.kernel.dependable.answers`), or log anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from llmos.errors import BudgetError, ContextOverflowError, OutputError
from llmos.hw.cpu.base import CPU, Chunk, Message
from llmos.hw.cpu.grammar import CALL_OPEN
from llmos.kernel.mm.context import Context
from llmos.kernel.program import Program
from llmos.kernel.sched.policy import Entity


@dataclass
class RunResult:
    """How a process's run ended: its answer, counts and timings."""

    run_id: str
    text: str
    output: Any  # parsed JSON for JSON programs, else the text
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None
    duration_ms: float
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        gen_s = (self.duration_ms - (self.ttft_ms or 0.0)) / 1000.0
        if gen_s <= 0 or self.completion_tokens <= 1:
            return 0.0
        return (self.completion_tokens - 1) / gen_s

    def to_json(self, program: Program, cpu_name: str) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "program": program.name,
            "cpu": cpu_name,
            "output": self.output,
            "finish_reason": self.finish_reason,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            },
            "ttft_ms": self.ttft_ms,
            "duration_ms": self.duration_ms,
            "tokens_per_s": round(self.tokens_per_s, 2),
            "context": {k: v for k, v in (self.extra.get("context") or {}).items() if k != "pages"},
        }


def ended(
    text: str,
    output: Any,
    finish_reason: str | None,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    ttft_ms: float | None,
    started: float,
    attempts: int,
    extra: dict[str, Any],
) -> RunResult:
    """The `RunResult` of a run that ends now, begun at `started` (`time.perf_counter`);
    `run_process` fills in its `run_id`."""
    return RunResult(
        run_id="",
        text=text,
        output=output,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        ttft_ms=ttft_ms,
        duration_ms=(time.perf_counter() - started) * 1000,
        attempts=attempts,
        extra=extra,
    )


class TextGate:
    """Streams a step's text to `on_text`. With `hold_calls`, text from a `<tool_call>` marker on
    is held back (so is a tail that could still grow into the marker): a syscall is never
    printed as if it were the answer."""

    def __init__(self, on_text: Callable[[str], None] | None, *, hold_calls: bool = True) -> None:
        self.on_text = on_text
        self.hold_calls = hold_calls
        self.buffer = ""
        self.closed = False  # a call began: nothing more is streamed

    def __call__(self, text: str) -> None:
        if not self.hold_calls:
            self._emit(text)
            return
        if self.closed:
            return
        self.buffer += text
        at = self.buffer.find(CALL_OPEN)
        if at >= 0:
            self._emit(self.buffer[:at].rstrip())
            self.buffer, self.closed = "", True
            return
        keep = next(
            (
                n
                for n in range(min(len(CALL_OPEN) - 1, len(self.buffer)), 0, -1)
                if CALL_OPEN.startswith(self.buffer[-n:])
            ),
            0,
        )
        self._emit(self.buffer[: len(self.buffer) - keep])
        self.buffer = self.buffer[len(self.buffer) - keep :]

    def flush(self) -> None:
        """The step ended as an answer: emit what was held back."""
        if not self.closed:
            self._emit(self.buffer)
        self.buffer = ""

    def _emit(self, text: str) -> None:
        if text and self.on_text is not None:
            self.on_text(text)


def stream_reply(
    chunks: Iterator[Chunk],
    on_text: Callable[[str], None] | None,
    cpu: CPU,
    entity: Entity | None,
) -> tuple[str, Chunk, float | None]:
    """Drain one generation: its text, its last chunk, and when its first text arrived. With
    `entity` (a CPU that does not police budgets itself), each chunk is charged and a kill or
    an exhausted budget ends the generation early."""
    parts: list[str] = []
    last = Chunk(done=True)
    first_at: float | None = None
    try:
        for chunk in chunks:
            if chunk.text:
                if first_at is None:
                    first_at = time.perf_counter()
                parts.append(chunk.text)
                if on_text is not None:
                    on_text(chunk.text)
            if chunk.done:
                last = chunk
            if entity is not None:
                generated = cpu.count_tokens(chunk.text) if chunk.text else 0
                within = entity.charge(generated=generated)
                if entity.killed or not within:
                    reason = "cancelled" if entity.killed else "budget"
                    last = Chunk(
                        done=True, finish_reason=reason, completion_tokens=entity.generated
                    )
                    break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return "".join(parts), last, first_at


def prompt_over_budget(program: Program, context: Context, entity: Entity) -> BudgetError:
    """The one line for a process whose prompt left nothing of a token budget to generate
    with (its own, an ancestor's or its owner's account: budgets count prompt and generated
    tokens)."""
    n = context.used or context.measure()
    if entity.budget is not None and n >= entity.budget:
        whose = f"the process's token budget is {entity.budget}"
    else:
        whose = "its parent's budget or its owner's token account has less left"
    return BudgetError(
        f"{program.path}: the prompt is {n} tokens and {whose}: nothing is left to generate "
        "with (a budget counts prompt and generated tokens: give one larger than the prompt "
        "plus the reply)"
    )


def check_fits(cpu: CPU, messages: list[Message], program: Program, limit: int) -> int:
    """Prompt tokens, or ContextOverflowError if the prompt leaves no room to answer."""
    n = cpu.count_messages(messages)
    if n >= limit:
        raise ContextOverflowError(
            f"{program.path}: prompt is {n} tokens but the context limit is {limit} tokens "
            f"({cpu.name}'s window is {cpu.n_ctx})"
        )
    return n


def validate_json(
    text: str, schema: dict[str, Any] | None, prepare: Callable[[Any], Any] | None = None
) -> Any:
    """The parsed reply (passed through `prepare` first, when given), or OutputError saying why
    it is not valid."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OutputError(f"reply is not valid JSON ({exc.msg} at char {exc.pos})") from exc
    if prepare is not None:
        value = prepare(value)
    if schema is not None:
        error = jsonschema.exceptions.best_match(
            jsonschema.validators.validator_for(schema)(schema).iter_errors(value)
        )
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise OutputError(f"reply fails the output schema at {where}: {error.message}")
    return value


def context_limit(program: Program, cpu: CPU) -> int:
    """The process's context limit: the CPU's window, or the program's smaller `llmos.context`."""
    limit = cpu.n_ctx
    asked = program.llmos.get("context")
    if isinstance(asked, int) and not isinstance(asked, bool) and 0 < asked < limit:
        limit = asked
    return limit
