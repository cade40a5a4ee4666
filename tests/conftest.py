"""Shared fixtures: a private llmos home, the embedded CPU (loaded once), and a CLI runner.

- `home`: a fresh directory set as `$LLMOS_HOME` for the test (monkeypatched), as a Path.
- `embedded`: one `EmbeddedCPU` for the whole session (the model loads in ~0.5 s; tests share
  it and must leave it idle: every generation drained or closed).
- `run_cli(*args, input=None, env=None, cwd=None)`: runs the installed `llmos` console script
  in a subprocess with the test's home, stdin given explicitly (text, bytes, or nothing at all)
  and a timeout; returns a CompletedProcess with `stdout` / `stderr` as text.
- `llmos_cli`: the same runner without a bound home, for fixtures wider than one test.

The subprocess environment drops the OpenAI settings and LLMOS_DEBUG of the caller's shell, so
a developer's configuration never leaks into a test. The suite runs the embedded model in its
shipped format (LLMOS_EMBEDDED_QUANT=q4_1 unless set): expected outputs are that file's, and a
fresh home would otherwise convert the weights per machine kind (that choice has its own tests
in tests/hw/cpu/test_weights.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path

CLI_TIMEOUT_S = 300
os.environ.setdefault("LLMOS_EMBEDDED_QUANT", "q4_1")
_SCRUBBED_ENV = (
    "LLMOS_HOME",
    "LLMOS_DEBUG",
    "LLMOS_OPENAI_BASE_URL",
    "LLMOS_OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
)


def llmos_command() -> list[str]:
    """The installed console script, or the same entry point through this interpreter."""
    script = shutil.which("llmos")
    if script is not None:
        return [script]
    return [sys.executable, "-c", "from llmos.front.cli import main; main()"]


def run_llmos(
    *args: str | os.PathLike[str],
    home: Path,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = CLI_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run `llmos ARGS...` with `home` as LLMOS_HOME; stdout/stderr come back as text."""
    full_env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    full_env["LLMOS_HOME"] = str(home)
    full_env.update(env or {})
    data = input.encode("utf-8") if isinstance(input, str) else input
    proc = subprocess.run(
        [*llmos_command(), *(str(a) for a in args)],
        input=data,
        stdin=subprocess.DEVNULL if data is None else None,
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", errors="replace"),
        proc.stderr.decode("utf-8", errors="replace"),
    )


RunCli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "llmos-home"
    path.mkdir()
    monkeypatch.setenv("LLMOS_HOME", str(path))
    return path


@pytest.fixture
def run_cli(home: Path) -> RunCli:
    def run(
        *args: str | os.PathLike[str],
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float = CLI_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        return run_llmos(*args, home=home, input=input, env=env, cwd=cwd, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def llmos_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_llmos


@pytest.fixture(scope="session")
def embedded() -> Iterator[EmbeddedCPU]:
    cpu = EmbeddedCPU(embedded_model_path(), name="embedded")
    try:
        yield cpu
    finally:
        cpu.close()
