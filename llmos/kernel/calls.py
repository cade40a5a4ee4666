"""A process's calls: what it may call (`Devices`) and how one step's calls run.

`run_calls` appends the assistant's call turn to the context, then runs each call through
`syscall` and appends its result as a `tool` message labelled trusted or untrusted by where its
text came from; `route_sentiment` is the kernel's own call of the sentiment device on the input
(`llmos.route.sentiment`), recorded as a step `from: kernel`. `syscall` is the one way a call
reaches a device: the process's guard decides and audits it first (a denial is the kernel's
own, trusted, note), then `SyscallTable.dispatch` runs it with the process marked blocked.

Invariants: every call, allowed or not, leaves one step record (`step_record`) in the run's
steps and is shown to `on_trace` as it happens (`add_step`); a call never runs without the
guard's decision when the process has a guard.
What this module does not do: decide when to call (the loop's trap does), define devices or
check their arguments (`llmos.kernel.syscall`), or decide what is allowed
(`llmos.kernel.security.guard`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmos.hw.cpu.base import Message, ToolCall
from llmos.hw.dev.base import CallContext, Device
from llmos.kernel import dependable
from llmos.kernel.mm.context import TRUSTED, Context
from llmos.kernel.security.guard import Guard, arguments, result_label
from llmos.kernel.syscall import SyscallResult, SyscallTable

Trace = Callable[[dict[str, Any]], None]


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


def run_calls(
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
        outcome, label, source = syscall(devices, call, context)
        record = step_record(step, call, outcome)
        if routed:
            record["routed"] = True
        add_step(steps, on_trace, record)
        context.append(
            "tool",
            outcome.segment(),
            "syscall",
            {"step": step, "device": call.name, "ok": outcome.ok, "source": source},
            label=label,
            tool_call_id=call.id,
            name=call.name,
        )


def route_sentiment(
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
    outcome, _label, _source = syscall(devices, call, context)
    record = {**step_record(1, call, outcome), "from": "kernel", "routed": True}
    out = outcome.output if outcome.ok and isinstance(outcome.output, dict) else {}
    props = schema.get("properties") or {}
    spec = props.get(field_name)
    label = out.get("label")
    if not out.get("confident") or not isinstance(spec, dict) or label not in spec.get("enum", []):
        return schema, record
    record["narrowed"] = {field_name: label}
    return {**schema, "properties": {**props, field_name: {**spec, "enum": [label]}}}, record


def syscall(devices: Devices, call: ToolCall, context: Context) -> tuple[SyscallResult, str, str]:
    """One syscall: the guard decides first (a denial is the kernel's own, trusted, note);
    then the device runs with the process marked blocked. The result, and the label and
    source its text enters the context with."""
    if devices.guard is not None:
        decision = devices.guard.check(call, call.name in devices.grants, context)
        if not decision.allowed:
            return SyscallResult(name=call.name, ok=False, error=decision.reason), TRUSTED, "kernel"
    outcome = _dispatch(devices, call)
    label, source = result_label(call.name, arguments(call), outcome.ok)
    return outcome, label, source


def _dispatch(devices: Devices, call: ToolCall) -> SyscallResult:
    if devices.on_syscall is not None:
        devices.on_syscall(True)
    try:
        return devices.table.dispatch(call, devices.grants, devices.ctx, devices.options)
    finally:
        if devices.on_syscall is not None:
            devices.on_syscall(False)


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


def step_record(step: int, call: ToolCall, result: SyscallResult) -> dict[str, Any]:
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


def add_step(steps: list[dict[str, Any]], on_trace: Trace | None, record: dict[str, Any]) -> None:
    steps.append(record)
    if on_trace is not None:
        on_trace(record)
