"""Processes on one shared kernel daemon, driven by client commands over its socket."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos import params
from llmos.errors import RequestError
from llmos.front import kerneld
from llmos.front.kclient import KernelClient
from llmos.kernel import api
from llmos.store.log import Log
from tests.front.kerneld_harness import (
    OWNER,
    PS_HEADER,
    error_line,
    get_run,
    info,
    llmos,
    make_home,
    ok,
    progs_dir,
    ps,
    raw,
    start,
    stop_and_check,
    until,
)


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
