"""`llmos devices` through the real command: every device with its call format (derived from
its schema), MCP servers listed without being started, started only when asked (`NAME`,
`--probe`), and stopped before the command returns; one-line errors (21 unknown, 6 a server
that cannot start)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

try:
    from tests.conftest import RunCli
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from conftest import RunCli  # type: ignore[no-redef,import-not-found,unused-ignore]

EXIT_BACKEND = 6
EXIT_NOT_FOUND = 21

ECHO = textwrap.dedent(
    """
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("echo")

    @app.tool(structured_output=False)
    def echo(text: str, times: int = 1) -> str:
        \"\"\"Return the text, repeated.\"\"\"
        return text * times

    if __name__ == "__main__":
        app.run()
    """
)
HANG = "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(3600)\n"
CRASH = "import sys\nsys.exit('cannot open the frobnicator')\n"


@pytest.fixture
def marker(home: Path, tmp_path: Path) -> Path:
    """Configure three servers (echo, hang, crash); the path where `hang` writes its pid."""
    for name, text in {"echo": ECHO, "hang": HANG, "crash": CRASH}.items():
        (tmp_path / f"{name}.py").write_text(text)
    pid_file = tmp_path / "hang.pid"
    servers = {
        "echo": {"command": sys.executable, "args": [str(tmp_path / "echo.py")]},
        "hang": {
            "command": sys.executable,
            "args": [str(tmp_path / "hang.py"), str(pid_file)],
            "start_timeout_s": 2,
        },
        "crash": {"command": sys.executable, "args": [str(tmp_path / "crash.py")]},
        "off": {"command": "nothing-here", "disabled": True},
    }
    (home / "config.json").write_text(json.dumps({"mcpServers": servers}))
    return pid_file


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_listing_shows_call_formats_and_starts_no_server(run_cli: RunCli, marker: Path) -> None:
    proc = run_cli("devices")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "fs" in rows and '{op: "read"|"write"|"list"|"search", path?: string' in rows["fs"]
    assert "content?: string" in rows["fs"]
    assert "{expression: string}" in rows["calc"]
    assert "off unless granted" in rows["shell"]
    assert "not started" in rows["hang.*"] and "not started" in rows["echo.*"]
    assert "disabled" in rows["off.*"]
    assert not marker.exists(), "listing started a server"
    listed = json.loads(run_cli("devices", "--json").stdout)
    fs = next(r for r in listed if r["name"] == "fs")
    assert fs["schema"]["properties"]["op"]["enum"] == ["read", "write", "list", "search"]
    assert not marker.exists()


def test_one_device_in_full(run_cli: RunCli, marker: Path) -> None:
    proc = run_cli("devices", "fs")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("fs (device, on)\n")
    assert '  call: fs {op: "read"|"write"|"list"|"search"' in proc.stdout
    assert '"enum": [' in proc.stdout
    assert not marker.exists()


def test_naming_a_server_starts_it_and_lists_its_tools(run_cli: RunCli, marker: Path) -> None:
    proc = run_cli("devices", "echo", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["echo.*"]["status"] == "running"
    assert rows["echo.echo"]["call"] == "{text: string, times?: integer}"
    assert rows["echo.echo"]["schema"]["required"] == ["text"]
    assert not marker.exists(), "naming one server started another"


def test_probe_lists_every_server_and_leaves_none_running(run_cli: RunCli, marker: Path) -> None:
    proc = run_cli("devices", "--probe", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["echo.*"]["status"] == "running" and "echo.echo" in rows
    assert rows["crash.*"]["status"] == "failed"
    assert "cannot open the frobnicator" in rows["crash.*"]["error"]
    assert rows["hang.*"]["status"] == "failed"
    assert "did not start within 2 s" in rows["hang.*"]["error"]
    assert rows["off.*"]["status"] == "disabled"
    pid = int(marker.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the hanging server outlived llmos devices"
    assert os.getpid() != pid


@pytest.mark.parametrize(
    ("name", "code", "message"),
    [
        ("nope", EXIT_NOT_FOUND, "no device or MCP server 'nope' (see llmos devices)"),
        ("echo.nope", EXIT_NOT_FOUND, "no device or MCP server 'echo.nope' (see llmos devices)"),
        (
            "crash",
            EXIT_BACKEND,
            "server crash exited during start-up (stderr: cannot open the frobnicator)",
        ),
    ],
)
def test_errors_are_one_line(
    run_cli: RunCli, marker: Path, name: str, code: int, message: str
) -> None:
    proc = run_cli("devices", name)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.splitlines() == [f"llmos: error: {message}"]
    assert proc.stdout == "" and not marker.exists()
