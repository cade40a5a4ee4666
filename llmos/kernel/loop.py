"""The process loop: a program's whole life as a process, from its rendered messages to its
logged result. There is one loop; a plain program is the same loop with zero devices.

`run_process` renders the program with its inputs, opens the run in the log, turns the
messages into the process's `Context` (typed segments; `prepare` lets the kernel attach a pager
and page in memories and shared segments), then steps:

    fit -> generate -> trap -> syscall -> validate

1. fit: before each step the context is fitted to its limit (the pager pages out what no longer
   fits, see `llmos.kernel.mm.paging`); without a pager the prompt must fit as it is.
2. generate: one reply from the CPU, with the granted devices offered (native tool calls on
   remote CPUs; on the embedded CPU a grammar admitting one well-formed call, see
   `llmos.hw.cpu.grammar`) and, for JSON programs without devices, the output schema (a grammar
   on the embedded CPU, `response_format` elsewhere).
3. trap: `trap.classify` sorts the reply: text (the answer), a syscall, or a malformed call (the
   model is told what was wrong and the loop goes on).
   A call to one of the program's `client_tools` (functions the caller runs itself, the OpenAI
   endpoint's `tools`) is not a syscall: the run ends there with finish reason `tool_calls`
   and the calls in `RunResult.extra["tool_calls"]`.
4. syscall: the process's guard (`llmos.kernel.security.guard`) decides and audits it first (it may
   wait for approval); then `SyscallTable.dispatch` runs it (the process is blocked
   meanwhile); its result, or a clear error, is appended as a `tool` message (a `syscall`
   segment, labelled trusted or untrusted by where its text came from) and the loop goes on.
5. validate: a JSON program's answer must parse and match its output schema. A reply that does
   not is retried (params.JSON_RETRIES) with the error shown to the model, unless a grammar
   constrained it (then a retry cannot help); then the run fails with OutputError.

Budgets: a CPU that schedules (batching) charges and enforces budgets per token itself; for the
others (remote servers) this loop charges each step's prompt before sending it and each
generated chunk as it arrives, and ends the process with reason `budget` when it is over. This
is the only place that does so. A budget counts prompt and generated tokens; a process whose
prompt alone would pass it (nothing generated) fails with a BudgetError that says how many
tokens the prompt takes, instead of ending silently.

Output: text streams to `on_text` as it is generated, except a syscall (text from the call marker
on is held back, `TextGate`) and JSON (printed once it validates: a reply cut short must not
leave half an object on stdout for the next program in a pipe).

Invariants: every run that reaches the log leaves exactly one run row, finished as `ok`,
`failed` (with the error's kind and message) or `cancelled`; every step of a program with
devices (kind, device, arguments, result, duration) is in `RunResult.extra["steps"]`, and
`on_trace` sees each as it happens (`llmos run --trace`); running out of `llmos.max_steps` is a
StepLimitError (exit 21) naming the limit. A call cut off by the output-token cap is recorded as
malformed with the cap named (raise `maxOutputTokens`); an empty answer after tool calls is an
OutputError, never a silent success; so is a first reply without a call when the program sets
`llmos.tool_choice: required` and the CPU did not enforce it (a BackendError).

Beside it: `llmos.kernel.calls` (what a process may call, and how a step's calls run through
the guard to the syscall table), `llmos.kernel.reply` (streaming, the fit and budget checks,
JSON validation, the `RunResult`), `llmos.kernel.dependable.answers` (the dependability
services applied to an answer, and k samples voted).

What this module does not do: load programs (see `llmos.kernel.program`), choose CPUs (see
`llmos.kernel.cpus`), define devices or check access (see `llmos.kernel.syscall`), or schedule
processes (see `llmos.kernel.core`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmos import params
from llmos.errors import (
    BackendError,
    LlmosError,
    OutputError,
    StepLimitError,
)
from llmos.hw.cpu.base import CPU, GenRequest, Message, ToolCall, ToolSpec
from llmos.hw.cpu.grammar import CALL_OPEN
from llmos.kernel import calls, dependable
from llmos.kernel.calls import Devices, Trace
from llmos.kernel.dependable import Settings, answers
from llmos.kernel.dependable import route as router
from llmos.kernel.dependable import verify as verifier
from llmos.kernel.mm.context import Context
from llmos.kernel.program import Program
from llmos.kernel.reply import (
    RunResult,
    TextGate,
    check_fits,
    context_limit,
    ended,
    prompt_over_budget,
    stream_reply,
    validate_json,
)
from llmos.kernel.sched.policy import Entity
from llmos.kernel.trap import Trapped, classify, with_call_note
from llmos.store.log import Log


def run_process(
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
    devices: Devices | None = None,
    prepare: Callable[[Context], None] | None = None,
    on_trace: Trace | None = None,
    resume: str = "",
) -> RunResult:
    """Run `program` once; see the module note. Raises an LlmosError after logging it.
    `resume`: the reply so far of a recovered process, which a CPU with `continuation` goes on
    from (it is not sent to `on_text` again)."""
    started = time.perf_counter()
    messages: list[Message] = []
    run_id: str | None = None
    context: Context | None = None
    tally = _Tally()
    try:
        try:
            messages = program.render(inputs)
            if program.client_tools and cpu.capabilities.grammar:
                messages = with_call_note(messages, program.client_tools)
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
        size = sum(len(str(m.get("content") or "")) for m in messages)
        if entity is not None and size >= params.PROGRESS_MIN_CHARS:
            entity.progress = f"reading {size / 1e6:.1f} MB of input into the context"
        context = Context.from_messages(messages, context_limit(program, cpu), cpu)
        if prepare is not None:
            prepare(context)
        if context.fitter is None:
            check_fits(cpu, messages, program, context.limit)  # no pager: it must fit as is
        source = "\n".join(v for v in inputs.values() if isinstance(v, str))
        result = _steps(
            program,
            cpu,
            context,
            on_text,
            started,
            entity,
            devices,
            on_trace,
            tally,
            resume,
            source,
            inputs,
        )
        starved = not (result.text or result.completion_tokens)  # nothing could be generated
        if result.finish_reason == "budget" and entity is not None and starved:
            raise prompt_over_budget(program, context, entity)
    except LlmosError as exc:
        if run_id is not None:
            # a failed run keeps what it used and did: its tokens and its steps
            log.finish_run(
                run_id,
                status="failed",
                error_kind=exc.kind,
                error=str(exc),
                prompt_tokens=tally.prompt_tokens,
                completion_tokens=tally.completion_tokens,
                duration_ms=(time.perf_counter() - started) * 1000,
                extra={
                    **_context_extra(context),
                    **({"steps": tally.steps} if tally.steps else {}),
                    **_cpus_extra(entity),
                },
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
    result.extra.update(_cpus_extra(entity))
    killed = result.finish_reason == "cancelled"
    ended_early = killed or result.finish_reason == "budget"
    log.finish_run(
        run_id,
        status="cancelled" if ended_early else "ok",
        error_kind=("killed" if killed else "budget") if ended_early else None,
        error=("killed before it finished" if killed else "token budget exhausted")
        if ended_early
        else None,
        response=result.text,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        ttft_ms=result.ttft_ms,
        duration_ms=result.duration_ms,
        extra={"finish_reason": result.finish_reason, "attempts": result.attempts, **result.extra},
    )
    return result


@dataclass
class _Tally:
    """What a run has used and done so far (kept when it fails)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)


