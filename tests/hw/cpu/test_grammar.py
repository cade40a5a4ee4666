"""The call encoding's grammar: one well-formed call to one granted device (GBNF), and JSON
Schemas as grammars."""

from __future__ import annotations

import pytest

from llmos.errors import OutputError
from llmos.hw.cpu.base import ToolSpec
from llmos.hw.cpu.grammar import call_grammar, schema_grammar


def test_call_grammar_names_each_device_and_requires_when_asked() -> None:
    schema = {"type": "object", "properties": {"word": {"type": "string"}}}
    tools = [ToolSpec("echo", "Echo a word.", schema), ToolSpec("boom", "Fail.", schema)]
    required = call_grammar(tools, required=True)
    assert required.startswith("root ::= call\n")
    assert '"\\"echo\\""' in required and '"\\"boom\\""' in required
    optional = call_grammar(tools)
    assert optional.startswith("root ::= call | text\n")
    with pytest.raises(OutputError):
        call_grammar([])


def test_schema_grammar_excludes_raw_control_characters_in_strings() -> None:
    grammar = schema_grammar({"type": "object", "properties": {"s": {"type": "string"}}})
    assert "\nroot ::= " in grammar
    assert 'char ::= [^"\\\\\\x7F\\x00-\\x1F]' in grammar
