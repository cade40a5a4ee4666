"""`llmos logs off|on|status` through the real command: the setting lives in config.json, a
run made while logging is off leaves no trace in the log, and turning it on again journals the
next run. The runs use the scripted SSE fake of tests/servers.py as their CPU (fast and
deterministic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

try:
    from tests.conftest import RunCli
    from tests.servers import sse_server
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from conftest import RunCli  # type: ignore[no-redef,import-not-found,unused-ignore]
    from servers import sse_server  # type: ignore[no-redef,import-not-found,unused-ignore]

EXIT_CONFIG = 10
REPLY: list[dict[str, Any] | str] = [
    {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
    }
]


def test_logs_off_stops_journalling_and_on_resumes(
    run_cli: RunCli, home: Path, tmp_path: Path
) -> None:
    prog = tmp_path / "p.prompt"
    prog.write_text("---\nname: p\n---\nSay ok: {{input}}\n")
    assert run_cli("logs", "status").stdout == f"logging is on: 0 runs in {home / 'logs.db'}\n"
    off = run_cli("logs", "off")
    assert off.returncode == 0 and off.stdout == ""
    assert "logging is off" in off.stderr
    assert json.loads((home / "config.json").read_text()) == {"logging": False}
    assert run_cli("logs", "status").stdout.startswith("logging is off: 0 runs")
    with sse_server(REPLY) as server:
        env = {"LLMOS_OPENAI_BASE_URL": server.base_url}
        quiet = run_cli("run", prog, "--model", "openai/m", input="secret words", env=env)
        assert quiet.returncode == 0 and quiet.stdout == "ok\n", quiet.stderr
        assert run_cli("logs", "--json").stdout == "[]\n"
        found = run_cli("logs", "-q", "secret")
        assert found.returncode == 0 and found.stdout == ""
        on = run_cli("logs", "on")
        assert on.returncode == 0 and "logging is on" in on.stderr
        assert json.loads((home / "config.json").read_text()) == {}
        loud = run_cli("run", prog, "--model", "openai/m", input="plain words", env=env)
        assert loud.returncode == 0, loud.stderr
    (run,) = json.loads(run_cli("logs", "--json").stdout)
    assert run["status"] == "ok" and run["inputs"] == {"input": "plain words"}
    assert run_cli("logs", "status").stdout.startswith("logging is on: 1 run in")


def test_a_bad_logging_value_is_a_config_error(run_cli: RunCli, home: Path) -> None:
    (home / "config.json").write_text('{"logging": "no"}')
    proc = run_cli("logs", "status")
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr.splitlines() == [
        f"llmos: error: {home / 'config.json'}: 'logging' must be true or false"
    ]
