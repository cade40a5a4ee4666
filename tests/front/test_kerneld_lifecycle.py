"""The kernel daemon's life: clients without it, start, status, stop, settings, a crash."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos.store.log import pid_alive
from tests.front.kerneld_harness import (
    NOT_RUNNING,
    OWNER,
    daemon_pid,
    error_line,
    get_run,
    info,
    llmos,
    make_home,
    ok,
    ps,
    start,
    stop_and_check,
    until,
)


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
