"""`llmos logs`, `llmos models` and `llmos programs`."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.front.cli_harness import (
    EXIT_INPUT,
    EXIT_MODEL,
    HAIKU,
    SUMMARIZE,
    RunCli,
    error_line,
    runs,
    write,
)

# --- logs, models, programs --------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged(
    tmp_path_factory: pytest.TempPathFactory,
    llmos_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> tuple[Path, dict[str, str]]:
    """A home whose log holds two ok runs and one failed run; run ids by input word."""
    home = tmp_path_factory.mktemp("logged-home")
    ids: dict[str, str] = {}
    for word, text in [
        ("zebra", "The zebra herd crossed the river at dawn, followed by wildebeest."),
        ("volcano", "The volcano erupted last night and ash covered the nearby town."),
    ]:
        proc = llmos_cli("run", SUMMARIZE, "--json", input=text, home=home)
        assert proc.returncode == 0, proc.stderr
        ids[word] = json.loads(proc.stdout)["run_id"]
    failed = llmos_cli("run", SUMMARIZE, "--model", "nosuch", input="penguins", home=home)
    assert failed.returncode == EXIT_MODEL
    return home, ids


@pytest.mark.slow
def test_logs_lists_runs(
    logged: tuple[Path, dict[str, str]],
    llmos_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    home, ids = logged
    proc = llmos_cli("logs", home=home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    # newest first: the failed run, then volcano, then zebra
    assert " failed " in lines[0]
    assert lines[1].startswith(ids["volcano"][:12]) and " ok " in lines[1]
    assert lines[2].startswith(ids["zebra"][:12]) and " ok " in lines[2]
    failed_only = llmos_cli("logs", "--status", "failed", home=home)
    assert failed_only.returncode == 0
    assert len(failed_only.stdout.splitlines()) == 1
    assert "unknown model 'nosuch'" in failed_only.stdout


@pytest.mark.slow
def test_logs_query_finds_a_run_by_a_word_of_its_input(
    logged: tuple[Path, dict[str, str]],
    llmos_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    home, ids = logged
    proc = llmos_cli("logs", "-q", "wildebeest", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert [r["id"] for r in found] == [ids["zebra"]]
    text = llmos_cli("logs", "-q", "volcano", home=home)
    assert text.returncode == 0
    assert [line[:12] for line in text.stdout.splitlines()] == [ids["volcano"][:12]]
    none = llmos_cli("logs", "-q", "nonexistentword", home=home)
    assert none.returncode == 0
    assert none.stdout == ""


@pytest.mark.slow
def test_logs_shows_one_run_with_its_messages(
    logged: tuple[Path, dict[str, str]],
    llmos_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    home, ids = logged
    proc = llmos_cli("logs", ids["zebra"][:12], home=home)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"run {ids['zebra']}  summarize  on embedded  [ok]")
    assert "--- system\nYou write short summaries." in out
    assert "--- user\nSummarize this text:\n\nThe zebra herd crossed the river" in out
    assert "--- assistant\n" in out
    as_json = json.loads(llmos_cli("logs", ids["zebra"], "--json", home=home).stdout)
    assert as_json["id"] == ids["zebra"]
    assert [m["role"] for m in as_json["messages"]] == ["system", "user", "assistant"]
    assert as_json["messages"][-1]["content"] == as_json["response"]


@pytest.mark.slow
def test_logs_json_parses(
    logged: tuple[Path, dict[str, str]],
    llmos_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    home, ids = logged
    proc = llmos_cli("logs", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["status"] for r in rows] == ["failed", "ok", "ok"]
    assert [r["id"] for r in rows[1:]] == [ids["volcano"], ids["zebra"]]
    assert rows[0]["error_kind"] == "model"
    assert all(r["program"] == "summarize" for r in rows)
    limited = json.loads(llmos_cli("logs", "--json", "-n", "1", home=home).stdout)
    assert len(limited) == 1 and limited[0]["status"] == "failed"


def test_logs_unknown_run_id_exits_21(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("logs", "ffffffffffff")
    message = error_line(proc, 21)  # not found: its own code, not bad input's
    assert "'ffffffffffff'" in message
    assert str(home / "logs.db") in message
    assert runs(home) == []


def test_models_lists_embedded(run_cli: RunCli) -> None:
    proc = run_cli("models")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names[0] == "embedded"
    assert "openai/<model>" in names
    rows = json.loads(run_cli("models", "--json").stdout)
    embedded = next(r for r in rows if r["name"] == "embedded")
    assert embedded["kind"] == "embedded"
    assert embedded["detail"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert Path(embedded["detail"]).is_file()


def test_models_lists_aliases_from_config(run_cli: RunCli, home: Path) -> None:
    write(home / "config.json", json.dumps({"aliases": {"fast": "openai/gpt-x"}}))
    rows = json.loads(run_cli("models", "--json").stdout)
    assert {"name": "fast", "kind": "alias", "detail": "openai/gpt-x"} in rows


@pytest.mark.slow
def test_programs_lists_installed_programs_and_project_skills(
    run_cli: RunCli, home: Path, tmp_path: Path
) -> None:
    (home / "programs").mkdir()
    shutil.copy(SUMMARIZE, home / "programs" / "summarize.prompt")
    project = tmp_path / "project"
    shutil.copytree(HAIKU, project / ".agents" / "skills" / "haiku")
    proc = run_cli("programs", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    rows = [line.split(maxsplit=2) for line in proc.stdout.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [("haiku", "skill"), ("summarize", "dotprompt")]
    found = json.loads(run_cli("programs", "--json", cwd=project).stdout)
    paths = {p["name"]: Path(p["path"]) for p in found}
    assert paths["summarize"] == home / "programs" / "summarize.prompt"
    assert paths["haiku"].parent == project / ".agents" / "skills" / "haiku"
    # an installed program runs by its bare name from anywhere (name lookup only, no model)
    missing = run_cli("run", "summarize", cwd=project)
    assert missing.returncode == EXIT_INPUT
    assert str(home / "programs" / "summarize.prompt") in missing.stderr


def test_programs_warns_about_a_broken_program(run_cli: RunCli, home: Path, tmp_path: Path) -> None:
    (home / "programs").mkdir()
    write(home / "programs" / "broken.prompt", "---\nname: [unclosed\n---\nHi.\n")
    shutil.copy(SUMMARIZE, home / "programs" / "summarize.prompt")
    proc = run_cli("programs", cwd=tmp_path)
    assert proc.returncode == 0
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["summarize"]
    warnings = proc.stderr.splitlines()
    assert len(warnings) == 1
    assert warnings[0].startswith("llmos: warning: ")
    assert "broken.prompt" in warnings[0]


def test_programs_with_none_installed(run_cli: RunCli, home: Path, tmp_path: Path) -> None:
    proc = run_cli("programs", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert proc.stderr.startswith("llmos: no programs installed")
