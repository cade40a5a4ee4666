"""Running one program to completion on one CPU: render, check, generate, validate, log.

This is the single-process path every later layer builds on (the kernel runs many of these
as processes). `run_program` renders the program with its inputs, checks the prompt fits the
CPU's context window, streams the reply to a callback as it is generated, makes JSON programs
return JSON valid against their output schema, and journals everything in the log.

JSON output:
- On a CPU with grammar support (the embedded CPU) the schema becomes a grammar in the sampler,
  so the reply can only take the schema's shape; it is still validated (a reply cut short by
  the token limit is caught here).
- Elsewhere the schema goes to the server as `response_format`; a reply that does not validate
  is retried once (params.JSON_RETRIES) with the validation error shown to the model, then the
  run fails with OutputError. JSON replies from such CPUs are not streamed, since a retry would
  take back text already printed.

Invariants: every call that reaches the log leaves exactly one run row, finished as `ok`,
`failed` (with the error's kind and message) or `cancelled`; the callback only ever sees text
of the final answer.

What this module does not do: load programs (see `llmos.kernel.program`), choose CPUs (see
`llmos.kernel.cpus`), or schedule several runs (see the kernel).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from llmos import params
from llmos.errors import ContextOverflowError, LlmosError, OutputError
from llmos.hw.cpu.base import CPU, Chunk, GenRequest, Message
from llmos.kernel.mm.context import Context
from llmos.kernel.program import Program
from llmos.kernel.sched.policy import Entity
from llmos.store.log import Log


@dataclass
class RunResult:
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

    def to_json(self, program: Program, cpu: CPU) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "program": program.name,
            "cpu": cpu.name,
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


def check_fits(cpu: CPU, messages: list[Message], program: Program, limit: int) -> int:
    """Prompt tokens, or ContextOverflowError if the prompt leaves no room to answer."""
    n = cpu.count_messages(messages)
    if n >= limit:
        raise ContextOverflowError(
            f"{program.path}: prompt is {n} tokens but the context limit is {limit} tokens "
            f"({cpu.name}'s window is {cpu.n_ctx})"
        )
    return n


def validate_json(text: str, schema: dict[str, Any] | None) -> Any:
    """The parsed reply, or OutputError saying why it is not valid."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OutputError(f"reply is not valid JSON ({exc.msg} at char {exc.pos})") from exc
    if schema is not None:
        error = jsonschema.exceptions.best_match(
            jsonschema.validators.validator_for(schema)(schema).iter_errors(value)
        )
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise OutputError(f"reply fails the output schema at {where}: {error.message}")
    return value


