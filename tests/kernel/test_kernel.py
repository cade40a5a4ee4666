"""The kernel in-process: spawn, signals, scheduling on the embedded CPU, the remote Gate path,
admission control, budgets and the log.

Real-model tests share one `EmbeddedCPU` (installed as the `embedded` CPU of every kernel by
putting it in `llmos.kernel.cpus`'s cache) and keep replies short. Greedy decoding with one resident
process per step (`max_resident=1`) is bit-exact, so a process preempted and restored must
produce exactly what it produces alone. Remote-CPU behaviour is tested with a `ScriptedCPU`
registered through `Kernel.add_cpu` and spawned with `model="scripted"`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import llmos.kernel.cpus as cpu_mod
from llmos import params
from llmos.errors import AdmissionError, NoSuchProcessError, ProgramError
from llmos.hw.cpu.base import Chunk, GenRequest
from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel.boot import System, boot
from llmos.kernel.core import Kernel
from llmos.kernel.proc import Process, State
from llmos.kernel.sched.dispatch import PolicyDispatcher
from llmos.kernel.sched.policy import Entity, PriorityAging

STORY_TOKENS = 40  # > the rr quantum (32), so rr preempts; <= 48 to stay quick
STORY = f"""---
config:
  maxOutputTokens: {STORY_TOKENS}
---
You are a storyteller. You always write long, detailed stories.
"""
SHORT = """---
config:
  maxOutputTokens: 8
---
You answer briefly.
"""
ECHO = """---
config:
  maxOutputTokens: 64
---
Say ok.
"""
TOPICS = (
    "Tell me a story about a dragon who learns to read.",
    "Tell me a story about a lighthouse keeper and a storm.",
    "Tell me a story about a robot that grows a garden.",
)
SETTLE_S = 30.0


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu() -> Iterator[EmbeddedCPU]:
    # One thread: on a loaded 2-core machine llama.cpp's spinning worker threads make two
    # threads far slower than one.
    cpu = EmbeddedCPU(embedded_model_path(), name="embedded", n_ctx=4096, n_threads=1)
    try:
        yield cpu
    finally:
        cpu.close()


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu: EmbeddedCPU) -> Iterator[System]:
    home = tmp_path / "home"
    programs = home / "programs"
    programs.mkdir(parents=True)
    (programs / "story.md").write_text(STORY)
    (programs / "short.md").write_text(SHORT)
    (programs / "echo.md").write_text(ECHO)
    monkeypatch.setenv("LLMOS_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(cpu_mod._cache, "embedded", cpu)
    system = boot()
    yield system
    system.log.close()


def wait_for(cond: Callable[[], bool], timeout: float = SETTLE_S, step: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def cpu_idle(cpu: EmbeddedCPU) -> bool:
    """No jobs, and every slot free or holding a finished prompt kept as a shared prefix."""
    stats = cpu.stats()
    kept = stats.get("cached_prefixes", 0)
    return stats["jobs"] == 0 and cpu.engine.free_slots + kept == cpu.engine.n_seq_max


@pytest.fixture
def make_kernel(system: System, cpu: EmbeddedCPU) -> Iterator[Callable[..., Kernel]]:
    kernels: list[Kernel] = []

    def make(**kwargs: Any) -> Kernel:
        kernel = Kernel(system, **kwargs)
        kernels.append(kernel)
        return kernel

    yield make
    for kernel in kernels:
        kernel.shutdown(timeout=SETTLE_S)
        assert wait_for(lambda k=kernel: not k._threads), "a process thread outlived shutdown"
    assert wait_for(lambda: cpu_idle(cpu)), (
        f"the embedded CPU was left busy: {cpu.stats()} free={cpu.engine.free_slots}"
    )


_references: dict[tuple[str, str], str] = {}


def reference(make_kernel: Callable[..., Kernel], program: str, text: str) -> str:
    """What `program` answers to `text` when it runs alone (one process in its kernel)."""
    key = (program, text)
    if key not in _references:
        kernel = make_kernel(policy="fifo", max_resident=1)
        proc = kernel.spawn(program, {"input": text})
        kernel.wait(proc.pid, timeout=120)
        assert proc.exit_status == "ok", proc.error
        _references[key] = proc.text
    return _references[key]


def wait_reaped(kernel: Kernel, proc: Process) -> None:
    """Wait until the process's thread is gone (exit is noted in the table before that)."""
    assert kernel.wait(proc.pid, timeout=120).alive is False
    assert wait_for(lambda: proc.pid not in kernel._threads)


def record_states(proc: Process, until: float = 120.0) -> list[str]:
    """Poll the process's state until it exits; the distinct states in the order seen."""
    seen: list[str] = []
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        state = proc.state.value
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == State.EXITED.value:
            break
        time.sleep(0.001)
    return seen


def tokens_of(cpu: EmbeddedCPU, system: System, program: str, text: str) -> int:
    return cpu.count_messages(system.load_program(program).render({"input": text}))


class PacedCPU(ScriptedCPU):
    """A ScriptedCPU that takes `delay` seconds per word and records when each request ran."""

    def __init__(self, *replies: Any, delay: float = 0.0) -> None:
        super().__init__(replies)
        self.delay = delay
        self.active = 0
        self.max_active = 0
        self.spans: list[tuple[float, float]] = []
        self._count = threading.Lock()

    def generate(self, request: GenRequest) -> Iterator[Chunk]:
        with self._count:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        start = time.monotonic()
        try:
            for chunk in super().generate(request):
                if chunk.text:
                    time.sleep(self.delay)
                yield chunk
        finally:
            with self._count:
                self.active -= 1
                self.spans.append((start, time.monotonic()))


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
