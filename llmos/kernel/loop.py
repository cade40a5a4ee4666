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

What this module does not do: load programs (see `llmos.kernel.program`), choose CPUs (see
`llmos.kernel.cpus`), define devices or check access (see `llmos.kernel.syscall`), or schedule
processes (see `llmos.kernel.core`).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from llmos import params
from llmos.errors import (
    BackendError,
    BudgetError,
    ContextOverflowError,
    LlmosError,
    OutputError,
    StepLimitError,
)
from llmos.hw.cpu.base import CPU, Chunk, GenRequest, Message, ToolCall, ToolSpec
from llmos.hw.cpu.grammar import CALL_OPEN
from llmos.hw.dev.base import CallContext, Device
from llmos.kernel import dependable
from llmos.kernel.dependable import Settings
from llmos.kernel.dependable import redundancy as vote
from llmos.kernel.dependable import route as router
from llmos.kernel.dependable import verify as verifier
from llmos.kernel.mm.context import TRUSTED, Context
from llmos.kernel.program import Program
from llmos.kernel.sched.policy import Entity
from llmos.kernel.security.guard import Guard, arguments, result_label
from llmos.kernel.syscall import SyscallResult, SyscallTable
from llmos.kernel.trap import Trapped, classify, with_call_note
from llmos.store.log import Log

Trace = Callable[[dict[str, Any]], None]


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


