"""A process's life on the embedded CPU: states, signals, budgets and the log."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from llmos import params
from llmos.errors import NoSuchProcessError
from llmos.hw.cpu.llama import EmbeddedCPU
from llmos.kernel.boot import System
from llmos.kernel.core import Kernel
from llmos.kernel.proc import State
from tests.kernel.kernel_harness import (
    STORY_TOKENS,
    TOPICS,
    record_states,
    reference,
    tokens_of,
    wait_for,
)

# --- lifecycle on the embedded CPU -----------------------------------------------------------


@pytest.mark.slow
def test_runnable_running_exited(make_kernel: Callable[..., Kernel], system: System) -> None:
    kernel = make_kernel(policy="fifo", max_resident=1)
    first = kernel.spawn("story", {"input": TOPICS[0]})
    assert wait_for(lambda: first.state == State.RUNNING)
    second = kernel.spawn("short", {"input": "Name a color."})
    assert second.state == State.RUNNABLE  # queued behind first (fifo, one slot)
    seen = record_states(second)
    assert seen[0] == State.RUNNABLE.value
    assert State.RUNNING.value in seen
    assert seen[-1] == State.EXITED.value
    assert seen.index(State.RUNNING.value) < len(seen) - 1
    kernel.wait(first.pid, timeout=120)
    assert (first.exit_status, second.exit_status) == ("ok", "ok")
    assert first.text and second.text
    assert first.entity.generated == STORY_TOKENS
    assert first.ended_at is not None and first.error is None
    # ps shows both, exited, with their counts
    rows = {row["pid"]: row for row in kernel.ps()}
    assert rows[first.pid]["state"] == "exited"
    assert rows[first.pid]["generated_tokens"] == STORY_TOKENS
    assert rows[second.pid]["exit_status"] == "ok"
    assert kernel.ps(include_exited=False) == []


@pytest.mark.slow
def test_a_finishing_process_goes_straight_from_running_to_exited(
    make_kernel: Callable[..., Kernel], system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = system.log
    finish_run = log.finish_run

    def slow_finish_run(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.3)  # a busy log (another llmos writing) takes this long or longer
        finish_run(*args, **kwargs)

    monkeypatch.setattr(log, "finish_run", slow_finish_run)
    kernel = make_kernel(policy="fifo", max_resident=1)
    proc = kernel.spawn("short", {"input": "Name a color."})
    seen = record_states(proc)
    assert seen[-2:] == [State.RUNNING.value, State.EXITED.value], seen


@pytest.mark.slow
def test_log_records_each_run_with_its_output(
    make_kernel: Callable[..., Kernel], system: System
) -> None:
    kernel = make_kernel(policy="rr", max_resident=4)
    procs = [kernel.spawn("short", {"input": q}, owner="alice") for q in ("Hi.", "Name a fruit.")]
    for p in procs:
        kernel.wait(p.pid, timeout=120)
        assert p.exit_status == "ok"
        run = system.log.get_run(p.run_id or "")
        assert run is not None
        assert (run.status, run.program, run.owner, run.cpu) == ("ok", "short", "alice", "embedded")
        assert run.response == p.text
        assert run.completion_tokens == p.entity.generated
        assert run.prompt_tokens == p.entity.prompt_tokens
    assert system.log.count_runs() == 2


@pytest.mark.slow
def test_stop_and_continue(make_kernel: Callable[..., Kernel], system: System) -> None:
    expected = reference(make_kernel, "story", TOPICS[0])
    kernel = make_kernel(policy="priority")
    proc = kernel.spawn("story", {"input": TOPICS[0]})
    assert wait_for(lambda: len(proc.output) >= 3)
    kernel.stop(proc.pid)
    assert proc.state == State.STOPPED
    time.sleep(0.1)  # a step in flight may still deliver one token
    frozen = proc.text
    time.sleep(0.3)
    assert proc.text == frozen  # no progress while stopped
    assert expected.startswith(frozen) and frozen != expected
    # another process runs meanwhile; the stopped one is preempted, its KV saved in RAM
    other = kernel.spawn("short", {"input": "Name a color."})
    assert wait_for(lambda: not proc.entity.resident)
    assert proc.info()["swapped"] == "ram"
    assert proc.state == State.STOPPED
    kernel.wait(other.pid, timeout=120)
    assert other.exit_status == "ok"
    assert proc.text == frozen
    kernel.cont(proc.pid)
    kernel.wait(proc.pid, timeout=120)
    assert proc.exit_status == "ok"
    assert proc.text == expected  # resumed exactly where it was


@pytest.mark.slow
def test_a_lone_stopped_process_is_preempted(
    make_kernel: Callable[..., Kernel], cpu: EmbeddedCPU
) -> None:
    kernel = make_kernel(policy="priority")
    proc = kernel.spawn("story", {"input": TOPICS[2]})
    assert wait_for(lambda: len(proc.output) >= 1)
    kernel.stop(proc.pid)
    try:
        assert wait_for(lambda: not proc.entity.resident, timeout=3.0)
        assert proc.info()["swapped"] == "ram"
    finally:
        kernel.kill(proc.pid)
        kernel.wait(proc.pid, timeout=60)


@pytest.mark.slow
def test_kill_while_running_keeps_the_output(
    make_kernel: Callable[..., Kernel], system: System
) -> None:
    expected = reference(make_kernel, "story", TOPICS[1])
    kernel = make_kernel(policy="priority")
    proc = kernel.spawn("story", {"input": TOPICS[1]})
    assert wait_for(lambda: len(proc.output) >= 2)
    assert proc.state == State.RUNNING
    kernel.kill(proc.pid)
    kernel.wait(proc.pid, timeout=60)
    assert proc.exit_status == "killed"
    assert proc.text and expected.startswith(proc.text) and proc.text != expected
    run = system.log.get_run(proc.run_id or "")
    assert run is not None
    assert (run.status, run.error_kind) == ("cancelled", "killed")
    assert run.response == proc.text
    with pytest.raises(NoSuchProcessError, match="already exited"):
        kernel.kill(proc.pid)


@pytest.mark.slow
def test_kill_while_stopped(make_kernel: Callable[..., Kernel], system: System) -> None:
    kernel = make_kernel(policy="priority")
    proc = kernel.spawn("story", {"input": TOPICS[2]})
    assert wait_for(lambda: len(proc.output) >= 1)
    kernel.stop(proc.pid)
    time.sleep(0.1)  # a step in flight may still deliver one token
    kept = proc.text
    time.sleep(0.2)
    assert proc.text == kept
    kernel.kill(proc.pid)
    kernel.wait(proc.pid, timeout=60)
    assert proc.exit_status == "killed"
    assert proc.state == State.EXITED
    assert proc.text == kept
    run = system.log.get_run(proc.run_id or "")
    assert run is not None and run.status == "cancelled"


@pytest.mark.slow
def test_kill_while_queued(make_kernel: Callable[..., Kernel], system: System) -> None:
    kernel = make_kernel(policy="fifo", max_resident=1)
    first = kernel.spawn("story", {"input": TOPICS[1]})
    assert wait_for(lambda: first.state == State.RUNNING)
    queued = kernel.spawn("story", {"input": TOPICS[0]})
    assert wait_for(lambda: kernel.cpu("embedded").stats()["jobs"] == 2)  # type: ignore[attr-defined]
    assert queued.state == State.RUNNABLE
    kernel.kill(queued.pid)
    kernel.wait(queued.pid, timeout=60)
    kernel.wait(first.pid, timeout=60)
    assert queued.exit_status == "killed"
    assert queued.text == "" and queued.entity.generated == 0
    assert first.exit_status == "ok"
    run = system.log.get_run(queued.run_id or "")
    assert run is not None and run.status == "cancelled"


@pytest.mark.slow
def test_a_process_over_its_budget_ends_with_budget(
    make_kernel: Callable[..., Kernel], system: System, cpu: EmbeddedCPU
) -> None:
    expected = reference(make_kernel, "story", TOPICS[0])
    n_prompt = tokens_of(cpu, system, "story", TOPICS[0])
    kernel = make_kernel()
    proc = kernel.spawn("story", {"input": TOPICS[0]}, budget=n_prompt + 5)
    kernel.wait(proc.pid, timeout=60)
    assert proc.exit_status == "budget"
    assert (proc.entity.prompt_tokens, proc.entity.generated) == (n_prompt, 5)
    assert proc.budget_left == 0
    assert proc.text and expected.startswith(proc.text)
    run = system.log.get_run(proc.run_id or "")
    assert run is not None
    assert (run.status, run.error_kind, run.response) == ("cancelled", "budget", proc.text)


@pytest.mark.slow
def test_a_prompt_larger_than_the_budget_generates_nothing(
    make_kernel: Callable[..., Kernel], system: System, cpu: EmbeddedCPU
) -> None:
    """A budget smaller than the prompt (but not 0) ends the process before its first token,
    with the line that says how many tokens the prompt takes, never a one-token answer."""
    n_prompt = tokens_of(cpu, system, "story", TOPICS[0])
    kernel = make_kernel()
    proc = kernel.spawn("story", {"input": TOPICS[0]}, budget=n_prompt // 2)
    kernel.wait(proc.pid, timeout=60)
    assert proc.exit_status == "budget"
    assert proc.text == "" and proc.entity.generated == 0
    assert "nothing is left to generate with" in (proc.error or "")
    assert proc.entity.prompt_tokens == 0 and proc.entity.exhausted


@pytest.mark.slow
def test_forget_prefixes_empties_the_prefix_cache(
    make_kernel: Callable[..., Kernel], cpu: EmbeddedCPU
) -> None:
    kernel = make_kernel(policy="fifo")
    proc = kernel.spawn("story", {"input": TOPICS[1]})
    kernel.wait(proc.pid, timeout=120)
    assert proc.exit_status == "ok"
    assert cpu.stats()["cached_prefixes"] >= 1  # its prompt is kept as a shared prefix
    cpu.forget_prefixes()
    assert cpu.stats()["cached_prefixes"] == 0
    assert cpu.engine.free_slots == cpu.engine.n_seq_max


@pytest.mark.slow
def test_user_budget_stops_that_users_processes(
    make_kernel: Callable[..., Kernel], system: System, cpu: EmbeddedCPU
) -> None:
    n_prompt = tokens_of(cpu, system, "story", TOPICS[1])
    kernel = make_kernel(user_budgets={"alice": n_prompt + 5})
    first = kernel.spawn("story", {"input": TOPICS[1]}, owner="alice")
    kernel.wait(first.pid, timeout=60)
    assert first.exit_status == "budget"
    assert first.entity.generated == 5
    second = kernel.spawn("short", {"input": "Hi."}, owner="alice")
    kernel.wait(second.pid, timeout=60)
    assert second.exit_status == "budget"
    assert (second.text, second.entity.generated) == ("", 0)
    bob = kernel.spawn("short", {"input": "Hi."}, owner="bob")
    kernel.wait(bob.pid, timeout=60)
    assert bob.exit_status == "ok"
    users = kernel.top()["users"]
    assert users["alice"]["tokens"] == n_prompt + 5
    assert users["alice"]["budget"] == n_prompt + 5
    assert users["bob"]["budget"] == params.POLICY_USER_TOKENS  # the default policy's
