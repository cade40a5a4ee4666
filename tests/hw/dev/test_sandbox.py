"""The python device's sandbox: limits, isolation, cleanup. Tests assert exact outcomes."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from llmos import params
from llmos.hw.dev import sandbox, sandboxjail
from llmos.hw.dev.base import CallContext, DeviceResult
from llmos.hw.dev.python import PythonDevice
from llmos.hw.dev.sandbox import Limits, run_sandboxed
from llmos.hw.dev.sandboxproc import session_processes


def run(code: str, root: Path | None = None, **options: Any) -> DeviceResult:
    return PythonDevice().call({"code": code}, CallContext(root=root, options=options))


def test_hello_world() -> None:
    r = run("print('hello, world')")
    assert r.ok
    assert r.output == {
        "stdout": "hello, world\n",
        "stderr": "",
        "exit_status": 0,
        "timed_out": False,
        "killed_reason": None,
    }


def test_exit_status_and_stderr() -> None:
    r = run("import sys\nprint('out')\nprint('bad', file=sys.stderr)\nsys.exit(3)")
    assert (r.output["stdout"], r.output["stderr"], r.output["exit_status"]) == (
        "out\n",
        "bad\n",
        3,
    )
    r = run("x = 1\n1/0")
    assert r.output["exit_status"] == 1
    assert r.output["stderr"].endswith("    1/0\n     ~^~\nZeroDivisionError: division by zero\n")
    assert 'File "<sandbox>", line 2, in <module>' in r.output["stderr"]


def test_fresh_private_directory_with_grants(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    (tmp_path / "secret.txt").write_text("no")
    code = "import os\nprint(sorted(os.listdir('.')), open('data.csv').read().split()[1])"
    r = run(code, tmp_path, files=["data.csv"])
    assert r.output["stdout"] == "['data.csv'] 1,2\n"
    r = run("open('x.txt', 'w').write('hi'); import os; print(os.listdir('.'))")
    assert r.output["stdout"] == "['x.txt']\n"
    assert run("import os; print(os.listdir('.'))").output["stdout"] == "[]\n"  # fresh each call
    assert run("print(1)", tmp_path, files=["../etc/passwd"]).error == (
        "python: '..' is not allowed in a path: '../etc/passwd'"
    )


def _bomb(code: str, wall_s: float) -> sandbox.SandboxResult:
    with sandbox.workspace(CallContext()) as space:
        path = space.run_dir / "main.py"
        path.write_text(code)
        return run_sandboxed("python", space, limits=Limits(wall_s=wall_s), code_path=path)


def test_fork_bomb_is_contained() -> None:
    started = time.monotonic()
    result = _bomb("import os\nwhile True:\n    os.fork()\n", 10.0)
    # RLIMIT_NPROC makes fork fail; the first process to see it exits, and with it the tree
    assert result.timed_out is False
    assert result.exit_status == 1
    assert "BlockingIOError: [Errno 11] Resource temporarily unavailable" in result.stderr
    assert time.monotonic() - started < 10
    assert session_processes(result.session) == []  # nothing left of the run
    assert run("print('alive')").output["stdout"] == "alive\n"  # and the machine still forks


def test_stubborn_fork_bomb_is_killed_at_the_wall_limit() -> None:
    started = time.monotonic()
    code = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    result = _bomb(code, 2.0)
    assert result.timed_out is True
    assert result.killed_reason == "wall-clock limit (2 s)"
    assert result.exit_status is None
    assert time.monotonic() - started < 8
    assert session_processes(result.session) == []
    assert run("print('alive')").output["stdout"] == "alive\n"


def test_infinite_loop_hits_cpu_limit() -> None:
    started = time.monotonic()
    r = run("while True: pass", cpu_s=1)
    assert r.output["killed_reason"] == "cpu limit (1 s)"
    assert r.output["exit_status"] == 152  # 128 + SIGXCPU
    assert r.output["timed_out"] is False
    assert time.monotonic() - started < 5


def test_sleep_hits_wall_limit() -> None:
    r = run("import time\nprint('start', flush=True)\ntime.sleep(60)", wall_s=1)
    assert r.output["timed_out"] is True
    assert r.output["killed_reason"] == "wall-clock limit (1 s)"
    assert r.output["stdout"] == "start\n"


def test_big_allocation_fails() -> None:
    r = run("x = bytearray(10 * 1024**3)")
    assert r.output["exit_status"] == 1
    assert r.output["stderr"].endswith("MemoryError\n")
    r = run("try:\n    x = b'a' * (10 * 1024**3)\nexcept MemoryError:\n    print('refused')")
    assert r.output["stdout"] == "refused\n"


def test_socket_is_refused() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        r = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
    assert r.output["exit_status"] == 1
    assert r.output["stderr"].endswith(
        "PermissionError: sandbox: network access is blocked (socket.getaddrinfo)\n"
    ), r.output["stderr"]


def test_network_namespace_without_audit_hook() -> None:
    """The namespace alone blocks the network: the hook is switched off for this test."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with sandbox.workspace(CallContext()) as space:
            code = space.run_dir / "main.py"
            code.write_text(
                "import socket\n"
                "try:\n"
                f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                "    print('connected')\n"
                "except OSError as e:\n"
                "    print(type(e).__name__, e.errno)\n"
            )
            result = run_sandboxed("python", space, limits=Limits(), code_path=code, audit=False)
    assert result.stdout == "ConnectionRefusedError 111\n"  # only the namespace's own loopback


