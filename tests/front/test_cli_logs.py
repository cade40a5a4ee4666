"""`llmos logs`: a run's agent steps, the last reply (-r), filtering by model, `logs path`.

The runs are made in-process with the scripted CPU (so their steps are known exactly) and
the real `llmos` command reads them back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmos import params
from llmos.errors import StepLimitError
from llmos.hw.cpu.base import ToolCall
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.hw.dev.base import CallContext
from llmos.kernel.calls import Devices
from llmos.kernel.loop import run_process
from llmos.kernel.plugins import devices as builtin_devices
from llmos.kernel.program import load
from llmos.kernel.syscall import SyscallTable, grants_for
from llmos.store.log import Log
from tests.conftest import RunCli

PROGRAM = """---
name: agent
description: test agent
tools: [calc]
llmos.max_steps: 2
---
{{role "user"}}
{{input}}
"""


def _calc(expression: str) -> ToolCall:
    return ToolCall(id="c1", name="calc", arguments=json.dumps({"expression": expression}))


@pytest.fixture
def logged(home: Path, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "agent.prompt"
    path.write_text(PROGRAM)
    program = load(path)
    table = SyscallTable(builtin_devices())
    devices = Devices(
        table, grants_for(program.tools, {}, table.devices, "agent"), CallContext(root=tmp_path)
    )
    ids: dict[str, str] = {}
    try:
        with Log.open(home / params.LOG_DB_NAME) as log:
            ok = run_process(
                program,
                {"input": "17 times 23?"},
                ScriptedCPU([[_calc("17*23")], "It is 391."]),
                log,
                devices=devices,
            )
            ids["ok"] = ok.run_id
            with pytest.raises(StepLimitError):
                run_process(
                    program,
                    {"input": "loop"},
                    ScriptedCPU([[_calc("1+1")], [_calc("2+2")]]),
                    log,
                    devices=devices,
                    on_run=lambda run_id: ids.__setitem__("failed", run_id),
                )
    finally:
        table.close()
    return ids


def test_logs_shows_a_runs_steps(run_cli: RunCli, logged: dict[str, str]) -> None:
    proc = run_cli("logs", logged["ok"])
    assert proc.returncode == 0, proc.stderr
    assert "--- steps\n" in proc.stdout
    assert (
        'step 1: calc({"expression": "17*23"}) -> ok: {"exact": true, "result": "391"}'
        in proc.stdout
    )
    assert "step 2: answer (3 tokens)" in proc.stdout
    as_json: dict[str, Any] = json.loads(run_cli("logs", logged["ok"], "--json").stdout)
    assert [s["kind"] for s in as_json["steps"]] == ["syscall", "text"]
    assert as_json["steps"][0]["result"] == {"result": "391", "exact": True}


def test_a_failed_tool_using_run_shows_its_steps_and_tokens(
    run_cli: RunCli, logged: dict[str, str]
) -> None:
    as_json = json.loads(run_cli("logs", logged["failed"], "--json").stdout)
    assert as_json["status"] == "failed" and as_json["error_kind"] == "step_limit"
    assert as_json["prompt_tokens"] > 0
    assert [s["arguments"] for s in as_json["steps"]] == [
        '{"expression": "1+1"}',
        '{"expression": "2+2"}',
    ]


def test_logs_reply_prints_the_last_reply(run_cli: RunCli, logged: dict[str, str]) -> None:
    proc = run_cli("logs", "-r", "--status", "ok")
    assert (proc.returncode, proc.stdout) == (0, "It is 391.\n")
    assert run_cli("logs", logged["ok"], "-r").stdout == "It is 391.\n"


def test_logs_filters_by_model(run_cli: RunCli, logged: dict[str, str]) -> None:
    rows = json.loads(run_cli("logs", "--model", "scripted", "--json").stdout)
    assert sorted(r["id"] for r in rows) == sorted(logged.values())
    assert json.loads(run_cli("logs", "--model", "embedded", "--json").stdout) == []


def test_logs_path_prints_the_database(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("logs", "path")
    assert (proc.returncode, proc.stdout) == (0, f"{home / params.LOG_DB_NAME}\n")
