"""The trap on its own: what the CPU emitted, classified as text, a syscall or malformed."""

from __future__ import annotations

import json

from llmos.hw.cpu.base import ToolCall
from llmos.kernel.trap import classify


def test_classify_text_call_and_malformed() -> None:
    assert classify("The answer is 4.").kind == "text"
    got = classify('<tool_call>{"name": "calc", "arguments": {"expression": "2+2"}}</tool_call>')
    assert got.kind == "syscall"
    assert (got.calls[0].name, json.loads(got.calls[0].arguments)) == (
        "calc",
        {"expression": "2+2"},
    )
    before = classify('Let me see. <tool_call>{"name": "echo", "arguments": {}}</tool_call>')
    assert before.kind == "syscall" and before.calls[0].name == "echo"
    assert classify('<tool_call>{"name": "calc"').error == "unterminated <tool_call> block"
    assert classify("<tool_call>{oops}</tool_call>").kind == "malformed"
    assert classify('<tool_call>{"arguments": {}}</tool_call>').error == "call has no 'name' string"
    native = [ToolCall(id="x", name="echo", arguments="{}")]
    assert classify("", native).calls == native
