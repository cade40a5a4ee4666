"""Inputs given on the command line (key=value), coerced by a program's input schema."""

from __future__ import annotations

import pytest

from llmos.errors import InputError
from llmos.kernel import program as prog
from llmos.kernel.inputs import parse_cli_inputs
from tests.kernel.program_files import GOOD

# --- CLI inputs --------------------------------------------------------------------------------


def test_parse_cli_inputs_without_schema() -> None:
    assert parse_cli_inputs(["a=1", "b=x=y", "c="], None) == {"a": "1", "b": "x=y", "c": ""}
    assert parse_cli_inputs([], None) == {}


def test_parse_cli_inputs_coerces_by_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": ["integer", "null"]},
            "x": {"type": "number"},
            "y": {"type": "number"},
            "flag": {"type": "boolean"},
            "off": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "obj": {"type": "object"},
            "s": {"type": "string"},
            "level": {"enum": [1, 2, "three"]},
        },
    }
    pairs = [
        "n=42",
        "x=2.5",
        "y=3",
        "flag=TRUE",
        "off=false",
        'tags=["a", "b"]',
        'obj={"k": 1}',
        "s=007",
        "level=2",
        "other=5",
    ]
    assert parse_cli_inputs(pairs, schema) == {
        "n": 42,
        "x": 2.5,
        "y": 3,
        "flag": True,
        "off": False,
        "tags": ["a", "b"],
        "obj": {"k": 1},
        "s": "007",
        "level": 2,
        "other": "5",
    }


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("n=abc", "input 'n' must be an integer, got 'abc'"),
        ("x=pi", "input 'x' must be a number, got 'pi'"),
        ("flag=yes", "input 'flag' must be true or false, got 'yes'"),
        ("tags=a,b", "input 'tags' must be a JSON array, got 'a,b'"),
        ('tags={"a": 1}', "input 'tags' must be a JSON array"),
        ("obj=[1]", "input 'obj' must be a JSON object, got '[1]'"),
        ("novalue", "bad input 'novalue': expected key=value"),
        ("=v", "bad input '=v': expected key=value"),
    ],
)
def test_parse_cli_inputs_errors(pair: str, message: str) -> None:
    schema = {
        "properties": {
            "n": {"type": "integer"},
            "x": {"type": "number"},
            "flag": {"type": "boolean"},
            "tags": {"type": "array"},
            "obj": {"type": "object"},
        }
    }
    with pytest.raises(InputError) as exc:
        parse_cli_inputs([pair], schema)
    assert str(exc.value).startswith(message)


def test_parse_cli_inputs_duplicate() -> None:
    with pytest.raises(InputError, match=r"input 'a' given twice"):
        parse_cli_inputs(["a=1", "a=2"], None)


def test_cli_inputs_then_render() -> None:
    p = prog.load(GOOD / "picoschema.prompt")
    inputs = parse_cli_inputs(["name=Ada", "age=36", 'tags=["x"]'], p.input_schema)
    assert p.render(inputs) == [
        {"role": "user", "content": "Describe Ada, aged 36, who is happy. #x"}
    ]
