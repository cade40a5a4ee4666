"""What the `llmos` command-line tests (`test_cli_exit_codes.py`, `test_cli_run.py`,
`test_cli_listings.py`) share: the example programs, the exit codes, and checks of a failed
command's error line and of the log.

Every failure must come out as exactly one line `llmos: error: <message>` on stderr, never a
traceback, with the exit code `llmos.errors` documents, and must leave the log consistent: the
failed run recorded as 'failed' with the error's kind, and no row left 'running'. The happy
paths run the real embedded model (SmolLM2-135M) and the example programs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmos.store.log import Log
from llmos.store.runrecord import RunRecord

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SUMMARIZE = EXAMPLES / "summarize.prompt"
EXTRACT = EXAMPLES / "extract.prompt"
CLASSIFY = EXAMPLES / "classify.prompt"
HAIKU = EXAMPLES / "skills" / "haiku"
DATA = Path(__file__).resolve().parents[1] / "data" / "cli"

EXIT_USAGE = 2
EXIT_PROGRAM = 3
EXIT_INPUT = 4
EXIT_MODEL = 5
EXIT_BACKEND = 6
EXIT_OUTPUT = 7
EXIT_CONTEXT = 8

JANE = "Contact Jane Doe at jane@acme.com. She works for Acme Corp."

RunCli = Callable[..., "subprocess.CompletedProcess[str]"]


def error_line(
    proc: subprocess.CompletedProcess[str], code: int, *, empty_stdout: bool = True
) -> str:
    """The one error line of a failed command, after checking its shape and exit code."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("llmos: error: "), lines[0]
    if empty_stdout:
        assert proc.stdout == ""
    return lines[0].removeprefix("llmos: error: ")


def runs(home: Path) -> list[RunRecord]:
    log = Log.open(home / "logs.db")
    try:
        return log.list_runs(limit=0)
    finally:
        log.close()


def failed_run(home: Path, kind: str) -> RunRecord:
    """The single run in `home`'s log, checked to be 'failed' with `kind`."""
    records = runs(home)
    assert [r.status for r in records] == ["failed"], [(r.status, r.error) for r in records]
    record = records[0]
    assert record.error_kind == kind, (record.error_kind, record.error)
    assert record.error
    assert record.ended_at is not None
    return record


def assert_failed(
    proc: subprocess.CompletedProcess[str],
    home: Path,
    code: int,
    kind: str,
    *names: str,
    empty_stdout: bool = True,
) -> str:
    """One error line naming each of `names`, exit `code`, one failed run of `kind`."""
    message = error_line(proc, code, empty_stdout=empty_stdout)
    for name in names:
        assert name in message, (name, message)
    record = failed_run(home, kind)
    assert record.error == message
    return message


def ok_run(home: Path, run_id: str | None = None) -> RunRecord:
    records = runs(home)
    assert "running" not in [r.status for r in records]
    if run_id is None:
        assert len(records) == 1
        return records[0]
    matching = [r for r in records if r.id == run_id]
    assert len(matching) == 1
    return matching[0]


def write(path: Path, data: str | bytes) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def delta_event(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "x",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
