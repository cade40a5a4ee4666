"""Trap: classify what the CPU emitted (text, a syscall, or garbage).

A CPU with native tool calls (OpenAI-compatible servers) returns `ToolCall`s itself. A CPU
that only emits text (the embedded model) writes one call between the markers of its
instruction format (`llmos.hw.cpu.grammar`, which also builds the grammars that constrain it):

    <tool_call>{"name": "calc", "arguments": {"expression": "17*23"}}</tool_call>

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

from llmos.hw.cpu.base import ToolCall
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
