"""`llmos run` on the embedded model with the example programs, and pipes of runs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest

from llmos.kernel import program as program_mod
from tests.conftest import llmos_command
from tests.front.cli_harness import CLASSIFY, EXTRACT, HAIKU, JANE, SUMMARIZE, RunCli, ok_run, runs

# --- happy paths on the embedded model ------------------------------------------------------


@pytest.mark.slow
def test_run_summarize_from_stdin(run_cli: RunCli, home: Path) -> None:
    text = "The cat sat on the mat all day long, watching the birds in the garden."
    proc = run_cli("run", SUMMARIZE, input=text)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip()
    assert proc.stdout.endswith("\n")
    record = ok_run(home)
    assert record.status == "ok"
    assert record.program == "summarize"
    assert record.cpu == "embedded"
    assert record.inputs == {"input": text}
    assert record.response == proc.stdout.removesuffix("\n")
    assert 0 < record.completion_tokens <= 96


@pytest.mark.slow
def test_run_json_with_input_option(run_cli: RunCli, home: Path) -> None:
    text = "Rivers carry water from the mountains to the sea, shaping valleys on the way."
    proc = run_cli("run", SUMMARIZE, "-i", f"input={text}", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    result = json.loads(proc.stdout)
    assert {"run_id", "output", "usage", "program", "cpu", "finish_reason"} <= set(result)
    assert result["program"] == "summarize"
    assert result["cpu"] == "embedded"
    assert isinstance(result["output"], str) and result["output"].strip()
    assert result["finish_reason"] in ("stop", "length")
    record = ok_run(home, result["run_id"])
    assert record.inputs == {"input": text}
    assert record.response == result["output"]
    assert result["usage"] == {
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
    }
    assert result["usage"]["prompt_tokens"] > 20
    assert result["usage"]["completion_tokens"] > 0


@pytest.mark.slow
def test_run_verbose_reports_statistics_on_stderr(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", SUMMARIZE, "-v", input="Bees make honey from the nectar of flowers.")
    assert proc.returncode == 0, proc.stderr
    record = ok_run(home)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"llmos: run {record.id} on embedded: {record.prompt_tokens} ")


@pytest.mark.slow
def test_extract_returns_json_valid_against_its_schema(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", EXTRACT, input=JANE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    value = json.loads(proc.stdout)
    schema = program_mod.load(EXTRACT).output_schema
    assert schema is not None
    jsonschema.validate(value, schema)
    assert value["name"] == "Jane Doe"
    assert set(value) <= {"name", "email", "company"}


@pytest.mark.slow
def test_classify_returns_one_of_its_labels(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", CLASSIFY, "--json", input="I love this, it is wonderful!")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    schema = program_mod.load(CLASSIFY).output_schema
    assert schema is not None
    jsonschema.validate(result["output"], schema)
    assert result["output"]["label"] in ("positive", "negative", "neutral")
    assert result["output"] == {"label": "positive"}


@pytest.mark.slow
def test_skill_runs(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", HAIKU, "-i", "input=autumn")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip()
    record = ok_run(home)
    assert record.program == "haiku"
    assert record.extra is not None and record.extra["finish_reason"] == "stop"


@pytest.mark.slow
def test_pipes_compose(home: Path) -> None:
    """`llmos run extract < text | llmos run summarize`: two processes joined by a pipe."""
    env = {**os.environ, "LLMOS_HOME": str(home)}
    for key in ("LLMOS_OPENAI_BASE_URL", "OPENAI_BASE_URL", "LLMOS_DEBUG"):
        env.pop(key, None)
    cmd = llmos_command()
    first = subprocess.Popen(
        [*cmd, "run", str(EXTRACT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    second = subprocess.Popen(
        [*cmd, "run", str(SUMMARIZE)],
        stdin=first.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert first.stdin is not None and first.stdout is not None and first.stderr is not None
    first.stdin.write(JANE.encode())
    first.stdin.close()
    first.stdout.close()  # only the second process reads it now
    try:
        out2, err2 = second.communicate(timeout=300)
        first.wait(timeout=300)
        err1 = first.stderr.read()
        first.stderr.close()
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert first.returncode == 0, err1.decode()
    assert second.returncode == 0, err2.decode()
    assert err1 == b"" and err2 == b""
    assert out2.decode().strip()
    records = {r.program: r for r in runs(home)}
    assert set(records) == {"extract", "summarize"}
    assert all(r.status == "ok" for r in records.values())
    extracted = records["extract"].response
    assert extracted is not None
    assert json.loads(extracted)["name"] == "Jane Doe"
    # summarize read exactly what extract printed (its reply plus the closing newline)
    assert records["summarize"].inputs == {"input": extracted + "\n"}
