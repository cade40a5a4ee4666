"""Scheduling processes: on the embedded CPU, and through the Gate in front of a remote CPU."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from llmos import params
from llmos.hw.cpu.llama import EmbeddedCPU
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel.boot import System
from llmos.kernel.core import Kernel
from llmos.kernel.proc import State
from llmos.kernel.sched.dispatch import PolicyDispatcher
from tests.kernel.kernel_harness import STORY_TOKENS, TOPICS, PacedCPU, reference, wait_for

# --- scheduling on the embedded CPU ----------------------------------------------------------


@pytest.mark.slow
def test_round_robin_with_one_slot_preempts_and_stays_exact(
    make_kernel: Callable[..., Kernel], cpu: EmbeddedCPU
) -> None:
    expected = [reference(make_kernel, "story", t) for t in TOPICS]
    assert all(len(e) > 0 for e in expected)
    before = cpu.stats()
    kernel = make_kernel(policy="rr", max_resident=1)
    procs = [kernel.spawn("story", {"input": t}) for t in TOPICS]
    assert isinstance(cpu.dispatcher, PolicyDispatcher)  # set on first use
    assert cpu.dispatcher.policy is kernel.policy and cpu.dispatcher.max_resident == 1
    for p in procs:
        kernel.wait(p.pid, timeout=180)
    after = cpu.stats()
    assert [p.exit_status for p in procs] == ["ok", "ok", "ok"]
    assert [p.entity.generated for p in procs] == [STORY_TOKENS] * 3
    assert after["preemptions"] - before["preemptions"] > 0
    assert after["restores"] - before["restores"] > 0
    assert [p.text for p in procs] == expected


@pytest.mark.slow
def test_processes_of_one_program_share_the_prompt_prefix(
    make_kernel: Callable[..., Kernel], cpu: EmbeddedCPU
) -> None:
    kernel = make_kernel(policy="priority")
    before = cpu.stats()["prefix_shared_tokens"]
    first = kernel.spawn("story", {"input": TOPICS[0]})
    assert wait_for(lambda: len(first.output) >= 1)  # its prompt is in KV now
    rest = [kernel.spawn("story", {"input": TOPICS[0]}) for _ in range(3)]
    for p in [first, *rest]:
        kernel.wait(p.pid, timeout=180)
        assert p.exit_status == "ok"
    assert cpu.stats()["prefix_shared_tokens"] - before > 0


def test_add_cpu_schedules_an_embedded_cpu_by_the_kernel_policy(
    make_kernel: Callable[..., Kernel], cpu: EmbeddedCPU, system: System
) -> None:
    kernel = make_kernel(policy="rr", max_resident=1)
    kernel.add_cpu(cpu)
    assert isinstance(cpu.dispatcher, PolicyDispatcher)
    assert (cpu.dispatcher.policy, cpu.dispatcher.max_resident) == (kernel.policy, 1)
    assert cpu.swap_dir == system.home / params.SWAP_DIR_NAME


# --- the remote path: a Gate in front of a CPU that does not batch ---------------------------


def test_remote_gate_runs_one_request_at_a_time(make_kernel: Callable[..., Kernel]) -> None:
    kernel = make_kernel(remote_in_flight=1)
    paced = PacedCPU("one two three four five", "six seven eight nine ten", delay=0.03)
    kernel.add_cpu(paced)
    procs = [kernel.spawn("echo", model="scripted") for _ in range(2)]
    for p in procs:
        kernel.wait(p.pid, timeout=30)
    assert [p.exit_status for p in procs] == ["ok", "ok"]
    assert sorted(p.text for p in procs) == ["one two three four five", "six seven eight nine ten"]
    assert paced.max_active == 1
    (_, e1), (s2, _) = sorted(paced.spans)
    assert e1 <= s2


def test_remote_gate_with_two_in_flight_overlaps(make_kernel: Callable[..., Kernel]) -> None:
    kernel = make_kernel(remote_in_flight=2)
    paced = PacedCPU("one two three four five", "six seven eight nine ten", delay=0.05)
    kernel.add_cpu(paced)
    procs = [kernel.spawn("echo", model="scripted") for _ in range(2)]
    for p in procs:
        kernel.wait(p.pid, timeout=30)
    assert [p.exit_status for p in procs] == ["ok", "ok"]
    assert paced.max_active == 2


def test_remote_kill_while_queued_at_the_gate(make_kernel: Callable[..., Kernel]) -> None:
    kernel = make_kernel(remote_in_flight=0)  # nothing is ever granted
    kernel.add_cpu(ScriptedCPU(["never"]))
    proc = kernel.spawn("echo", model="scripted")
    time.sleep(0.05)
    assert proc.state == State.RUNNABLE
    kernel.kill(proc.pid)
    kernel.wait(proc.pid, timeout=10)
    assert (proc.exit_status, proc.error) == ("killed", "killed before it started")
    assert proc.text == ""


def test_a_process_killed_at_the_gate_is_in_the_log(
    make_kernel: Callable[..., Kernel], system: System
) -> None:
    kernel = make_kernel(remote_in_flight=0)
    kernel.add_cpu(ScriptedCPU(["never"]))
    proc = kernel.spawn("echo", model="scripted")
    time.sleep(0.05)
    kernel.kill(proc.pid)
    kernel.wait(proc.pid, timeout=10)
    assert proc.run_id is not None
    run = system.log.get_run(proc.run_id)
    assert run is not None and run.status == "cancelled"


def test_remote_stop_and_continue_at_the_gate(make_kernel: Callable[..., Kernel]) -> None:
    kernel = make_kernel(remote_in_flight=1)
    paced = PacedCPU("a b c d e f", "x y", delay=0.02)
    kernel.add_cpu(paced)
    first = kernel.spawn("echo", model="scripted")
    assert wait_for(lambda: paced.active == 1)
    second = kernel.spawn("echo", model="scripted")
    kernel.stop(second.pid)
    assert second.state == State.STOPPED
    kernel.wait(first.pid, timeout=10)
    time.sleep(0.1)
    assert second.alive and second.text == ""  # stopped waiters are passed over
    kernel.cont(second.pid)
    kernel.wait(second.pid, timeout=10)
    assert (first.text, second.text) == ("a b c d e f", "x y")


def test_remote_budget_counts_the_prompt_before_generating(
    make_kernel: Callable[..., Kernel], system: System
) -> None:
    kernel = make_kernel()
    scripted = ScriptedCPU(["a b c d e f g h"])
    kernel.add_cpu(scripted)
    program = system.load_program("echo")
    n_prompt = scripted.count_messages(program.render({}))
    assert n_prompt == 4  # "Say ok." is 2 words, +2 per message
    proc = kernel.spawn(program, model="scripted", budget=n_prompt + 2)
    kernel.wait(proc.pid, timeout=10)
    assert proc.exit_status == "budget"
    assert (proc.text, proc.entity.tokens) == ("a b ", n_prompt + 2)


def test_remote_user_budget_stops_with_budget(make_kernel: Callable[..., Kernel]) -> None:
    kernel = make_kernel(user_budgets={"alice": 10})
    words = " ".join(f"w{i}" for i in range(30))
    kernel.add_cpu(ScriptedCPU([words, "fine thanks"]))
    first = kernel.spawn("echo", model="scripted", owner="alice")
    kernel.wait(first.pid, timeout=10)
    assert first.exit_status == "budget"
    # the prompt is charged first; the words fill the rest of alice's 10 tokens
    n_prompt = first.entity.prompt_tokens
    assert 0 < n_prompt < 10
    assert first.text.split() == [f"w{i}" for i in range(10 - n_prompt)]
    second = kernel.spawn("echo", model="scripted", owner="alice")
    kernel.wait(second.pid, timeout=10)
    # alice is already over budget: the CPU is never asked (no reply is consumed)
    assert (second.exit_status, second.text) == ("budget", "")
    bob = kernel.spawn("echo", model="scripted", owner="bob")
    kernel.wait(bob.pid, timeout=10)
    assert (bob.exit_status, bob.text) == ("ok", "fine thanks")
