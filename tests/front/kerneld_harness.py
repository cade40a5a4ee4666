"""What the kernel daemon tests (`test_kerneld_*.py`, `test_pool_cli.py`) share: the test
programs, a short-pathed home, the `llmos` runner and its checks, starting and stopping a daemon.

These tests run real subprocesses: `llmos kernel start` runs a real daemon on the embedded
model, and every client command talks to it over its Unix socket. Each test that starts a
daemon stops it in a finalizer and asserts that its process is gone. The machine these run on
has few cores, so programs are tiny (a few tokens) and the long program is always stopped or
killed, never run to its end.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmos.front.kclient import KernelClient
from llmos.store.log import Log, pid_alive
from llmos.store.runrecord import RunRecord
from tests.conftest import run_llmos

OWNER = pwd.getpwuid(os.geteuid()).pw_name  # the kernel names the socket's peer by its uid
ENV = {"LOGNAME": "kdtester", "USER": "kdtester"}  # what a client could claim: ignored
NOT_RUNNING = "kernel is not running (start it with `llmos kernel start`)"
PS_HEADER = "   PID  PPID OWNER      STATE        PRI  TOKENS              CTX  BUDGET PROGRAM"

SHORT = """---
name: short
description: Says hello in a few tokens.
config:
  temperature: 0
  maxOutputTokens: 6
---
{{role "user"}}
Say hello to the world.
"""
LONG = """---
name: long
description: A story that runs far longer than any test waits.
config:
  temperature: 0.8
  maxOutputTokens: 4000
---
{{role "system"}}
You are a storyteller who writes very long stories.
{{role "user"}}
Write a very long story about a dragon and a castle, with many chapters.
"""
DIGEST = """---
name: digest
description: Reads a long input in a small context; one token out.
config:
  temperature: 0
  maxOutputTokens: 1
input:
  schema:
    input: string
llmos.context: 512
---
{{role "user"}}
{{input}}
"""
TINY = """---
name: tiny
description: One token.
config:
  temperature: 0
  maxOutputTokens: 1
---
{{role "user"}}
Say yes.
"""


def make_home() -> Path:
    """A short-pathed home (a Unix socket path must fit in 107 bytes) with the test programs."""
    base = Path(tempfile.mkdtemp(prefix="kd-", dir="/tmp"))
    home = base / "home"
    progs = base / "progs"
    progs.mkdir()
    for name, text in (("short", SHORT), ("long", LONG), ("tiny", TINY), ("digest", DIGEST)):
        (progs / f"{name}.prompt").write_text(text, encoding="utf-8")
    return home


def progs_dir(home: Path) -> Path:
    return home.parent / "progs"


def llmos(
    home: Path, *args: str | int, input: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return run_llmos(
        *(str(a) for a in args),
        home=home,
        input=input,
        env=ENV,
        cwd=progs_dir(home),
        timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The one error line of a failed command, after checking its shape and exit code."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("llmos: error: "), lines[0]
    assert proc.stdout == ""
    return lines[0].removeprefix("llmos: error: ")


def until(pred: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def ps(home: Path, *, all: bool = True) -> dict[int, dict[str, Any]]:
    out = ok(llmos(home, "ps", "--json", *(["--all"] if all else [])))
    return {p["pid"]: p for p in json.loads(out)}


def info(home: Path, pid: int) -> dict[str, Any]:
    procs = KernelClient(home).request("ps", all=True)["processes"]
    return next(p for p in procs if p["pid"] == pid)


def get_run(home: Path, run_id: str) -> RunRecord:
    log = Log.open(home / "logs.db")
    try:
        record = log.get_run(run_id)
    finally:
        log.close()
    assert record is not None
    return record


def daemon_pid(home: Path) -> int:
    return int((home / "kernel.pid").read_text().strip())


def start(home: Path, *args: str) -> int:
    out = ok(llmos(home, "kernel", "start", *args))
    pid = int(out.strip())
    assert pid == daemon_pid(home)
    assert pid_alive(pid)
    return pid


def stop_and_check(home: Path, pid: int) -> None:
    """Stop the daemon if it still runs; fail if its process outlives that."""
    if pid_alive(pid) and (home / "kernel.sock").exists():
        llmos(home, "kernel", "stop")
    deadline = time.monotonic() + 20
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"kernel daemon {pid} was still running after `kernel stop`")


def raw(home: Path, data: bytes) -> dict[str, Any]:
    """Send raw bytes on the socket; the daemon's one reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(home / "kernel.sock"))
        # The daemon stops reading an oversized request; its reply is still there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        reply = sock.makefile("rb").readline()
    value = json.loads(reply)
    assert isinstance(value, dict)
    return value
