"""Trap: classify what the CPU emitted (text, a syscall, or garbage), and constrain it.

A CPU with native tool calls (OpenAI-compatible servers) returns `ToolCall`s itself. A CPU
that only emits text (the embedded model) makes a syscall by writing one call in the Hermes
convention most small instruction-tuned models were trained on (text may come before it):

    <tool_call>{"name": "calc", "arguments": {"expression": "17*23"}}</tool_call>

`call_grammar` builds a GBNF grammar from the granted devices' schemas that admits exactly one
such call to one granted device with schema-valid arguments (or, if asked, plain text that
does not start with the call marker). The embedded CPU applies it from the first token when a
call is required, and otherwise lazily, from the moment the model writes `<tool_call>`
(`CALL_TRIGGER`): text stays fast and free, and a call, once begun, can only be well formed.
`classify` turns the emitted text back into a
`Trapped` value; anything that starts like a call but does not parse is `malformed`, with the
reason, so the process sees an error it can recover from.

What this module does not do: run syscalls (see `llmos.kernel.syscall`) or decide who may call what.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

from llmos.errors import OutputError
from llmos.hw.cpu.base import ToolCall, ToolSpec

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
# For llama.cpp's lazy grammars: the call grammar applies from the marker on.
CALL_TRIGGER = r"[\s\S]*?(<tool_call>)[\s\S]*"
_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass
class Trapped:
    kind: str  # "text", "syscall" or "malformed"
    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None


def schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF admitting exactly the JSON values valid against `schema` (llama-cpp-python's
    converter), or OutputError if the converter cannot handle the schema."""
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises bare Exceptions on unsupported schemas
        raise OutputError(f"schema cannot be turned into a grammar: {exc}") from exc
    # The converter's string characters admit raw control characters (a newline inside a
    # string), which JSON forbids: exclude them as JSON does.
    return grammar.replace(r'char ::= [^"\\]', r'char ::= [^"\\\x7F\x00-\x1F]')


def call_grammar(tools: list[ToolSpec], *, required: bool = False) -> str:
    """GBNF for one call to one of `tools` (or, unless `required`, free text)."""
    if not tools:
        raise OutputError("a call grammar needs at least one device")
    schema = {
        "oneOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": _closed(t.parameters)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in tools
        ]
    }
    body = schema_grammar(schema).replace("root ::=", "call-json ::=", 1)
    call = f'call ::= "{CALL_OPEN}" call-json "{CALL_CLOSE}"'
    if required:
        return f"root ::= call\n{call}\n{body}"
    # Text may not begin with "<" (so it can never be a half-written call).
    text = "text ::= [^<\\x00] [^\\x00]*"
    return f"root ::= call | text\n{call}\n{text}\n{body}"


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """An object schema with additionalProperties false (so the grammar stays finite)."""
    if schema.get("type") == "object" and "additionalProperties" not in schema:
        return {**schema, "additionalProperties": False}
    return schema


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
