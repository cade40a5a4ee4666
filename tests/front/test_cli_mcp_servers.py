"""`llmos run` with MCP servers configured, through the real command: a run starts only the
servers its program declares, and one that crashes at start is reported as that server's
failure (exit 6, its name and its stderr), not as an unknown device."""

from __future__ import annotations

import json
import sys
from pathlib import Path

try:
    from tests.conftest import RunCli
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from conftest import RunCli  # type: ignore[no-redef,import-not-found,unused-ignore]

REPO = Path(__file__).resolve().parents[2]
EXIT_BACKEND = 6

HANG = "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(3600)\n"
CRASH = "import sys\nsys.exit('cannot open the frobnicator')\n"


def _configure(home: Path, tmp_path: Path) -> Path:
    (tmp_path / "hang.py").write_text(HANG)
    (tmp_path / "crash.py").write_text(CRASH)
    marker = tmp_path / "hang.pid"
    servers = {
        "hang": {
            "command": sys.executable,
            "args": [str(tmp_path / "hang.py"), str(marker)],
            "start_timeout_s": 120,
        },
        "crash": {"command": sys.executable, "args": [str(tmp_path / "crash.py")]},
    }
    (home / "config.json").write_text(json.dumps({"mcpServers": servers}))
    return marker


def test_a_calc_only_run_does_not_start_a_hanging_server(
    run_cli: RunCli, home: Path, tmp_path: Path
) -> None:
    marker = _configure(home, tmp_path)
    proc = run_cli("run", REPO / "examples" / "arithmetic.prompt", input="What is 6 times 7?")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "warning" not in proc.stderr
    assert not marker.exists(), "a server the program does not declare was started"


def test_a_server_crashing_at_start_is_that_servers_failure(
    run_cli: RunCli, home: Path, tmp_path: Path
) -> None:
    _configure(home, tmp_path)
    prog = tmp_path / "p.prompt"
    prog.write_text("---\nname: p\ntools: [crash.lookup]\n---\n{{input}}\n")
    proc = run_cli("run", prog, input="hi")
    assert proc.returncode == EXIT_BACKEND, proc.stderr
    assert proc.stderr.splitlines() == [
        f"llmos: error: {prog}: device 'crash.lookup': server crash exited during start-up"
        " (stderr: cannot open the frobnicator)"
    ]
    assert proc.stdout == ""
