"""The kernel daemon through real subprocesses: `llmos kernel start` runs a real daemon on the
embedded model, and every client command talks to it over its Unix socket.

Each test that starts a daemon stops it in a finalizer and asserts that its process is gone.
The machine these run on has few cores, so programs are tiny (a few tokens) and the long
program is always stopped or killed, never run to its end.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos import params
from llmos.errors import RequestError
from llmos.front import kerneld
from llmos.front.kclient import KernelClient
from llmos.kernel import api
from llmos.store.log import Log, pid_alive
from llmos.store.runrecord import RunRecord

try:
    from tests.conftest import run_llmos
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from conftest import run_llmos  # type: ignore[no-redef,import-not-found,unused-ignore]

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

# --- helpers -----------------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def kd() -> Iterator[Path]:
    """One daemon (default policy) shared by the tests below that need nothing special."""
    home = make_home()
    pid = start(home)
    try:
        yield home
    finally:
        stop_and_check(home, pid)
        shutil.rmtree(home.parent, ignore_errors=True)


@pytest.fixture
def fresh() -> Iterator[Path]:
    """A home of the test's own, for tests that start daemons with other settings."""
    home = make_home()
    yield home
    pid = daemon_pid(home) if (home / "kernel.pid").exists() else 0
    if pid:
        stop_and_check(home, pid)
    shutil.rmtree(home.parent, ignore_errors=True)


# --- no kernel ---------------------------------------------------------------------------------


