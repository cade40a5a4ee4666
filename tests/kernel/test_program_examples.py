"""The shipped example programs: each loads, renders and discovers as documented."""

from __future__ import annotations

import pytest

from llmos.errors import InputError, ProgramError
from llmos.kernel import program as prog
from tests.kernel.program_files import EXAMPLES

# --- Examples -----------------------------------------------------------------------------------


EXAMPLE_CASES = {
    "summarize": (
        "dotprompt",
        "text",
        [
            {
                "role": "system",
                "content": "You write short summaries. Reply with one or two sentences only.",
            },
            {"role": "user", "content": "Summarize this text:\n\nSAMPLE"},
        ],
    ),
    "translate": (
        "dotprompt",
        "text",
        [
            {"role": "system", "content": "You are a translator. Reply with the translation only."},
            {"role": "user", "content": "Translate into French: SAMPLE"},
        ],
    ),
    "extract": (
        "dotprompt",
        "json",
        [
            {
                "role": "system",
                "content": "You extract facts from text. Copy each value exactly as it is "
                "written in the text. Reply with JSON only.",
            },
            {
                "role": "user",
                "content": "Find the person's name, email and company in this text:\n\nSAMPLE",
            },
        ],
    ),
    "classify": (
        "dotprompt",
        "json",
        [
            {
                "role": "system",
                "content": "You classify the sentiment of a text. positive: the writer is "
                "pleased (loved, great, happy). negative: the writer is unhappy (hated, broke, "
                "rude, awful). neutral: a plain fact with no feeling (times, places, numbers). "
                "Reply with JSON only.",
            },
            {
                "role": "user",
                "content": "Is this text positive, negative or neutral?\n\nSAMPLE",
            },
        ],
    ),
    "haiku": (
        "skill",
        "text",
        [
            {
                "role": "system",
                "content": "You write haiku. A haiku has three short lines of three to seven "
                "words each.\n"
                "Write one haiku about the topic the user gives. Reply with the three lines only.",
            },
            {"role": "user", "content": "SAMPLE"},
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(EXAMPLE_CASES))
def test_examples_load_and_render(name: str) -> None:
    kind, fmt, messages = EXAMPLE_CASES[name]
    p = prog.load(name, [EXAMPLES, EXAMPLES / "skills"])
    assert (p.name, p.kind, p.output_format) == (name, kind, fmt)
    assert p.description
    assert p.takes_input
    assert p.render({"input": "SAMPLE"}) == messages
    if kind == "dotprompt":
        settings = p.gen_settings()
        assert settings["temperature"] == 0
        assert 0 < settings["max_tokens"] <= 256


def test_example_schemas() -> None:
    extract = prog.load(EXAMPLES / "extract.prompt")
    assert extract.output_schema is not None
    assert set(extract.output_schema["properties"]) == {"name", "email", "company"}
    classify = prog.load(EXAMPLES / "classify.prompt")
    assert classify.output_schema is not None
    assert classify.output_schema["properties"]["label"]["enum"] == [
        "positive",
        "negative",
        "neutral",
    ]
    translate = prog.load(EXAMPLES / "translate.prompt")
    assert translate.render({"input": "Hi", "lang": "German"})[1] == {
        "role": "user",
        "content": "Translate into German: Hi",
    }
    with pytest.raises(InputError, match=r"missing required input 'input'"):
        translate.render({})


def test_discover_examples() -> None:
    problems: list[ProgramError] = []
    found = prog.discover([EXAMPLES, EXAMPLES / "skills"], problems)
    assert problems == []
    assert [p.name for p in found] == [
        "arithmetic",
        "classify",
        "extract",
        "haiku",
        "invoice",
        "note",
        "recall",
        "summarize",
        "translate",
    ]