def _steps(
    program: Program,
    cpu: CPU,
    context: Context,
    on_text: Callable[[str], None] | None,
    started: float,
    entity: Entity | None,
    devices: Devices | None,
    on_trace: Trace | None,
    tally: _Tally,
    resume: str = "",
    source: str = "",
    inputs: dict[str, Any] | None = None,
) -> RunResult:
    """The loop itself (see the module note); returns the unlogged result. `tally` holds the
        tokens and steps so far, so a run that fails is logged with what it used and did. `source`
        is the program's input text, what `llmos.verify` and `llmos.route` check against (`inputs`:
    every input by name, for `llmos.verify.check`)."""
    inputs = inputs if inputs is not None else {}
    specs: list[ToolSpec] | None = None
    dep = Settings.of(program.llmos)
    routed: ToolCall | None = None
    if devices is not None and devices.grants:
        kernel_only = dependable.kernel_devices(program.llmos)  # never offered to the model
        specs = [s for s in devices.table.specs(devices.grants) if s.name not in kernel_only]
        if dep.route is not None:
            route = dep.route
            by_grammar = route.mode in ("grammar", "both")
            specs = router.constrain_specs(
                specs,
                source,
                arithmetic=route.arithmetic if by_grammar else None,
                ground=route.ground,
            )
            if route.arithmetic in devices.grants and route.mode in ("parse", "both"):
                expression = router.arithmetic_expression(source)
                if expression is not None:
                    routed = ToolCall(
                        id="route-1",
                        name=route.arithmetic,
                        arguments=json.dumps({"expression": expression}),
                    )
        specs = specs or None  # only the kernel's devices: the CPU answers, as without any
    elif program.client_tools:
        specs = list(program.client_tools)  # the caller's own functions: a call ends the run
    hold = dep.verify is not None or dep.redundancy is not None  # printed once checked
    verify_left = params.VERIFY_RETRIES
    settings = program.gen_settings()
    schema = program.output_schema if program.json_mode else None
    required_first = program.llmos.get("tool_choice") == "required"
    police = entity if entity is not None and not cpu.capabilities.batching else None
    steps = tally.steps
    prompt_total = completion_total = 0
    ttft_ms: float | None = None
    attempts = 0  # answers generated (a JSON answer that fails validation is tried again)

    def result(text: str, output: Any, finish_reason: str | None) -> RunResult:
        if hold and on_text is not None and text and finish_reason not in ("cancelled", "budget"):
            on_text(text)
        return ended(
            text,
            output,
            finish_reason,
            prompt_tokens=prompt_total,
            completion_tokens=completion_total,
            ttft_ms=ttft_ms,
            started=started,
            attempts=max(1, attempts),
            extra={"steps": steps} if specs or steps else {},
        )

    step = 0
    if dep.route is not None and dep.route.sentiment is not None and schema is not None:
        narrowed = calls.route_sentiment(devices, dep.route.sentiment, schema, source, context)
        if narrowed is not None:  # the kernel's call is step 1; the CPU's steps follow it
            step = 1
            schema, made = narrowed
            calls.add_step(steps, on_trace, made)
    first = step + 1  # the CPU's first step
    cut_off = ""  # why the last step's call was unusable, when the output cap cut it off
    while True:
        step += 1
        if specs and step - first + 1 > program.max_steps:
            raise StepLimitError(
                f"{program.path}: reached llmos.max_steps ({program.max_steps}) without an answer"
                + cut_off
            )
        context.step = step
        if routed is not None and step == first:  # the kernel makes the call (llmos.route)
            calls.run_calls(devices, [routed], "", step, context, steps, on_trace, routed=True)
            made = steps[-1]
            if made.get("ok") and not program.json_mode:  # and states calc's result itself
                expression = json.loads(routed.arguments)["expression"]
                stated = router.statement(expression, made.get("result"))
                calls.add_step(steps, on_trace, {"step": step, "kind": "text", "from": "kernel"})
                attempts += 1
                if on_text is not None and not hold:
                    on_text(stated)
                return result(stated, stated, "stop")
            continue
        if entity is not None and context.resident_chars() >= params.PROGRESS_MIN_CHARS:
            entity.progress = f"measuring the context ({context.resident_chars() / 1e6:.1f} MB)"
        context.fit()  # pages out what no longer fits (see llmos.kernel.mm.paging)
        if entity is not None:
            entity.progress = None  # what comes next is the CPU's prefill (entity.prefill)
        if police is not None and not police.charge(prompt=context.used):
            return result("", "", "budget")
        request = GenRequest(
            messages=context.messages(),
            tools=specs,
            tool_choice=(
                ("required" if required_first and step == first else "auto") if specs else None
            ),
            json_schema=answers.answer_schema(schema or {"type": "object"}, dep, source)
            if program.json_mode and not specs
            else answers.lines_schema(dep, cpu)
            if not specs and not resume
            else None,
            entity=entity,
            prefix=resume if step == first else "",
            **settings,
        )
        if dep.redundancy is not None and not specs:
            return answers.voted(
                program, cpu, request, dep, source, inputs, police, started, on_text
            )
        gate = TextGate(None if program.json_mode or hold else on_text, hold_calls=bool(specs))
        text, last, first_at = stream_reply(cpu.generate(request), gate, cpu, police)
        text = request.prefix + answers.as_lines(text, request, program)
        if ttft_ms is None and first_at is not None:
            ttft_ms = (first_at - started) * 1000
        prompt_total += last.prompt_tokens
        completion_total += last.completion_tokens
        tally.prompt_tokens, tally.completion_tokens = prompt_total, completion_total
        trapped = classify(text, last.tool_calls) if specs else Trapped(kind="text")
        if devices is None and trapped.kind == "malformed":
            trapped = Trapped(kind="text", text=text)  # no device to retry for: it is the answer
        if specs:
            context.touch(text)
        ended_early = last.finish_reason in ("cancelled", "budget")
        if required_first and step == first and trapped.kind == "text" and not ended_early:
            raise BackendError(
                f"{cpu.name} answered without a tool call although {program.path} sets "
                "llmos.tool_choice: required (the server does not enforce it)"
            )
        if ended_early or trapped.kind == "text":
            gate.flush()
            if specs:
                calls.add_step(
                    steps,
                    on_trace,
                    {"step": step, "kind": "text", "tokens": last.completion_tokens},
                )
            attempts += 1
            if (
                specs
                and not ended_early
                and not text.strip()
                and any(s.get("kind") == "syscall" for s in steps)
            ):
                raise OutputError(f"{program.path}: the answer after the tool calls is empty")
            if ended_early:
                return result(text, text, last.finish_reason)
            if not program.json_mode:
                problem = (
                    answers.cited(dep, steps, text) if specs else answers.text_checked(dep, text)
                )
                if problem is None and dep.verify is not None and dep.verify.check:
                    problem = verifier.checked(dep.verify.check, source, inputs, [text])[0]
                if problem is None:
                    return result(text, text, last.finish_reason)
                if verify_left <= 0:
                    raise OutputError(f"{program.path}: verification failed: {problem}")
                verify_left -= 1
                _retry_note(context, text, problem, attempts)
                continue
            try:
                output = validate_json(text, schema, lambda o: answers.unasked(o, schema, dep))
            except OutputError as exc:
                constrained = cpu.capabilities.grammar and not specs
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
                continue
            problem = None
            if dep.verify is not None and dep.verify.grounded:
                problem = verifier.grounded(output, dep.verify.grounded, source)
            if problem is None and dep.verify is not None and dep.verify.check:
                problem = verifier.checked(dep.verify.check, source, inputs, [output])[0]
            if problem is not None:
                if verify_left <= 0:
                    raise OutputError(f"{program.path}: verification failed: {problem}")
                verify_left -= 1
                _retry_note(context, text, problem, attempts)
                continue
            if output != json.loads(text):  # a null for an optional field was left out
                text = json.dumps(output)
            if on_text is not None and not hold:
                on_text(text)
            return result(text, output, last.finish_reason)
        if devices is None:  # a call to one of the caller's functions: the caller runs it
            attempts += 1
            at = text.find(CALL_OPEN)
            calls.add_step(steps, on_trace, {"step": step, "kind": "client_call"})
            done = result(text[:at].strip() if at >= 0 else text, "", "tool_calls")
            done.extra["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in trapped.calls
            ]
            return done
        if trapped.kind == "malformed":
            error = trapped.error
            if last.finish_reason == "length":
                error = (
                    f"{error}: cut off at the {request.max_tokens}-token output cap "
                    "(raise maxOutputTokens)"
                )
                cut_off = f" (the last call was {error})"
            else:
                cut_off = ""
            calls.add_step(steps, on_trace, {"step": step, "kind": "malformed", "error": error})
            context.append("assistant", text, "turn", {"step": step})
            context.append(
                "user",
                f"That call was malformed ({error}). "
                "Reply with one valid call or with your answer.",
                "turn",
                {"step": step, "from": "kernel"},
            )
            continue
        cut_off = ""
        calls.run_calls(devices, trapped.calls, text, step, context, steps, on_trace)


def _retry_note(context: Context, text: str, problem: str, attempt: int) -> None:
    """Show the model its failed answer and why, for one more try (llmos.verify)."""
    context.append("assistant", text, "turn", {"attempt": attempt})
    context.append(
        "user",
        f"That answer failed a check: {problem}. Reply again with a corrected answer.",
        "turn",
        {"attempt": attempt, "from": "kernel"},
    )


def _cpus_extra(entity: Entity | None) -> dict[str, Any]:
    """Which CPUs of a pool served the run, with tokens, seconds and cost on each."""
    if entity is None or not entity.cpus:
        return {}
    return {"cpus": {cpu: u.to_json() for cpu, u in sorted(entity.cpus.items())}}


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
