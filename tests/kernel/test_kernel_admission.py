"""Admission control, programs, children, renice, and many spawns."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from llmos import params
from llmos.errors import AdmissionError, NoSuchProcessError, ProgramError
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel.boot import System
from llmos.kernel.core import Kernel
from llmos.kernel.proc import Process
from llmos.kernel.sched.policy import Entity, PriorityAging
from tests.kernel.kernel_harness import wait_for, wait_reaped

# --- admission, programs, children, renice ---------------------------------------------------


def test_admission_control(make_kernel: Callable[..., Kernel]) -> None:
    kernel = make_kernel(max_processes=2, remote_in_flight=0)
    kernel.add_cpu(ScriptedCPU())
    a = kernel.spawn("echo", model="scripted")
    kernel.spawn("echo", model="scripted")
    with pytest.raises(AdmissionError, match="process table full"):
        kernel.spawn("echo", model="scripted")
    kernel.kill(a.pid)
    wait_reaped(kernel, a)
    c = kernel.spawn("echo", model="scripted")
    assert c.alive
    with pytest.raises(AdmissionError):
        kernel.spawn("echo", model="scripted")


def test_spawn_right_after_wait_is_admitted(
    make_kernel: Callable[..., Kernel], monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = make_kernel(max_processes=1, remote_in_flight=0)
    kernel.add_cpu(ScriptedCPU())
    reaped = kernel.table.reaped

    def late_reaped(proc: Process) -> None:
        time.sleep(0.3)  # the exiting thread is descheduled right after proc.exit
        reaped(proc)

    monkeypatch.setattr(kernel.table, "reaped", late_reaped)
    a = kernel.spawn("echo", model="scripted")
    kernel.kill(a.pid)
    kernel.wait(a.pid, timeout=10)
    assert not a.alive
    kernel.spawn("echo", model="scripted")  # AdmissionError: table full


def test_missing_program_is_a_program_error_and_the_kernel_goes_on(
    make_kernel: Callable[..., Kernel],
) -> None:
    kernel = make_kernel()
    kernel.add_cpu(ScriptedCPU(["fine"]))
    with pytest.raises(ProgramError, match="program 'nope' not found"):
        kernel.spawn("nope", model="scripted")
    assert len(kernel.table) == 0
    proc = kernel.spawn("echo", model="scripted")
    kernel.wait(proc.pid, timeout=10)
    assert (proc.pid, proc.exit_status, proc.text) == (1, "ok", "fine")


def test_child_gets_at_most_the_parents_priority_and_budget(
    make_kernel: Callable[..., Kernel],
) -> None:
    kernel = make_kernel(remote_in_flight=0)  # every process stays queued, alive
    kernel.add_cpu(ScriptedCPU())
    parent = kernel.spawn("echo", model="scripted", priority=15, budget=100)
    parent.entity.charge(prompt=30)
    assert parent.budget_left == 70
    greedy = kernel.spawn("echo", model="scripted", parent=parent.pid, priority=30, budget=500)
    assert (greedy.priority, greedy.entity.budget) == (15, 70)
    assert (greedy.ppid, greedy.depth) == (parent.pid, 1)
    unset = kernel.spawn("echo", model="scripted", parent=parent.pid, priority=5)
    assert (unset.priority, unset.entity.budget) == (5, 70)
    modest = kernel.spawn("echo", model="scripted", parent=parent.pid, budget=10)
    assert modest.entity.budget == 10
    assert modest.priority == 15  # the program's default (20) capped at the parent's
    assert {p.pid for p in kernel.table.children(parent.pid)} == {
        greedy.pid,
        unset.pid,
        modest.pid,
    }
    with pytest.raises(NoSuchProcessError):
        kernel.spawn("echo", model="scripted", parent=9999)


def test_spawn_depth_is_bounded(make_kernel: Callable[..., Kernel]) -> None:
    kernel = make_kernel(remote_in_flight=0)
    kernel.add_cpu(ScriptedCPU())
    proc = kernel.spawn("echo", model="scripted")
    for depth in range(1, params.MAX_SPAWN_DEPTH + 1):
        proc = kernel.spawn("echo", model="scripted", parent=proc.pid)
        assert proc.depth == depth
    with pytest.raises(AdmissionError, match="spawn depth"):
        kernel.spawn("echo", model="scripted", parent=proc.pid)


def test_renice(make_kernel: Callable[..., Kernel]) -> None:
    kernel = make_kernel(remote_in_flight=0)
    kernel.add_cpu(ScriptedCPU())
    parent = kernel.spawn("echo", model="scripted", priority=25)
    child = kernel.spawn("echo", model="scripted", parent=parent.pid, priority=10)
    assert kernel.renice(parent.pid, 30).priority == 30
    assert kernel.ps()[0]["priority"] == 30
    assert kernel.renice(parent.pid, 1000).priority == params.MAX_PRIORITY
    assert kernel.renice(parent.pid, -5).priority == params.MIN_PRIORITY
    kernel.renice(parent.pid, 25)
    assert kernel.renice(child.pid, 20).priority == 20
    assert kernel.renice(child.pid, 35).priority == 25  # never above the parent
    with pytest.raises(NoSuchProcessError):
        kernel.renice(4242, 10)


def test_renice_reorders_the_gate(make_kernel: Callable[..., Kernel]) -> None:
    kernel = make_kernel(remote_in_flight=1, policy=PriorityAging(aging=0.0))
    kernel.add_cpu(ScriptedCPU(["first", "second"]))
    gate = kernel._gates["scripted"]
    hold = Entity(pid=-1)
    assert gate.acquire(hold)  # the gate is busy: both processes queue
    low = kernel.spawn("echo", model="scripted", priority=10)
    high = kernel.spawn("echo", model="scripted", priority=15)
    assert wait_for(lambda: len(gate._waiting) == 2)
    kernel.renice(low.pid, 30)
    gate.release(hold)
    kernel.wait(low.pid, timeout=10)
    kernel.wait(high.pid, timeout=10)
    assert (low.text, high.text) == ("first", "second")


# --- scale -----------------------------------------------------------------------------------


def test_ten_thousand_spawns(make_kernel: Callable[..., Kernel], system: System) -> None:
    n = 10_000
    baseline = threading.active_count()
    kernel = make_kernel(max_processes=2 * n, remote_in_flight=n)
    scripted = ScriptedCPU()
    scripted.queue(*["ok"] * n)
    kernel.add_cpu(scripted)
    program = system.load_program("echo")
    started = time.perf_counter()
    procs = [kernel.spawn(program, model="scripted") for _ in range(n)]
    spawned = time.perf_counter()
    for p in procs:
        assert p.wait(timeout=300)
    done = time.perf_counter()
    print(f"\n{n} spawns: spawn loop {spawned - started:.1f}s, all exited {done - started:.1f}s")
    assert {p.exit_status for p in procs} == {"ok"}
    assert {p.text for p in procs} == {"ok"}
    assert len({p.pid for p in procs}) == n
    assert len(scripted.requests) == n
    assert wait_for(lambda: not kernel._threads, timeout=60)
    assert wait_for(lambda: threading.active_count() <= baseline + 2, timeout=60)
    assert len(kernel.table) == params.EXITED_KEEP  # older exited ones are forgotten
    assert kernel.ps(include_exited=False) == []
    assert system.log.count_runs() == n
