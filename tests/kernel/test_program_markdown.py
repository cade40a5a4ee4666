"""Markdown programs and skills (SKILL.md folders): loading and rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmos import params
from llmos.errors import InputError, ProgramError
from llmos.kernel import program as prog
from tests.kernel.program_files import GOOD, SKILLS

# --- Markdown and skills -----------------------------------------------------------------------


def test_markdown_with_front_matter() -> None:
    p = prog.load(GOOD / "notes.md")
    assert (p.name, p.kind, p.model) == ("notes", "markdown", "embedded")
    assert p.description == "Turn text into bullet notes."
    assert p.llmos == {"priority": 10}
    assert p.extra == {"tags": ["misc"]}
    assert p.gen_settings() == {"max_tokens": 50, "temperature": 0}
    assert p.render({"input": "a b c"}) == [
        {"role": "system", "content": "Turn the user's text into three short bullet notes."},
        {"role": "user", "content": "a b c"},
    ]


def test_markdown_without_input_is_user_message() -> None:
    p = prog.load(GOOD / "bare.md")
    assert (p.name, p.description) == ("bare", "")
    body = "# Say something nice\n\nWrite one kind sentence."
    assert p.render({}) == [{"role": "user", "content": body}]
    assert p.render({"input": "   "}) == [{"role": "user", "content": body}]


def test_markdown_rejects_other_inputs() -> None:
    p = prog.load(GOOD / "notes.md")
    with pytest.raises(InputError, match=r"unknown input 'lang' \(markdown programs take only"):
        p.render({"input": "x", "lang": "fr"})


def test_skill_folder_and_file() -> None:
    for target in (GOOD / "greet-skill", GOOD / "greet-skill" / "SKILL.md"):
        p = prog.load(target)
        assert (p.name, p.kind) == ("greet-skill", "skill")
        assert p.path == GOOD / "greet-skill" / "SKILL.md"
        assert p.description == "Greet the person named in the input."
        assert p.tools == ["time", "search"]
        assert p.llmos == {"max_steps": 3}
        assert p.render({"input": "Ada"}) == [
            {"role": "system", "content": "Greet the person the user names, in one line."},
            {"role": "user", "content": "Ada"},
        ]


def test_skill_needs_input() -> None:
    p = prog.load(GOOD / "greet-skill")
    with pytest.raises(InputError) as exc:
        p.render({})
    assert str(exc.value) == "skill greet-skill needs an input: pipe text or pass -i input=..."


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("wrong-name", "'name' is 'other-name' but the skill folder is 'wrong-name'"),
        ("no-description", "missing required field 'description'"),
        ("Bad_Name", "'name' must be 1-64 characters"),
        ("no-front-matter", "a skill needs front matter with 'name' and 'description'"),
    ],
)
def test_bad_skills(folder: str, message: str) -> None:
    with pytest.raises(ProgramError) as exc:
        prog.load(SKILLS / folder)
    assert str(exc.value).startswith(f"{SKILLS / folder / 'SKILL.md'}: {message}")


def test_skill_description_too_long(tmp_path: Path) -> None:
    folder = tmp_path / "long"
    folder.mkdir()
    desc = "x" * (params.SKILL_DESCRIPTION_MAX + 1)
    (folder / "SKILL.md").write_text(f"---\nname: long\ndescription: {desc}\n---\nDo it.\n")
    with pytest.raises(ProgramError, match=r"'description' is 1025 characters \(limit 1024\)"):
        prog.load(folder)


def test_folder_without_skill_file(tmp_path: Path) -> None:
    with pytest.raises(ProgramError, match=r"not a program \(a skill folder needs SKILL\.md\)"):
        prog.load(tmp_path)
