"""Programs loaded by name, discovered in directories, and the default search directories."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmos.errors import ProgramError
from llmos.kernel import program as prog
from tests.kernel.program_files import BROKEN, DATA, GOOD, SKILLS

# --- load by name, discover, search dirs ---------------------------------------------------------


def test_load_by_name() -> None:
    p = prog.load("roles", [BROKEN, GOOD])
    assert p.path == GOOD / "roles.prompt"
    skill = prog.load("greet-skill", [GOOD])
    assert skill.kind == "skill"
    assert prog.load("notes", [GOOD]).kind == "markdown"


def test_load_by_name_order(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "x.md").write_text("From a.\n")
    (second / "x.prompt").write_text("From b.\n")
    assert prog.load("x", [first, second]).path == first / "x.md"
    (first / "x.prompt").write_text("From a, prompt.\n")
    assert prog.load("x", [first, second]).path == first / "x.prompt"


def test_load_by_name_not_found() -> None:
    with pytest.raises(ProgramError) as exc:
        prog.load("missing", [GOOD])
    assert str(exc.value) == (
        f"program 'missing' not found (searched: {GOOD / 'missing.prompt'},"
        f" {GOOD / 'missing.md'}, {GOOD / 'missing' / 'SKILL.md'})"
    )
    with pytest.raises(ProgramError, match=r"not found \(searched: no search directories\)"):
        prog.load("missing")


def test_load_by_name_broken_is_reported() -> None:
    with pytest.raises(ProgramError, match=r"bad_yaml\.prompt: malformed front matter"):
        prog.load("bad_yaml", [BROKEN])


def test_discover_good() -> None:
    problems: list[ProgramError] = []
    found = prog.discover([GOOD, DATA / "does-not-exist"], problems)
    assert problems == []
    assert [(p.name, p.kind) for p in found] == [
        ("bare", "markdown"),
        ("greet-skill", "skill"),
        ("jsonschema", "dotprompt"),
        ("nested", "dotprompt"),
        ("notes", "markdown"),
        ("plain", "dotprompt"),
        ("profile", "dotprompt"),
        ("roles", "dotprompt"),
    ]


def test_discover_reports_problems(tmp_path: Path) -> None:
    shutil.copy(GOOD / "plain.prompt", tmp_path / "plain.prompt")
    shutil.copy(BROKEN / "bad_yaml.prompt", tmp_path / "bad_yaml.prompt")
    shutil.copytree(SKILLS / "wrong-name", tmp_path / "wrong-name")
    (tmp_path / "notes.txt").write_text("not a program")
    (tmp_path / ".hidden.prompt").write_text("hidden")
    (tmp_path / "empty-folder").mkdir()
    problems: list[ProgramError] = []
    found = prog.discover([tmp_path], problems)
    assert [p.name for p in found] == ["plain"]
    assert sorted(str(e).split(":")[0] for e in problems) == [
        str(tmp_path / "bad_yaml.prompt"),
        str(tmp_path / "wrong-name" / "SKILL.md"),
    ]
    assert prog.discover([tmp_path]) == found  # problems are optional


def test_discover_first_dir_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "x.md").write_text("From a.\n")
    (second / "x.prompt").write_text("From b.\n")
    (second / "y.prompt").write_text("Y.\n")
    found = prog.discover([first, second])
    assert [p.path for p in found] == [first / "x.md", second / "y.prompt"]


def test_discover_broken_dir_all_problems() -> None:
    problems: list[ProgramError] = []
    found = prog.discover([BROKEN], problems)
    assert [p.name for p in found] == ["media"]  # loads; fails only when rendered
    assert len(problems) == len(list(BROKEN.iterdir())) - 1


def test_default_search_dirs(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "proj"
    assert prog.default_search_dirs(home, cwd) == [
        home / "programs",
        cwd / ".agents" / "skills",
    ]
