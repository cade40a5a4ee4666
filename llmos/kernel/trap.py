"""Trap: classify what the CPU emitted (text, a syscall, or garbage).

A CPU with native tool calls (OpenAI-compatible servers) returns `ToolCall`s itself. A CPU
that only emits text (the embedded model) writes one call between the markers of its
instruction format (`llmos.hw.cpu.grammar`, which also builds the grammars that constrain it):

    <tool_call>{"name": "calc", "arguments": {"expression": "17*23"}}</tool_call>

`with_call_note` tells a text-only CPU which functions exist and how to write a call to one
(for the caller's own functions, which no program text describes).

`classify` turns the emitted text back into a `Trapped` value; anything that starts like a
call but does not parse is `malformed`, with the reason, so the process sees an error it can
recover from.

What this module does not do: run syscalls (see `llmos.kernel.syscall`), constrain decoding
(see `llmos.hw.cpu.grammar`), or decide who may call what.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from llmos.hw.cpu.base import Message, ToolCall, ToolSpec
from llmos.hw.cpu.grammar import CALL_CLOSE, CALL_OPEN

_CALL_RE = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.DOTALL)


@dataclass
class Trapped:
    kind: str  # "text", "syscall" or "malformed"
    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None


def classify(text: str, native_calls: list[ToolCall] | None = None) -> Trapped:
    """What the CPU emitted: native tool calls win; else parse a `<tool_call>` block."""
    if native_calls:
        return Trapped(kind="syscall", text=text, calls=list(native_calls))
    at = text.find(CALL_OPEN)
    if at < 0:
        return Trapped(kind="text", text=text)
    match = _CALL_RE.search(text, at)
    if match is None:
        return Trapped(kind="malformed", text=text, error="unterminated <tool_call> block")
    try:
        payload = json.loads(match.group(1))
    except json.JSONDecodeError as exc:
        return Trapped(kind="malformed", text=text, error=f"call is not JSON ({exc.msg})")
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return Trapped(kind="malformed", text=text, error="call has no 'name' string")
    args = payload.get("arguments", {})
    return Trapped(
        kind="syscall",
        text=text,
        calls=[ToolCall(id="call_0", name=payload["name"], arguments=json.dumps(args))],
    )


def with_call_note(messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
    """`messages` with a system note naming `tools` and the call format (for a CPU that writes
    calls as text); the first system message is extended, or one is put first."""
    lines = [
        "You can call these functions. To call one, reply with only "
        f'{CALL_OPEN}{{"name": "<function>", "arguments": {{...}}}}{CALL_CLOSE}',
        "Functions:",
    ]
    for t in tools:
        lines.append(f"- {t.name}: {t.description} Parameters: {json.dumps(t.parameters)}")
    note = "\n".join(lines)
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0].get('content') or ''}\n\n{note}".strip()
    else:
        out.insert(0, {"role": "system", "content": note})
    return out
