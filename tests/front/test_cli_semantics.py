"""The command line's semantics without surprises, through the real `llmos` command: usage
errors are one line, "not found" has its own exit code, a folder that is not a skill says what
it lacks, and the README's exit-code table names every code the command can return.

(Budgets, priorities and `kill` of an exited process need a daemon: `test_kerneld_procs.py`; shared
segments' newlines: `tests/store/test_shm.py`.)
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from llmos import errors, params

try:
    from tests.conftest import RunCli
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from conftest import RunCli  # type: ignore[no-redef,import-not-found,unused-ignore]

README = Path(__file__).resolve().parents[2] / "README.md"


def one_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("llmos: error: "), lines[0]
    return lines[0].removeprefix("llmos: error: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "No such option '--bogus' (see 'llmos --help')"),
        (["ps", "--bogus"], "No such option '--bogus' (see 'llmos ps --help')"),
        (["run"], "give either PROGRAM or -p PROMPT (see 'llmos run --help')"),
        (["nosuchcommand"], "No such command 'nosuchcommand' (see 'llmos --help')"),
        (
            ["logs", "--status", "maybe"],
            "Invalid value for '--status': 'maybe' is not one of 'running', 'ok', 'failed', "
            "'cancelled' (see 'llmos logs --help')",
        ),
        (
            ["run", "x.prompt", "--budget", "5"],
            "--priority and --budget need -d (a kernel process) (see 'llmos run --help')",
        ),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(
    run_cli: RunCli, args: list[str], message: str
) -> None:
    assert one_error(run_cli(*args), errors.EXIT_USAGE) == message


def test_help_and_version_still_work(run_cli: RunCli) -> None:
    helped = run_cli("run", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("Usage: llmos run ")
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("llmos, version ")


def test_not_found_has_its_own_exit_code(run_cli: RunCli) -> None:
    """A missing memory, page, segment or run is 21 (the request was well formed), not 4."""
    assert errors.NotFoundError.exit_code == 21 != errors.InputError.exit_code
    assert one_error(run_cli("memory", "forget", "m404"), 21).startswith("no memory m404 of ")
    assert one_error(run_cli("memory", "page", "p404"), 21).startswith("no page p404 of ")
    assert one_error(run_cli("shm", "read", "nope"), 21) == "no shared segment named 'nope'"
    assert one_error(run_cli("shm", "rm", "nope"), 21) == "no shared segment named 'nope'"
    assert one_error(run_cli("logs", "0123456789ab"), 21).startswith("no run with id ")
    # Bad input is still 4: a page id that is not one.
    assert one_error(run_cli("memory", "page", "x"), 4) == "bad page id 'x' (expected p<number>)"


def test_a_folder_without_skill_md_says_what_it_lacks(run_cli: RunCli, tmp_path: Path) -> None:
    folder = tmp_path / "examples"
    folder.mkdir()
    (folder / "hello.prompt").write_text("---\nname: hello\n---\nSay hello.\n")
    message = one_error(run_cli("run", "examples", cwd=tmp_path), 3)
    assert message == f"{folder}: not a program (a skill folder needs {params.SKILL_FILE})"


def test_the_readme_exit_code_table_covers_every_code() -> None:
    """Every code the command returns: each error class's, usage, interrupts, and `wait`'s."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Exit codes") :]
    table = {int(m) for m in re.findall(r"^\| (\d+) \|", section, flags=re.MULTILINE)}
    codes = {0, errors.EXIT_USAGE, errors.EXIT_INTERRUPTED, params.EXIT_PROCESS_NOT_OK}
    codes |= {params.EXIT_WAIT_TIMEOUT, *errors.EXIT_CODES.values()}
    assert codes <= table, sorted(codes - table)
    assert len(set(errors.EXIT_CODES.values()) - {errors.EXIT_USAGE}) == len(
        [c for c in errors.EXIT_CODES if errors.EXIT_CODES[c] != errors.EXIT_USAGE]
    )  # each error class has a code of its own