def test_reading_outside_is_refused() -> None:
    r = run("print(open('/etc/passwd').read())")
    assert r.output["stderr"].endswith(
        "PermissionError: sandbox: reading outside the working directory is blocked "
        "(open '/etc/passwd')\n"
    )
    r = run("import os\nprint(os.listdir('..'))")
    assert (
        "reading outside the working directory is blocked (os.listdir '..')" in r.output["stderr"]
    )
    r = run("open('../escape.txt', 'w').write('x')")
    assert (
        "writing outside the working directory is blocked (open '../escape.txt')"
        in (r.output["stderr"])
    )
    r = run("import os\nos.symlink('/etc/passwd', 'p')\nprint(open('p').read())")
    assert "reading outside the working directory is blocked (open 'p')" in r.output["stderr"]
    r = run("import os\nos.system('cat /etc/passwd')")
    assert "sandbox: os.system is blocked" in r.output["stderr"]


def test_runs_as_a_fresh_unprivileged_uid() -> None:
    code = "import os\nprint(os.getuid(), os.getgid(), os.getgroups())"
    first, second = run(code).output["stdout"].split(), run(code).output["stdout"].split()
    assert first[0] == first[1] and first[2] == "[]"
    low = params.SANDBOX_UID_BASE
    assert low <= int(first[0]) < low + params.SANDBOX_UID_COUNT
    assert first[0] != second[0]


def test_huge_output_is_truncated_quickly() -> None:
    started = time.monotonic()
    r = run("import sys\nwhile True:\n    sys.stdout.write('x' * 1024 * 1024)")
    elapsed = time.monotonic() - started
    assert r.truncated is True
    assert r.output["killed_reason"] == f"output limit ({params.PYTHON_OUTPUT_BYTES} bytes)"
    assert r.output["stdout"] == "x" * params.PYTHON_OUTPUT_BYTES
    assert elapsed < 5
    r = run("print('y' * 100_000_000)", output_bytes=1000)
    assert r.output["stdout"] == "y" * 1000 and r.truncated


def test_options_only_lower_limits() -> None:
    ctx = CallContext(options={"cpu_s": 10_000, "wall_s": 2, "memory_bytes": "big"}, timeout_s=5)
    limits = Limits.from_context(ctx)
    assert limits.cpu_s == params.PYTHON_CPU_S
    assert limits.wall_s == 2
    assert limits.memory_bytes == params.PYTHON_MEMORY_BYTES
    assert Limits.from_context(CallContext(timeout_s=1.5)).wall_s == 1.5


def test_isolation_is_reported() -> None:
    layers = sandboxjail.isolation()
    assert layers[:2] == ["rlimits", "process-group kill"]
    assert {"network namespace", "pid namespace", "seccomp filter"} <= set(layers)


def test_missing_bubblewrap_refuses_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(params, "SANDBOX_BWRAP", "/nonexistent/bwrap")
    sandboxjail.unavailable.cache_clear()
    try:
        r = run("print(1)")
    finally:
        monkeypatch.undo()
        sandboxjail.unavailable.cache_clear()
    assert r.error == (
        "python sandbox unavailable: bubblewrap (bwrap) is not installed; "
        "install the Debian package bubblewrap"
    )
    assert run("print(1)").output["stdout"] == "1\n"


def test_the_seccomp_program_is_well_formed() -> None:
    prog = sandboxjail.seccomp_program("x86_64", (101,), (435,))
    assert len(prog) % 8 == 0
    assert len(prog) // 8 == 4 + 2 + 2 + 2 + 1  # arch check, x32, clone3, ptrace, allow