def test_client_commands_without_a_kernel_exit_13(fresh: Path) -> None:
    fresh.mkdir(mode=0o700)
    for args in (
        ["ps"],
        ["kill", "1"],
        ["stop", "1"],
        ["wait", "1"],
        ["top", "--once"],
        ["logs", "-f", "1"],
        ["kernel", "status"],
        ["kernel", "stop"],
        ["run", "-d", "short.prompt"],
    ):
        assert error_line(llmos(fresh, *args), 13) == NOT_RUNNING, args
    assert sorted(os.listdir(fresh)) == []  # asking a kernel creates nothing
    # `llmos run` without -d needs no daemon.
    proc = llmos(fresh, "run", "tiny.prompt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() != ""


# --- start, status, stop ------------------------------------------------------------------------


def test_start_status_stop(fresh: Path) -> None:
    assert not fresh.exists()
    pid = start(fresh, "--policy", "fair", "--max-resident", "4", "--max-processes", "7")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700  # the daemon created it: owner only
    sock = fresh / "kernel.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600

    st = json.loads(ok(llmos(fresh, "kernel", "status", "--json")))
    assert st["pid"] == pid
    assert st["policy"] == "fair"
    assert st["max_resident"] == 4
    assert st["max_processes"] == 7
    assert st["counts"] == {}
    assert (st["live"], st["exited"], st["lost"]) == (0, 0, [])
    assert st["socket"] == str(sock)
    text = ok(llmos(fresh, "kernel", "status")).splitlines()
    assert text[0].startswith(f"kernel running: pid {pid}, up 0:0")
    assert text[0].endswith(", policy fair")
    assert text[1] == "processes: 0 live, 0 exited; limits 7 processes, 4 resident"

    again = llmos(fresh, "kernel", "start")
    assert error_line(again, 13) == f"kernel already running (pid {pid})"
    assert daemon_pid(fresh) == pid and pid_alive(pid)

    proc = llmos(fresh, "kernel", "stop")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == f"llmos: kernel stopped (pid {pid}, 0 processes killed)\n"
    assert not pid_alive(pid)
    assert not sock.exists()
    assert not (fresh / "kernel.pid").exists()
    assert error_line(llmos(fresh, "kernel", "status"), 13) == NOT_RUNNING


# --- processes on the shared daemon ------------------------------------------------------------


def test_run_detached_wait_and_follow(kd: Path) -> None:
    out = ok(llmos(kd, "run", "-d", "short.prompt"))
    pid = int(out)
    assert out == f"{pid}\n"
    followed = llmos(kd, "logs", "-f", pid)
    assert followed.returncode == 0, followed.stderr
    waited = llmos(kd, "wait", pid)
    assert waited.returncode == 0, waited.stderr
    p = info(kd, pid)
    assert (p["state"], p["exit_status"], p["owner"], p["program"]) == (
        "exited",
        "ok",
        OWNER,
        "short",
    )
    record = get_run(kd, p["run_id"])
    assert record.status == "ok"
    assert record.owner == OWNER
    assert record.response
    assert waited.stdout == record.response.rstrip("\n") + "\n"
    assert followed.stdout == waited.stdout
    wj = json.loads(ok(llmos(kd, "wait", pid, "--json")))
    assert wj["pid"] == pid and wj["text"] == record.response
    # A bare name is found in <home>/programs; piped stdin is the input named `input`.
    installed = kd / "programs" / "tiny.prompt"
    installed.parent.mkdir(exist_ok=True)
    shutil.copy(progs_dir(kd) / "tiny.prompt", installed)
    named = int(ok(llmos(kd, "run", "-d", "tiny", "--budget", "0", input="piped text")))
    assert named == pid + 1
    waited = llmos(kd, "wait", named)  # its prompt alone passes its budget: one line says so
    assert waited.returncode == 14 and waited.stdout == ""
    assert re.fullmatch(
        rf"llmos: error: process {named} ended budget: {re.escape(str(installed))}: the prompt "
        r"is \d+ tokens and the process's token budget is 0: nothing is left to generate with "
        r"\(a budget counts prompt and generated tokens: give one larger than the prompt plus "
        r"the reply\)\n",
        waited.stderr,
    ), waited.stderr
    p = info(kd, named)
    assert (p["exit_status"], p["budget"], p["budget_left"]) == ("budget", 0, 0)
    record = get_run(kd, p["run_id"])
    assert record.inputs == {"input": "piped text"}
    assert record.program_path == str(installed)


def test_stop_cont_renice_kill(kd: Path) -> None:
    pid = int(ok(llmos(kd, "run", "-d", "long.prompt", "--priority", "30")))
    until(lambda: info(kd, pid)["generated_tokens"] >= 2, 120, "long to generate")
    assert ok(llmos(kd, "stop", pid)) == ""
    until(lambda: info(kd, pid)["state"] == "stopped", 30, "stopped")
    frozen = info(kd, pid)["generated_tokens"]
    time.sleep(1.5)
    assert info(kd, pid)["generated_tokens"] == frozen  # a stopped process gets no tokens

    table = ok(llmos(kd, "ps")).splitlines()
    assert table[0] == PS_HEADER
    row = next(r for r in table[1:] if r.split()[0] == str(pid))
    assert row.split()[1:5] == ["0", OWNER, "stopped", "30"]
    assert row.split()[-1] == "long"

    assert ok(llmos(kd, "renice", 7, pid)) == f"{pid}: priority 30 -> 7\n"
    # An out-of-range priority is refused with one line (exit 2), never clamped.
    assert error_line(llmos(kd, "renice", 99, pid), 2) == (
        "Invalid value for 'PRIORITY': 99 is not in the range 0<=x<=39 (see 'llmos renice --help')"
    )
    assert info(kd, pid)["priority"] == 7
    assert error_line(llmos(kd, "run", "-d", "tiny.prompt", "--priority", "99"), 2) == (
        "Invalid value for '--priority': 99 is not in the range 0<=x<=39 (see 'llmos run --help')"
    )
    with pytest.raises(RequestError, match="priority"):  # the API refuses it too
        KernelClient(kd).request("renice", pid=pid, priority=40)
    assert ok(llmos(kd, "renice", 39, pid)) == f"{pid}: priority 7 -> 39\n"

    assert ok(llmos(kd, "cont", pid)) == ""
    until(lambda: info(kd, pid)["generated_tokens"] > frozen, 120, "tokens after cont")
    assert info(kd, pid)["state"] in ("running", "runnable")

    assert ok(llmos(kd, "kill", pid)) == ""
    waited = llmos(kd, "wait", pid)
    assert waited.returncode == 14
    assert waited.stderr == f"llmos: error: process {pid} ended killed: killed before it finished\n"
    p = info(kd, pid)
    assert (p["state"], p["exit_status"]) == ("exited", "killed")
    record = get_run(kd, p["run_id"])
    assert record.status == "cancelled"
    assert record.error_kind == "killed"
    assert record.response and waited.stdout == record.response.rstrip("\n") + "\n"
    assert record.completion_tokens == p["generated_tokens"]
    # Killing a process that has already exited is not an error: a note, exit 0.
    again = llmos(kd, "kill", pid)
    assert (again.returncode, again.stdout) == (0, "")
    assert again.stderr == f"llmos: process {pid} had already exited (killed)\n"
    # Other signals to a process that has exited, or any to one that never existed, exit 12.
    assert error_line(llmos(kd, "stop", pid), 12) == (f"process {pid} has already exited (killed)")
    assert error_line(llmos(kd, "kill", 99999), 12) == "no process with pid 99999"
    assert error_line(llmos(kd, "wait", 99999), 12) == "no process with pid 99999"


def test_missing_program_exit_3_kernel_continues(kd: Path) -> None:
    before = ps(kd)
    proc = llmos(kd, "run", "-d", "nope.prompt")
    assert error_line(proc, 3) == f"{progs_dir(kd) / 'nope.prompt'}: no such program file"
    bad_input = llmos(kd, "run", "-d", "short.prompt", "-i", "novalue")
    assert error_line(bad_input, 4) == "bad input 'novalue': expected key=value"
    assert ps(kd) == before  # nothing was spawned
    st = KernelClient(kd).request("status")
    assert st["ok"] is True


def test_follower_that_disconnects_does_not_disturb(kd: Path) -> None:
    client = KernelClient(kd)
    pid = client.spawn("short.prompt", cwd=str(progs_dir(kd)))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(120)
        sock.connect(str(kd / "kernel.sock"))
        sock.sendall(json.dumps({"op": "follow", "pid": pid}).encode() + b"\n")
        first = json.loads(sock.makefile("rb").readline())
    assert set(first) in ({"text", "next"}, {"done", "exit_status", "error", "process"})
    # Another follower that goes away before any output, and a waiter that gives up.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(kd / "kernel.sock"))
        sock.sendall(json.dumps({"op": "wait", "pid": pid}).encode() + b"\n")
    assert pid in ps(kd)  # the kernel still serves
    reply = client.request("wait", pid=pid, timeout=120)
    assert reply["timed_out"] is False
    assert reply["process"]["exit_status"] == "ok"
    assert reply["text"]
    assert "text" not in first or reply["text"].startswith(first["text"])
    # And a full follow through the client sees the whole output.
    assert "".join(client.follow(pid)) == reply["text"]
    assert client.last_exit is not None and client.last_exit["exit_status"] == "ok"


def test_a_large_detached_input_goes_through_the_spool(kd: Path) -> None:
    text = "A line of a long report about the kernel and its memory. " * 40_000  # 2.3 MB
    pid = int(ok(llmos(kd, "run", "-d", "digest.prompt", input=text)))
    assert llmos(kd, "wait", pid).returncode == 0
    p = info(kd, pid)
    assert p["exit_status"] == "ok" and p["pages_out"] > 0
    assert list((kd / "spool").iterdir()) == []  # read and deleted
    record = get_run(kd, p["run_id"])
    assert record.inputs["input"] == text


def test_malformed_requests_get_error_replies(kd: Path) -> None:
    cases: list[tuple[bytes, str]] = [
        (b"this is not json\n", "request is not valid JSON (Expecting value at char 0)"),
        (b"\xff\xfe\n", "request is not UTF-8 (bad byte at offset 0)"),
        (b"[1, 2]\n", "request must be a JSON object with an 'op'"),
        (
            b'{"op": "reboot"}\n',
            "unknown op 'reboot': use one of " + ", ".join([*api.OPS, *kerneld.DAEMON_OPS]),
        ),
        (b'{"op": "kill", "pid": "1"}\n', "'pid' must be an integer, got '1'"),
        (b'{"op": "kill"}\n', "kill needs 'pid'"),
        (b'{"op": "kill", "pid": 1, "signal": 9}\n', "kill takes no 'signal'"),
        (b'{"op": "ps", "all": "yes"}\n', "'all' must be true or false, got 'yes'"),
        (
            b'{"op": "wait", "pid": 1, "timeout": -1}\n',
            "'timeout' must not be negative, got -1",
        ),
        (b'{"op": "spawn"}\n', "spawn needs 'program'"),
        (
            b"x" * (1024 * 1024 + 10) + b"\n",
            "request longer than 1048576 bytes; refused",
        ),
        (
            b'{"op": "spawn", "program": "short.prompt", "stdin_file": "/etc/passwd"}\n',
            f"'stdin_file' must be a file in {(kd / 'spool').resolve()}, got '/etc/passwd'",
        ),
    ]
    for data, message in cases:
        reply = raw(kd, data)
        assert reply == {"ok": False, "error": message, "kind": "protocol", "exit_code": 2}
    # A client that connects and says nothing, or closes at once, is just dropped.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(kd / "kernel.sock"))
    assert raw(kd, b'{"op": "status"}\n')["ok"] is True
    ok(llmos(kd, "ps"))


def test_many_spawns_all_accounted_for(kd: Path) -> None:
    client = KernelClient(kd)
    cwd = str(progs_dir(kd))
    first = client.spawn("tiny.prompt", cwd=cwd, budget=0)
    pids = [first]
    pids += [client.spawn("tiny.prompt", cwd=cwd, budget=0) for _ in range(195)]
    pids += [client.spawn("tiny.prompt", cwd=cwd) for _ in range(4)]  # these really decode
    assert pids == list(range(first, first + 200))
    statuses = [client.request("wait", pid=p, timeout=300)["process"] for p in pids]
    assert [p["exit_status"] for p in statuses] == ["budget"] * 196 + ["ok"] * 4
    assert all(p["generated_tokens"] == 0 for p in statuses[:196])
    assert all(p["generated_tokens"] == 1 for p in statuses[196:])
    st = client.request("status")
    assert st["live"] == 0
    table = {p["pid"]: p for p in client.request("ps", all=True)["processes"]}
    assert all(table[p]["state"] == "exited" for p in pids)
    log = Log.open(kd / "logs.db")
    try:
        runs = {r.id: r for r in log.list_runs(program="tiny", limit=0)}
    finally:
        log.close()
    mine = [runs[p["run_id"]] for p in statuses]
    assert [r.status for r in mine] == ["failed"] * 196 + ["ok"] * 4  # prompts over budget
    assert {r.error_kind for r in mine[:196]} == {"budget"}


def test_top_once_shows_users_and_processes(kd: Path) -> None:
    pid = int(ok(llmos(kd, "run", "-d", "long.prompt")))
    try:
        ok(llmos(kd, "stop", pid))
        until(lambda: info(kd, pid)["state"] == "stopped", 60, "stopped")
        lines = ok(llmos(kd, "top", "--once")).splitlines()
        assert lines[0].startswith("llmos top - pid ")
        assert ", policy priority, 1 processes (1 stopped)" in lines[0]
        assert lines[1].startswith("cpu embedded: jobs 1 resident ")
        users = lines.index(f"{'USER':<16} {'TOKENS':>9} {'BUDGET':>9} {'PROCS':>5}")
        mine = next(ln for ln in lines[users + 1 :] if ln.startswith(OWNER))
        assert mine.split()[2:] == [str(params.POLICY_USER_TOKENS), "1"]  # the default policy
        assert int(mine.split()[1]) >= info(kd, pid)["prompt_tokens"]
        header = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("PID OWNER"))
        assert lines[header].split() == [
            "PID",
            "OWNER",
            "STATE",
            "PRI",
            "TOK/S",
            "TOKENS",
            "CTX",
            "BUDGET-LEFT",
            "PROGRAM",
        ]
        procs = lines[header + 1 :]
        assert len(procs) == 1
        assert procs[0].split()[:4] == [str(pid), OWNER, "stopped", "20"]
        assert procs[0].split()[-2:] == [str(info(kd, pid)["budget_left"]), "long"]
        assert info(kd, pid)["budget"] == params.POLICY_PROCESS_TOKENS  # the default policy
    finally:
        llmos(kd, "kill", pid)


