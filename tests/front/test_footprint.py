"""What the `llmos` command loads: commands import only what they use.

`llmos --help` and the commands that only read the log or talk to the daemon must not import
the heavy parts (numpy, llama.cpp, the MCP SDK, Jinja2, the web stack): each is imported by the
code that needs it, inside the function. Checked in a fresh interpreter through the real entry
point, by the modules loaded when it exits. How long that takes is bench/footprint.py's job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmos import params
from llmos.errors import ModelError

HEAVY = ("numpy", "llama_cpp", "mcp", "jinja2", "fastapi", "starlette", "pydantic", "llm")

# Runs the console script's entry point, then prints the top-level packages it loaded.
PROBE = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})),
                              file=sys.stderr))
sys.argv = ["llmos", *sys.argv[1:]]
from llmos.front.cli import main
main()
"""


def loaded(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, set[str]]:
    full_env = {**os.environ, "LLMOS_HOME": str(home), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )
    last = proc.stderr.strip().splitlines()[-1]
    return proc.returncode, set(json.loads(last))


@pytest.mark.parametrize(
    "args",
    [("--help",), ("run", "--help"), ("logs", "-n", "1"), ("programs",)],
)
def test_light_commands_import_nothing_heavy(home: Path, args: tuple[str, ...]) -> None:
    code, modules = loaded(home, *args)
    assert code == 0
    assert "llmos" in modules and "click" in modules  # the probe saw the command run
    assert sorted(modules.intersection(HEAVY)) == []


def test_a_bad_kv_size_is_one_line_and_the_model_exit_code(home: Path) -> None:
    full_env = {**os.environ, "LLMOS_HOME": str(home), params.ENV_N_CTX: "lots"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "run", "-p", "hi"],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == ModelError.exit_code
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("[")]
    assert lines[0] == (
        f"llmos: error: {params.ENV_N_CTX}='lots': give a number of tokens from "
        f"{params.N_CTX_MIN} to {params.EMBEDDED_N_CTX}"
    )
    assert "Traceback" not in proc.stderr


def test_a_smaller_kv_cache_is_the_window_the_cpu_reports(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from llmos.config import load
    from llmos.kernel import cpus

    monkeypatch.setenv(params.ENV_N_CTX, "1024")
    monkeypatch.setattr(cpus, "_cache", {})
    cpu = cpus.resolve("embedded", load(tmp_path))
    try:
        assert cpu.n_ctx == 1024
    finally:
        cpu.close()
