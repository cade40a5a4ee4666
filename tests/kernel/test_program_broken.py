"""Program files that cannot be loaded, and the one-line error each one gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmos import params
from llmos.errors import ProgramError
from llmos.kernel import program as prog
from tests.kernel.program_files import BROKEN, GOOD

# --- Broken files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("empty.prompt", "program file is empty"),
        ("blank.prompt", "program file is empty"),
        ("binary.prompt", "not a text file"),
        ("latin1.prompt", "not a text file (not UTF-8)"),
        (
            "bad_yaml.prompt",
            "malformed front matter at line 3, column 17: invalid YAML"
            " (expected ',' or ']', but got '<stream end>')",
        ),
        (
            "not_mapping.prompt",
            "malformed front matter at line 2, column 1: frontmatter must be a mapping",
        ),
        (
            "unterminated.prompt",
            "malformed front matter at line 1, column 1: missing closing delimiter",
        ),
        (
            "unknown_llmos.prompt",
            "unknown key 'llmos.max_stepz' (valid llmos keys: budget, context, devices,"
            " max_output_tokens, max_steps, memory, paging, priority, redundancy, route, shm,"
            " speculative, tool_choice, verify)",
        ),
        ("unknown_nested_llmos.prompt", "unknown key 'llmos.colour' (valid llmos keys: "),
        ("wrong_type_llmos.prompt", "'llmos.max_steps' must be an integer, got \"four\""),
        ("bad_priority.prompt", "'llmos.priority' must be between 0 and 39, got 40"),
        ("twice_llmos.prompt", "'llmos.max_steps' is set twice"),
        ("bad_picoschema.prompt", "bad input schema: Picoschema: unsupported scalar type"),
        ("bad_jsonschema.prompt", "bad output schema at 'properties/a/type': "),
        ("bad_template.prompt", "bad template: unclosed block"),
        ("bad_config.prompt", "'config.temperature' must be a number, got \"hot\""),
        ("bad_format.prompt", "'output.format' must be one of text, json, got \"xml\""),
        ("no_body.prompt", "the template (the text after the front matter) is empty"),
        (
            "bad_default.prompt",
            "input 'n': 'lots' is not of type 'integer' (in 'input.default')",
        ),
    ],
)
def test_broken_programs(name: str, message: str) -> None:
    path = BROKEN / name
    with pytest.raises(ProgramError) as exc:
        prog.load(path)
    text = str(exc.value)
    assert text.startswith(f"{path}: {message}"), text
    assert "\n" not in text


def test_binary_fixture_really_is_binary() -> None:
    assert b"\0" in (BROKEN / "binary.prompt").read_bytes()


def test_media_part_is_refused_at_render() -> None:
    p = prog.load(BROKEN / "media.prompt")
    with pytest.raises(ProgramError, match=r"message 1 has a media part; llmos sends text only"):
        p.render({})


def test_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.prompt"
    path.write_text("x" * (params.PROGRAM_MAX_BYTES + 1))
    with pytest.raises(ProgramError, match=r"big\.prompt: program file is too large"):
        prog.load(path)
    path.write_text("x" * params.PROGRAM_MAX_BYTES)
    assert prog.load(path).kind == "dotprompt"


def test_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.prompt"
    path.write_bytes(b"\xef\xbb\xbf---\ndescription: d\n---\nHi {{input}}\n")
    p = prog.load(path)
    assert p.description == "d"
    assert p.render({"input": "x"}) == [{"role": "user", "content": "Hi x"}]


def test_missing_file() -> None:
    with pytest.raises(ProgramError, match=r"nope\.prompt: no such program file"):
        prog.load(GOOD / "nope.prompt")


@pytest.mark.parametrize(
    ("front", "message"),
    [
        ("llmos.budget: 0", "'llmos.budget' must be positive, got 0"),
        ("llmos.priority: -1", "'llmos.priority' must be between 0 and 39, got -1"),
        ("llmos.max_steps: true", "'llmos.max_steps' must be an integer, got true"),
        ("llmos.devices: time", "'llmos.devices' must be a list or a mapping, got \"time\""),
        ("llmos: 3", "'llmos' must be a mapping of settings"),
        ("llmos.hw.dev.time: {}", "unknown key 'llmos.hw.dev.time'"),
        ("config: {maxOutputTokens: 0}", "'config.maxOutputTokens' must be a positive integer"),
        ("config: {stopSequences: stop}", "'config.stopSequences' must be a list of strings"),
        (
            "tools: search",
            "malformed front matter at line 2, column 8: invalid recognized field type"
            " ('tools' has the wrong type)",
        ),
        (
            "description: [a]",
            "malformed front matter at line 2, column 14: invalid recognized field type"
            " ('description' has the wrong type)",
        ),
    ],
)
def test_bad_front_matter_values(tmp_path: Path, front: str, message: str) -> None:
    path = tmp_path / "p.prompt"
    path.write_text(f"---\n{front}\n---\nHello\n")
    with pytest.raises(ProgramError) as exc:
        prog.load(path)
    assert str(exc.value).startswith(f"{path}: {message}"), str(exc.value)


def test_bad_markdown_front_matter(tmp_path: Path) -> None:
    path = tmp_path / "m.md"
    path.write_text("---\nname: [x\n---\nBody\n")
    with pytest.raises(ProgramError, match=r"m\.md: malformed front matter at line 2"):
        prog.load(path)
    path.write_text("---\nllmos.colour: red\n---\nBody\n")
    with pytest.raises(ProgramError, match=r"unknown key 'llmos\.colour'"):
        prog.load(path)


def test_markdown_heading_before_rule_is_not_front_matter(tmp_path: Path) -> None:
    path = tmp_path / "m.md"
    path.write_text("# Title\n\n---\n\nText\n\n---\nMore\n")
    p = prog.load(path)
    assert p.render({}) == [{"role": "user", "content": "# Title\n\n---\n\nText\n\n---\nMore"}]