# --- daemons with settings of their own ----------------------------------------------------------


def test_admission_control_then_sigterm(fresh: Path) -> None:
    dpid = start(fresh, "--max-processes", "2")
    a = int(ok(llmos(fresh, "run", "-d", "long.prompt")))
    ok(llmos(fresh, "stop", a))
    b = int(ok(llmos(fresh, "run", "-d", "long.prompt")))
    ok(llmos(fresh, "stop", b))
    assert (a, b) == (1, 2)
    refused = llmos(fresh, "run", "-d", "long.prompt")
    assert error_line(refused, 11) == "process table full: 2 live processes (limit 2)"
    ok(llmos(fresh, "kill", a))
    assert llmos(fresh, "wait", a).returncode == 14
    c = int(ok(llmos(fresh, "run", "-d", "long.prompt")))
    assert c == 3  # the refused spawn used no pid
    assert sorted(p for p, i in ps(fresh, all=False).items()) == [b, c]
    until(lambda: info(fresh, c)["run_id"], 60, "c to start its run")
    run_c = info(fresh, c)["run_id"]

    # SIGTERM: a clean shutdown, like `kernel stop`.
    os.kill(dpid, signal.SIGTERM)
    until(lambda: not pid_alive(dpid), 30, "the daemon to exit on SIGTERM")
    assert not (fresh / "kernel.sock").exists()
    assert not (fresh / "kernel.pid").exists()
    assert get_run(fresh, run_c).status == "cancelled"
    assert error_line(llmos(fresh, "ps"), 13) == NOT_RUNNING


