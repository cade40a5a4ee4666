"""The agent loop: generate, trap, syscall, resume, up to `llmos.max_steps`.

A program that declares devices runs as a loop. Each step asks the CPU for one reply with the
granted devices offered (native tool calls on remote CPUs; on the embedded CPU a grammar that
admits one well-formed call or an answer, see `llmos.kernel.trap`). `trap.classify` sorts the reply:

- text: the answer; the loop ends and the text is the program's output;
- a syscall: `SyscallTable.dispatch` runs it (the process is blocked meanwhile) and its result,
  or a clear error, is appended as a `tool` message (a `syscall` segment of the process's
  context); the loop continues;
- malformed: the model is told what was wrong, and the loop continues.

The conversation lives in the process's `Context`; before each step it is fitted to the
context limit (the pager pages out what no longer fits, see `llmos.paging`).

Every step (kind, device, arguments, result, duration) is kept in `RunResult.extra["steps"]`,
which the log stores with the run; `on_trace` sees each step as it happens (`llmos run
--trace`). Running out of steps is an OutputError naming the limit.

`llmos.tool_choice: required` makes the first step a call (the grammar admits nothing else),
which lets even a very small model be made to use a device before it answers.

What this module does not do: define devices or check access (see `llmos.kernel.syscall`), or log
the run (see `llmos.kernel.run`, which calls this loop as a run's body).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from llmos.errors import OutputError
from llmos.hw.cpu.base import CPU, GenRequest, Message, ToolCall
from llmos.hw.dev.base import CallContext, Device
from llmos.kernel.mm.context import Context
from llmos.kernel.program import Program
from llmos.kernel.run import Body, RunResult, stream_reply
from llmos.kernel.sched.policy import Entity
from llmos.kernel.syscall import SyscallResult, SyscallTable
from llmos.kernel.trap import CALL_OPEN, classify

Trace = Callable[[dict[str, Any]], None]


class TextGate:
    """Streams a step's text, but never a syscall: text from a `<tool_call>` marker on is held
    back (so is a tail that could still grow into the marker)."""

    def __init__(self, on_text: Callable[[str], None] | None) -> None:
        self.on_text = on_text
        self.buffer = ""
        self.closed = False  # a call began: nothing more is streamed

    def __call__(self, text: str) -> None:
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


def agent_body(
    syscalls: SyscallTable,
    grants: dict[str, Device],
    ctx: CallContext,
    *,
    on_trace: Trace | None = None,
    on_syscall: Callable[[bool], None] | None = None,
    device_options: dict[str, Any] | None = None,
) -> Body:
    """A `run_program` body that runs the agent loop with these grants."""

    def body(
        program: Program,
        cpu: CPU,
        context: Context,
        on_text: Callable[[str], None] | None,
        started: float,
        entity: Entity | None,
    ) -> RunResult:
        return _loop(
            program,
            cpu,
            context,
            on_text,
            started,
            entity,
            syscalls,
            grants,
            ctx,
            on_trace,
            on_syscall,
            device_options or {},
        )

    return body


def _loop(
    program: Program,
    cpu: CPU,
    context: Context,
    on_text: Callable[[str], None] | None,
    started: float,
    entity: Entity | None,
    syscalls: SyscallTable,
    grants: dict[str, Device],
    ctx: CallContext,
    on_trace: Trace | None,
    on_syscall: Callable[[bool], None] | None,
    device_options: dict[str, Any],
) -> RunResult:
    specs = syscalls.specs(grants)
    settings = program.gen_settings()
    required_first = program.llmos.get("tool_choice") == "required"
    steps: list[dict[str, Any]] = []
    prompt_total = completion_total = 0
    ttft_ms: float | None = None
    police = entity if entity is not None and not cpu.capabilities.batching else None
    for step in range(1, program.max_steps + 1):
        choice = "required" if (required_first and step == 1) else "auto"
        context.step = step
        context.fit()  # pages out what no longer fits (see llmos.paging)
        request = GenRequest(
            messages=context.messages(),
            tools=specs,
            tool_choice=choice,
            entity=entity,
            **settings,
        )
        gate = TextGate(on_text)
        text, last, first_at = stream_reply(cpu.generate(request), gate, cpu, police)
        if ttft_ms is None and first_at is not None:
            ttft_ms = (first_at - started) * 1000
        prompt_total += last.prompt_tokens
        completion_total += last.completion_tokens
        trapped = classify(text, last.tool_calls)
        context.touch(text)
        if last.finish_reason in ("cancelled", "budget") or trapped.kind == "text":
            gate.flush()
            record = {"step": step, "kind": "text", "tokens": last.completion_tokens}
            steps.append(record)
            _trace(on_trace, record)
            return RunResult(
                run_id="",
                text=text,
                output=text,
                finish_reason=last.finish_reason,
                prompt_tokens=prompt_total,
                completion_tokens=completion_total,
                ttft_ms=ttft_ms,
                duration_ms=(time.perf_counter() - started) * 1000,
                extra={"steps": steps},
            )
        if trapped.kind == "malformed":
            record = {"step": step, "kind": "malformed", "error": trapped.error}
            steps.append(record)
            _trace(on_trace, record)
            context.append("assistant", text, "turn", {"step": step})
            context.append(
                "user",
                f"That call was malformed ({trapped.error}). "
                "Reply with one valid call or with your answer.",
                "turn",
                {"step": step, "from": "kernel"},
            )
            continue
        call_message = _assistant_call(text, trapped.calls)
        context.append(
            "assistant",
            str(call_message["content"]),
            "turn",
            {"step": step},
            tool_calls=call_message["tool_calls"],
        )
        for call in trapped.calls:
            if on_syscall is not None:
                on_syscall(True)
            try:
                result = syscalls.dispatch(call, grants, ctx, device_options)
            finally:
                if on_syscall is not None:
                    on_syscall(False)
            record = _step_record(step, call, result)
            steps.append(record)
            _trace(on_trace, record)
            context.append(
                "tool",
                result.segment(),
                "syscall",
                {"step": step, "device": call.name, "ok": result.ok},
                tool_call_id=call.id,
                name=call.name,
            )
    raise OutputError(
        f"{program.path}: reached llmos.max_steps ({program.max_steps}) without an answer"
    )


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


def _trace(on_trace: Trace | None, record: dict[str, Any]) -> None:
    if on_trace is not None:
        on_trace(record)