def run_program(
    program: Program,
    inputs: dict[str, Any],
    cpu: CPU,
    log: Log,
    on_text: Callable[[str], None] | None = None,
    *,
    owner: str | None = None,
    pid: int | None = None,
    entity: Entity | None = None,
    on_run: Callable[[str], None] | None = None,
    body: Body | None = None,
    prepare: Callable[[Context], None] | None = None,
) -> RunResult:
    """Run `program` once; see the module note. Raises an LlmosError after logging it.

    The rendered messages become the process's `Context` (typed segments); `prepare` may
    attach a pager to it and add segments (memories, shared segments) before the first step.
    Without a pager, a prompt that does not fit is a ContextOverflowError.
    `body` does the generating (default: one reply, `generate_reply`); the agent loop of a
    program with devices is another body (see `llmos.kernel.agent`)."""
    started = time.perf_counter()
    messages: list[Message] = []
    run_id: str | None = None
    context: Context | None = None
    try:
        try:
            messages = program.render(inputs)
        finally:
            run_id = log.start_run(
                program.name,
                cpu.name,
                inputs,
                messages,
                program_path=str(program.path),
                pid=pid,
                owner=owner,
            )
            if on_run is not None:
                on_run(run_id)
        context = Context.from_messages(messages, context_limit(program, cpu), cpu)
        if prepare is not None:
            prepare(context)
        if context.fitter is None:
            check_fits(cpu, messages, program, context.limit)  # no pager: it must fit as is
        result = (body or generate_reply)(program, cpu, context, on_text, started, entity)
    except LlmosError as exc:
        if run_id is not None:
            log.finish_run(
                run_id,
                status="failed",
                error_kind=exc.kind,
                error=str(exc),
                duration_ms=(time.perf_counter() - started) * 1000,
                extra=_context_extra(context),
            )
        raise
    except BaseException as exc:  # KeyboardInterrupt, or a bug: never leave a 'running' row
        if run_id is not None:
            interrupted = isinstance(exc, KeyboardInterrupt | GeneratorExit)
            log.finish_run(
                run_id,
                status="cancelled" if interrupted else "failed",
                error_kind="interrupted" if interrupted else "internal",
                error=str(exc) or type(exc).__name__,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        raise
    result.run_id = run_id
    result.extra.update(_context_extra(context))
    ended_early = result.finish_reason in ("cancelled", "budget")
    log.finish_run(
        run_id,
        status="cancelled" if ended_early else "ok",
        error_kind=("killed" if result.finish_reason == "cancelled" else "budget")
        if ended_early
        else None,
        error="killed before it finished"
        if result.finish_reason == "cancelled"
        else "token budget exhausted"
        if ended_early
        else None,
        response=result.text,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        ttft_ms=result.ttft_ms,
        duration_ms=result.duration_ms,
        extra={
            "finish_reason": result.finish_reason,
            "attempts": result.attempts,
            **result.extra,
        },
    )
    return result


def context_limit(program: Program, cpu: CPU) -> int:
    """The process's context limit: the CPU's window, or the program's smaller `llmos.context`."""
    limit = cpu.n_ctx
    asked = program.llmos.get("context")
    if isinstance(asked, int) and not isinstance(asked, bool) and 0 < asked < limit:
        limit = asked
    return limit


def _context_extra(context: Context | None) -> dict[str, Any]:
    """The context's final accounting, for the log (pages say where paged-out text went)."""
    if context is None:
        return {}
    paged = context.paged()
    out: dict[str, Any] = {**context.accounting(), "paged_chars": sum(s.chars for s in paged)}
    if paged:
        out["pages"] = [s.page for s in paged][: params.LOG_MAX_PAGE_IDS]
    # What the kernel added at spawn (memories, shared segments) is not in the rendered
    # messages the log opened the run with: keep its text here, so the log has it all.
    attached = [
        {"kind": s.kind, "provenance": s.provenance, "text": s.text}
        for s in context.segments
        if s.kind in ("memory", "shm") and s.resident
    ]
    if attached:
        out["attached"] = attached
    return {"context": out}


Body = Callable[
    [Program, CPU, Context, Callable[[str], None] | None, float, Entity | None],
    "RunResult",
]


def generate_reply(
    program: Program,
    cpu: CPU,
    context: Context,
    on_text: Callable[[str], None] | None,
    started: float,
    entity: Entity | None = None,
) -> RunResult:
    settings = program.gen_settings()
    schema = program.output_schema if program.json_mode else None
    constrained = program.json_mode and cpu.capabilities.grammar
    # JSON is printed only once it validates: a reply cut short must not leave half an
    # object on stdout for the next program in a pipe.
    stream_to = None if program.json_mode else on_text
    # A CPU that schedules (batching) enforces budgets and kills per token itself; for
    # the others (remote servers) they are checked here, the prompt charged up front.
    police = entity if entity is not None and not cpu.capabilities.batching else None
    context.fit()
    messages = context.messages()
    n_prompt = context.used
    if police is not None and not police.charge(prompt=n_prompt):
        return RunResult(
            run_id="",
            text="",
            output="",
            finish_reason="budget",
            prompt_tokens=n_prompt,
            completion_tokens=0,
            ttft_ms=None,
            duration_ms=(time.perf_counter() - started) * 1000,
        )
    attempts = 0
    conversation = messages
    prompt_total = completion_total = 0
    ttft_ms: float | None = None
    while True:
        attempts += 1
        request = GenRequest(
            messages=conversation,
            json_schema=(schema or {"type": "object"}) if program.json_mode else None,
            entity=entity,
            **settings,
        )
        text, last, first_at = stream_reply(cpu.generate(request), stream_to, cpu, police)
        if ttft_ms is None and first_at is not None:
            ttft_ms = (first_at - started) * 1000
        prompt_total += last.prompt_tokens
        completion_total += last.completion_tokens
        output: Any = text
        if program.json_mode and last.finish_reason not in ("cancelled", "budget"):
            try:
                output = validate_json(text, schema)
            except OutputError as exc:
                if constrained or attempts > params.JSON_RETRIES:
                    if last.finish_reason == "length":
                        raise OutputError(
                            f"{program.path}: reply hit the {request.max_tokens}-token limit "
                            f"before its JSON was complete ({exc})"
                        ) from exc
                    raise OutputError(f"{program.path}: {exc}") from exc
                context.append("assistant", text, "turn", {"attempt": attempts})
                context.append(
                    "user",
                    f"That reply is invalid: {exc}. Reply again with only JSON that matches "
                    "the schema.",
                    "turn",
                    {"attempt": attempts, "from": "kernel"},
                )
                context.fit()
                conversation = context.messages()
                continue
            if on_text is not None and stream_to is None:
                on_text(text)
        return RunResult(
            run_id="",
            text=text,
            output=output,
            finish_reason=last.finish_reason,
            prompt_tokens=prompt_total,
            completion_tokens=completion_total,
            ttft_ms=ttft_ms,
            duration_ms=(time.perf_counter() - started) * 1000,
            attempts=attempts,
        )


def stream_reply(
    chunks: Iterator[Chunk],
    on_text: Callable[[str], None] | None,
    cpu: CPU,
    entity: Entity | None,
) -> tuple[str, Chunk, float | None]:
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