def test_top_shows_a_running_process_rate_and_stop_counts_in_words(fresh: Path) -> None:
    """`top --once` (a first snapshot) shows a generating process's tokens/s, not 0.0; `kernel
    stop` says "1 process killed", not "1 processes"."""
    dpid = start(fresh)
    pid = int(ok(llmos(fresh, "run", "-d", "long.prompt")))
    until(lambda: info(fresh, pid)["generated_tokens"] >= 3, 120, "long to generate")
    lines = ok(llmos(fresh, "top", "--once")).splitlines()
    row = next(ln.split() for ln in lines if ln.split()[:1] == [str(pid)])
    assert row[2] == "running" and float(row[4]) > 0.0, row  # STATE, TOK/S
    stopped = llmos(fresh, "kernel", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stderr == f"llmos: kernel stopped (pid {dpid}, 1 process killed)\n"


def test_sigkilled_daemon_restarts_and_reports_lost(fresh: Path) -> None:
    old = start(fresh)
    pid = int(ok(llmos(fresh, "run", "-d", "long.prompt")))
    until(lambda: info(fresh, pid)["generated_tokens"] >= 1, 120, "long to generate")
    run_id = info(fresh, pid)["run_id"]
    os.kill(old, signal.SIGKILL)
    until(lambda: not pid_alive(old), 30, "the daemon to die")
    assert (fresh / "kernel.sock").exists()  # stale
    assert error_line(llmos(fresh, "ps"), 13) == NOT_RUNNING

    proc = llmos(fresh, "kernel", "start")
    assert proc.returncode == 0, proc.stderr
    new = int(proc.stdout)
    assert new != old and pid_alive(new)
    assert proc.stderr.splitlines() == [
        f"llmos: kernel started (pid {new}, policy priority)",
        f"llmos: kernel restarted; 1 process was lost: run {run_id[:12]} long (owner {OWNER})",
    ]
    st = json.loads(ok(llmos(fresh, "kernel", "status", "--json")))
    assert st["lost"] == [{"run_id": run_id, "program": "long", "owner": OWNER}]
    assert st["live"] == 0
    record = get_run(fresh, run_id)
    assert (record.status, record.error_kind) == ("failed", "lost")
    assert record.error == f"the kernel daemon (pid {old}) was killed before the process finished"
    assert ps(fresh) == {}
    # The new kernel works.
    assert int(ok(llmos(fresh, "run", "-d", "long.prompt"))) == 1
    ok(llmos(fresh, "kill", 1))
