"""The call encoding of a text-only CPU: how the embedded model writes a syscall, as a grammar.

A CPU that only emits text (the embedded model) makes a syscall by writing one call in the
Hermes convention most small instruction-tuned models were trained on (text may come before it):

    <tool_call>{"name": "calc", "arguments": {"expression": "17*23"}}</tool_call>

`call_grammar` builds a GBNF grammar from the granted devices' schemas that admits exactly one
such call to one granted device with schema-valid arguments (or, if asked, plain text that
does not start with the call marker). The embedded CPU applies it from the first token when a
call is required, and otherwise lazily, from the moment the model writes `<tool_call>`
(`CALL_TRIGGER`): text stays fast and free, and a call, once begun, can only be well formed.
`schema_grammar` does the same for a reply that must be JSON valid against a schema.

Invariants: a call the call grammar admits is exactly one `CALL_OPEN` JSON `CALL_CLOSE` block,
so whoever parses the output by these markers finds a well-formed call; the markers are
defined here and nowhere else.

What this module does not do: parse what the model emitted (see `llmos.kernel.trap`) or
decide who may call what.
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

from llmos.errors import OutputError
from llmos.hw.cpu.base import ToolSpec

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
# For llama.cpp's lazy grammars: the call grammar applies from the marker on.
CALL_TRIGGER = r"[\s\S]*?(<tool_call>)[\s\S]*"


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