def _ended(
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


@dataclass
class Devices:
    """What a process with devices may call: its grants in the syscall table, the context its
    calls run in, and the options its program gave each device."""

    table: SyscallTable
    grants: dict[str, Device]
    ctx: CallContext
    options: dict[str, Any] = field(default_factory=dict)
    on_syscall: Callable[[bool], None] | None = None  # True as a call starts, False as it ends
    guard: Guard | None = None  # decides and audits every call first (llmos.kernel.security.guard)


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
        return _ended(
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
        narrowed = _route_sentiment(devices, dep.route.sentiment, schema, source, context)
        if narrowed is not None:  # the kernel's call is step 1; the CPU's steps follow it
            step = 1
            schema, made = narrowed
            _record(steps, on_trace, made)
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
            _run_calls(devices, [routed], "", step, context, steps, on_trace, routed=True)
            made = steps[-1]
            if made.get("ok") and not program.json_mode:  # and states calc's result itself
                expression = json.loads(routed.arguments)["expression"]
                stated = router.statement(expression, made.get("result"))
                _record(steps, on_trace, {"step": step, "kind": "text", "from": "kernel"})
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
            json_schema=_answer_schema(schema or {"type": "object"}, dep, source)
            if program.json_mode and not specs
            else _lines_schema(dep, cpu)
            if not specs and not resume
            else None,
            entity=entity,
            prefix=resume if step == first else "",
            **settings,
        )
        if dep.redundancy is not None and not specs:
            return _voted(program, cpu, request, dep, source, inputs, police, started, on_text)
        gate = TextGate(None if program.json_mode or hold else on_text, hold_calls=bool(specs))
        text, last, first_at = stream_reply(cpu.generate(request), gate, cpu, police)
        text = request.prefix + _as_lines(text, request, program)
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
                _record(
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
                problem = _cited(dep, steps, text) if specs else _text_checked(dep, text)
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
                output = validate_json(text, schema, lambda o: _unasked(o, schema, dep))
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
            _record(steps, on_trace, {"step": step, "kind": "client_call"})
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
            _record(steps, on_trace, {"step": step, "kind": "malformed", "error": error})
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
        _run_calls(devices, trapped.calls, text, step, context, steps, on_trace)


def _run_calls(
    devices: Devices | None,
    calls: list[ToolCall],
    text: str,
    step: int,
    context: Context,
    steps: list[dict[str, Any]],
    on_trace: Trace | None,
    *,
    routed: bool = False,
) -> None:
    """Append the assistant's call turn, run each call and append its labelled result.
    `routed`: the kernel made the call itself (llmos.route), not the model."""
    assert devices is not None  # calls imply devices
    call_message = _assistant_call(text, calls)
    context.append(
        "assistant",
        str(call_message["content"]),
        "turn",
        {"step": step, **({"from": "kernel"} if routed else {})},
        tool_calls=call_message["tool_calls"],
    )
    for call in calls:
        outcome, label, source = _syscall(devices, call, context)
        record = _step_record(step, call, outcome)
        if routed:
            record["routed"] = True
        _record(steps, on_trace, record)
        context.append(
            "tool",
            outcome.segment(),
            "syscall",
            {"step": step, "device": call.name, "ok": outcome.ok, "source": source},
            label=label,
            tool_call_id=call.id,
            name=call.name,
        )


def _route_sentiment(
    devices: Devices | None, field_name: str, schema: dict[str, Any], source: str, context: Context
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The kernel's call of the sentiment device on the input (`llmos.route.sentiment`): the
    answer schema the CPU is then held to (FIELD's enum narrowed to the device's label when it
    is confident and the label is one of the enum's; else `schema` as it was) and the step
    record of the call. None when the device is not granted (the route is then off)."""
    device = dependable.SENTIMENT_DEVICE
    if devices is None or device not in devices.grants:
        return None
    call = ToolCall(id="route-1", name=device, arguments=json.dumps({"text": source}))
    outcome, _label, _source = _syscall(devices, call, context)
    record = {**_step_record(1, call, outcome), "from": "kernel", "routed": True}
    out = outcome.output if outcome.ok and isinstance(outcome.output, dict) else {}
    props = schema.get("properties") or {}
    spec = props.get(field_name)
    label = out.get("label")
    if not out.get("confident") or not isinstance(spec, dict) or label not in spec.get("enum", []):
        return schema, record
    record["narrowed"] = {field_name: label}
    return {**schema, "properties": {**props, field_name: {**spec, "enum": [label]}}}, record


def _cited(dep: Settings, steps: list[dict[str, Any]], text: str) -> str | None:
    """Why a text answer fails `llmos.verify.cites` (the last result of that device), or None."""
    if dep.verify is None or dep.verify.cites is None:
        return None
    device = dep.verify.cites
    for record in reversed(steps):
        if record.get("device") == device and record.get("ok"):
            out = record.get("result")
            if isinstance(out, dict):
                forms = [str(out[k]) for k in ("result", "decimal") if k in out]
            else:
                forms = [str(out)]
            return verifier.cites(text, forms)
    return f"the answer was given without a result from {device}"


def _lines_schema(dep: Settings, cpu: CPU) -> dict[str, Any] | None:
    """Under `llmos.verify.lines` on a CPU with grammars, the form the reply is constrained to:
    exactly N non-empty strings (a JSON array), which `_as_lines` joins into N lines; so a
    small model cannot write two lines of a haiku or run three into one."""
    if dep.verify is None or dep.verify.lines is None or not cpu.capabilities.grammar:
        return None
    n = dep.verify.lines
    # a word: no space, quote, backslash or control break, in any script, and not too long
    word = rf'[^ \t"\\\n]{{1,{params.VERIFY_LINE_MAX_WORD_CHARS}}}'
    more = (params.VERIFY_LINE_MIN_WORDS - 1, params.VERIFY_LINE_MAX_WORDS - 1)
    line = {"type": "string", "pattern": f"^{word}( {word}){{{more[0]},{more[1]}}}$"}
    return {"type": "array", "items": line, "minItems": n, "maxItems": n}


def _as_lines(text: str, request: GenRequest, program: Program) -> str:
    """A reply made under `_lines_schema` as the text it stands for, one line per string."""
    if program.json_mode or request.json_schema is None:
        return text
    try:
        items = json.loads(text)
    except ValueError:
        return text  # cut off: the check says what is wrong
    if not isinstance(items, list):
        return text
    return "\n".join(" ".join(str(i).split()) for i in items)


def _text_checked(dep: Settings, text: str) -> str | None:
    """Why a text answer fails `llmos.verify.lines`, or None."""
    if dep.verify is None or dep.verify.lines is None:
        return None
    return verifier.lines(text, dep.verify.lines)


def _answer_schema(schema: dict[str, Any], dep: Settings, source: str) -> dict[str, Any]:
    """The schema the CPU constrains a JSON answer to under `llmos.verify.grounded`: a grounded
    string field may only be a phrase of the input (`route.phrases`: a small model cannot
    invent "<EMAIL>"), a grounded number only a number written there, and not an empty one
    (an empty claim is never grounded). Every grounded field is asked for: one the program
    leaves optional may be null (`_unasked` drops it), since a small model otherwise closes
    the object before it and never gives the company."""
    fields = dep.verify.grounded if dep.verify is not None else ()
    props = schema.get("properties")
    if not fields or not isinstance(props, dict):
        return schema
    required = list(schema.get("required") or [])
    phrases = router.phrases(source)
    values = _input_numbers(source)
    out: dict[str, Any] = {}
    asked: list[str] = []  # fields now required, an optional one with null as a choice
    for k, v in props.items():
        kinds = _types(v)
        if k not in fields or not isinstance(v, dict):
            out[k] = v
            continue
        if "string" in kinds:
            choices: list[Any] = list(phrases)
        elif "number" in kinds or "integer" in kinds:
            choices = [n for n in values if "number" in kinds or isinstance(n, int)]
        else:
            out[k] = v
            continue
        if not choices:
            out[k] = {**v, "minLength": 1} if "string" in kinds else v
            continue
        out[k] = _one_of(v, choices + ([] if k in required else [None]))
        asked.append(k)
    return {**schema, "properties": out, "required": list(dict.fromkeys([*required, *asked]))}


def _input_numbers(source: str) -> list[int | float]:
    """The numbers written in `source`, as JSON numbers (a grounded number's choices)."""
    found: list[int | float] = []
    for n in router.numbers(source):
        try:
            found.append(float(n) if "." in n else int(n))
        except ValueError:
            continue
    return list(dict.fromkeys(found))[: params.GROUND_MAX_PHRASES]


def _unasked(output: Any, schema: dict[str, Any] | None, dep: Settings) -> Any:
    """`output` without the nulls `_answer_schema` allowed for optional grounded fields: a
    field the input lacks is left out, as the program's schema says it may be."""
    fields = dep.verify.grounded if dep.verify is not None else ()
    if not fields or not isinstance(output, dict) or schema is None:
        return output
    required = set(schema.get("required") or [])
    dropped = {k for k, v in output.items() if v is None and k in fields and k not in required}
    return {k: v for k, v in output.items() if k not in dropped}


def _one_of(schema: dict[str, Any], choices: list[str]) -> dict[str, Any]:
    """`schema` as one of `choices`; its "type" goes, since llama.cpp's converter follows a
    list of types (["string", "null"]) and would not see the enum."""
    return {**{k: v for k, v in schema.items() if k != "type"}, "enum": choices}


def _types(schema: Any) -> list[str]:
    kind = schema.get("type") if isinstance(schema, dict) else None
    return [kind] if isinstance(kind, str) else list(kind or [])


def _retry_note(context: Context, text: str, problem: str, attempt: int) -> None:
    """Show the model its failed answer and why, for one more try (llmos.verify)."""
    context.append("assistant", text, "turn", {"attempt": attempt})
    context.append(
        "user",
        f"That answer failed a check: {problem}. Reply again with a corrected answer.",
        "turn",
        {"attempt": attempt, "from": "kernel"},
    )


def _voted(
    program: Program,
    cpu: CPU,
    request: GenRequest,
    dep: Settings,
    source: str,
    inputs: dict[str, Any],
    police: Entity | None,
    started: float,
    on_text: Callable[[str], None] | None,
) -> RunResult:
    """The answer of a program without devices under `llmos.redundancy`: k samples in one
    batch, each validated and verified, then voted (see llmos.kernel.dependable.redundancy)."""
    red = dep.redundancy
    assert red is not None
    samples = vote.sample(cpu, request, red.k, red.temperature)
    for s in samples:
        s.text = _as_lines(s.text, request, program)
    done_at = time.perf_counter()
    prompt = sum(s.last.prompt_tokens for s in samples)
    generated = sum(s.last.completion_tokens for s in samples)
    extra_view = request.entity if cpu.capabilities.batching else police
    if extra_view is not None:  # a batching CPU charged the first sample as it ran
        start = 1 if cpu.capabilities.batching else 0
        extra_view.charge(
            prompt=sum(s.last.prompt_tokens for s in samples[start:]),
            generated=sum(s.last.completion_tokens for s in samples[start:]),
        )
    first_reason = samples[0].last.finish_reason

    done = functools.partial(
        _ended,
        prompt_tokens=prompt,
        completion_tokens=generated,
        ttft_ms=(done_at - started) * 1000,
        started=started,
        attempts=len(samples),
    )
    if first_reason in ("cancelled", "budget"):
        return done("", "", first_reason, extra={"redundancy": {"k": red.k}})
    schema = program.output_schema
    problems: list[str] = []
    candidates: list[Any] = []
    for s in samples:
        if not program.json_mode:
            problem = _text_checked(dep, s.text)
            if problem is not None:
                problems.append(problem)
            else:
                candidates.append(s.text.strip())
            continue
        try:
            output = validate_json(s.text, schema, lambda o: _unasked(o, schema, dep))
        except OutputError as exc:
            problems.append(str(exc))
            continue
        problem = None
        if dep.verify is not None and dep.verify.grounded:
            problem = verifier.grounded(output, dep.verify.grounded, source)
        if problem is not None:
            problems.append(problem)
            continue
        candidates.append(output)
    check = dep.verify.check if dep.verify is not None else None
    if check and candidates:  # one sandboxed run for all the samples left
        verdicts = verifier.checked(check, source, inputs, candidates)
        problems += [v for v in verdicts if v is not None]
        candidates = [c for c, v in zip(candidates, verdicts, strict=True) if v is None]
    if not candidates:
        raise OutputError(
            f"{program.path}: none of the {len(samples)} samples passed its checks "
            f"(first: {problems[0] if problems else 'no reply'})"
        )
    info: dict[str, Any] = {"k": red.k, "vote": red.vote, "valid": len(candidates)}
    if program.json_mode and red.vote == "schema":
        winner = vote.consensus(candidates, schema)
        merged = check and winner not in candidates  # a field-wise merge: check it too
        if merged and verifier.checked(str(check), source, inputs, [winner])[0] is not None:
            won = vote.majority(candidates)
            assert won is not None
            winner = candidates[won[0]]
        info["agree"] = sum(1 for c in candidates if c == winner)
    else:
        won = vote.majority(candidates)
        assert won is not None
        winner, info["agree"] = candidates[won[0]], won[1]
    text = json.dumps(winner) if program.json_mode else str(winner)
    if on_text is not None:
        on_text(text)
    return done(text, winner, "stop", extra={"redundancy": info})


def _syscall(devices: Devices, call: ToolCall, context: Context) -> tuple[SyscallResult, str, str]:
    """One syscall: the guard decides first (a denial is the kernel's own, trusted, note);
    then the device runs with the process marked blocked. The result, and the label and
    source its text enters the context with."""
    if devices.guard is not None:
        decision = devices.guard.check(call, call.name in devices.grants, context)
        if not decision.allowed:
            return SyscallResult(name=call.name, ok=False, error=decision.reason), TRUSTED, "kernel"
    outcome = _run_syscall(devices, call)
    label, source = result_label(call.name, arguments(call), outcome.ok)
    return outcome, label, source


def _run_syscall(devices: Devices, call: ToolCall) -> SyscallResult:
    if devices.on_syscall is not None:
        devices.on_syscall(True)
    try:
        return devices.table.dispatch(call, devices.grants, devices.ctx, devices.options)
    finally:
        if devices.on_syscall is not None:
            devices.on_syscall(False)


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


def _assistant_call(text: str, calls: list[ToolCall]) -> Message:
    return {
        "role": "assistant",
        # Text-only chat templates see the call as the model wrote it; APIs see tool_calls.
        "content": text or json.dumps({"name": calls[0].name, "arguments": calls[0].arguments}),
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ],
    }


def _step_record(step: int, call: ToolCall, result: SyscallResult) -> dict[str, Any]:
    return {
        "step": step,
        "kind": "syscall",
        "device": call.name,
        "arguments": call.arguments,
        "ok": result.ok,
        "result": result.output if result.ok else None,
        "error": result.error,
        "ms": round(result.duration_ms, 3),
    }


def _record(steps: list[dict[str, Any]], on_trace: Trace | None, record: dict[str, Any]) -> None:
    steps.append(record)
    if on_trace is not None:
        on_trace(record)
