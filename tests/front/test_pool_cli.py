"""A pool of CPUs through the real `llmos` command: `run --model pool/NAME` with a pool entry
that cannot load, an unknown pool, and `llmos migrate` moving a running process on a daemon
whose pool runs two embedded engines of one model, so the reply moves with its KV (`llmos top`
shows the move and each CPU's metering)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos.front.kclient import KernelClient
from tests.conftest import RunCli
from tests.front.kerneld_harness import (
    daemon_pid,
    error_line,
    info,
    llmos,
    make_home,
    ok,
    start,
    stop_and_check,
    until,
)

POOL = {
    "p": {
        "cpus": [
            {"name": "smol", "model": "embedded", "n": 2},
            {"name": "gone", "model": "/nonexistent/missing.gguf"},
        ]
    }
}


def write_config(home: Path) -> None:
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "config.json").write_text(json.dumps({"pools": POOL}), encoding="utf-8")


@pytest.mark.slow
def test_run_on_a_pool_whose_one_entry_cannot_load(run_cli: RunCli, home: Path) -> None:
    write_config(home)
    done = run_cli("run", "-p", "Say hello.", "-m", "pool/p", "-o", "maxOutputTokens", "8")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "Traceback" not in done.stderr


def test_an_unknown_pool_is_one_error_line(run_cli: RunCli, home: Path) -> None:
    write_config(home)
    done = run_cli("run", "-p", "Say hello.", "-m", "pool/nope")
    assert done.returncode == 5 and done.stdout == ""
    assert done.stderr == "llmos: error: unknown pool 'nope' (pools: p)\n"


def test_migrate_without_a_kernel_exits_13(run_cli: RunCli) -> None:
    done = run_cli("migrate", "1", "smol-1")
    assert done.returncode == 13 and done.stdout == ""
    assert done.stderr.startswith("llmos: error: kernel is not running")


def test_a_bad_pool_in_config_is_one_error_line(run_cli: RunCli, home: Path) -> None:
    (home / "config.json").write_text(json.dumps({"pools": {"p": {"cpus": []}}}))
    done = run_cli("run", "-p", "Say hello.", "-m", "pool/p")
    assert done.returncode == 10 and "Traceback" not in done.stderr
    assert done.stderr.startswith("llmos: error: ") and "pools.p must be an object" in done.stderr


@pytest.fixture
def pooled() -> Iterator[Path]:
    home = make_home()
    write_config(home)
    yield home
    if (home / "kernel.pid").exists():
        stop_and_check(home, daemon_pid(home))
    shutil.rmtree(home.parent, ignore_errors=True)


def pool_stats(home: Path) -> dict[str, Any]:
    stats: dict[str, Any] = KernelClient(home).request("top")["cpus"]["pool/p"]
    return stats


@pytest.mark.slow
def test_migrate_moves_a_running_process_to_another_cpu(pooled: Path) -> None:
    start(pooled)
    pid = int(ok(llmos(pooled, "run", "-d", "long.prompt", "-m", "pool/p")))
    until(lambda: info(pooled, pid)["generated_tokens"] >= 2, 120, "long to generate")
    ok(llmos(pooled, "stop", pid))
    until(lambda: info(pooled, pid)["state"] == "stopped", 30, "stopped")
    members = pool_stats(pooled)["members"]
    assert (
        members["gone"]["state"] == "failed to load" and "missing.gguf" in members["gone"]["error"]
    )
    (here,) = [n for n, m in members.items() if m["in_flight"] > 0]
    there = "smol-2" if here == "smol-1" else "smol-1"

    assert error_line(llmos(pooled, "migrate", pid, "nope"), 21) == (
        "pool 'p' has no CPU 'nope' (it has smol-1, smol-2, gone)"
    )
    assert ok(llmos(pooled, "migrate", pid, there)) == f"{pid}: on pool/p, moving to {there}\n"
    ok(llmos(pooled, "cont", pid))
    until(lambda: pool_stats(pooled)["migrations"] == 1, 60, "the move")
    until(lambda: pool_stats(pooled)["members"][there]["in_flight"] > 0, 30, "the new CPU")
    before = info(pooled, pid)["generated_tokens"]
    until(lambda: info(pooled, pid)["generated_tokens"] > before + 2, 60, "tokens after the move")
    stats = pool_stats(pooled)
    # both members run the same GGUF: the reply moved with its KV, nothing re-prefilled
    assert stats["kv_resumes"] == 1
    assert stats["members"][here]["kv_model"] == stats["members"][there]["kv_model"] is not None
    assert stats["members"][here]["in_flight"] == 0
    assert [(u["cpu"], u["generated_tokens"] > 0) for u in stats["usage"]] == [(here, True)]
    top = ok(llmos(pooled, "top", "--once"))
    assert "cpu pool/p: failovers 0 brownouts 0 migrations 1 kv_resumes 1" in top
    assert f"  {here} " in top and "gone: failed to load" in top

    # a process that does not run on a pool has nowhere to move
    other = int(ok(llmos(pooled, "run", "-d", "long.prompt")))
    assert error_line(llmos(pooled, "migrate", other, "smol-1"), 2) == (
        f"process {other} runs on embedded, not on a pool: nowhere to move it"
    )
    ok(llmos(pooled, "kill", pid, other))
