"""The kernel: runs programs as processes that time-share the CPUs.

`Kernel.spawn` loads a program, creates a process in the table and starts it. Each process
runs in its own thread (`_main`), which renders its program and asks its CPU to generate;
the thread is blocked while the CPU's engine thread decodes, so a thread costs nothing while
its process waits. All the processes on the embedded CPU share its engine: every engine step
decodes one token for each resident process in one batch, and the kernel's policy (one
`sched.Policy` per kernel, shared by all CPUs) decides who is resident, through the
`sched.dispatch.PolicyDispatcher` each batching CPU is given. Remote CPUs, which do not batch,
get a `sched.Gate`: a limit on requests in flight, granted in the policy's order. CPUs are
told apart by their capabilities, never by class.

Signals: `kill` (the process ends at its next token, its output so far kept and logged),
`stop` / `cont` (a stopped process is preempted, its KV saved, and resumes where it was),
`renice` (a new priority, never above the parent's). `wait` blocks until exit. `approve` /
`deny` decide the syscall a process waits on in `waiting_approval` (`llmos.kernel.security.guard`,
which every syscall passes first and which writes the audit trail). `answer` resumes a process
waiting on a question (the `ask` device; the questions are `llmos.kernel.questions`); `off_cpu`
gives a remote CPU's place back while a process waits on a child or a person (the `call` and
`ask` devices).

Invariants:
- Every process that was spawned ends in the table as exited with a status (`ok`, `failed`,
  `killed`, `budget`) and, unless it failed before its program could be read, in the log.
- The kernel never waits on a process while holding a lock another process needs.

What this module does not do: talk to clients (see `llmos.front.kerneld`), decide batching
mechanics (see `llmos.hw.cpu.llama`), place jobs in a CPU's slots (see `llmos.kernel.sched`),
or build what a process is given at spawn: its pager, devices and guard (see
`llmos.kernel.spawn`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmos import params
from llmos.errors import (
    BudgetError,
    LlmosError,
    NoSuchProcessError,
    RequestError,
)
from llmos.hw.cpu.base import CPU
from llmos.kernel import plugins, recovery
from llmos.kernel import spawn as spawn_setup
from llmos.kernel.boot import System
from llmos.kernel.calls import Devices, Trace
from llmos.kernel.loop import run_process
from llmos.kernel.meter import Meter
from llmos.kernel.pool import PoolCPU
from llmos.kernel.proc import Process, ProcessTable, State
from llmos.kernel.program import Program
from llmos.kernel.questions import Questions
from llmos.kernel.reply import context_limit
from llmos.kernel.sched.dispatch import PolicyDispatcher
from llmos.kernel.sched.gate import Gate
from llmos.kernel.sched.policy import Policy
from llmos.kernel.security import principals
from llmos.kernel.security.guard import Approvals
from llmos.kernel.security.policy import UserPolicy, policy_for
from llmos.store.audit import AuditLog
from llmos.store.procs import ProcJournal


class Kernel:
    def __init__(
        self,
        system: System,
        *,
        policy: str | Policy = params.SCHED_POLICY,
        max_resident: int = params.MAX_RESIDENT,
        max_processes: int = params.MAX_PROCESSES,
        user_budgets: dict[str, int] | None = None,
        remote_in_flight: int = params.REMOTE_MAX_IN_FLIGHT,
        journal: ProcJournal | None = None,
    ) -> None:
        self.system = system
        self.policy = plugins.sched_policy(policy) if isinstance(policy, str) else policy
        self.max_resident = max_resident
        self.remote_in_flight = remote_in_flight
        self.table = ProcessTable(max_processes=max_processes, user_budgets=user_budgets)
        self._lock = threading.Lock()
        self._cpus: dict[str, CPU] = {}
        self._gates: dict[str, Gate] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._rates: dict[int, tuple[float, int]] = {}
        self.questions = Questions()  # the `ask`s processes wait on (kernel.questions)
        self.approvals = Approvals()  # calls waiting for `approve`/`deny` (security.guard)
        # Each owner's policy: the policy file (llmos.kernel.security.policy), read at every spawn.
        self.user_policy: Callable[[str], UserPolicy] = lambda owner: policy_for(
            self.system.home, owner
        )
        self._audit: AuditLog | None = None
        self.started_at = time.time()
        self.meter = Meter(self.table, lambda: self.system.log.usage)  # usage, per-day quota
        # The process journal (a long-lived kernel's: llmos.kernel.recovery); pids go on above it.
        self.journal = journal
        if journal is not None:
            self.table.continue_after(journal.max_pid())

    # --- CPUs ------------------------------------------------------------------------------------
    def cpu(self, spec: str | None) -> CPU:
        """The CPU for `spec` (one already under this kernel by that name, e.g. a parent's),
        configured for this kernel's scheduling on first use."""
        with self._lock:
            known = self._cpus.get(spec) if spec is not None else None
        if known is not None:
            return known
        cpu = self.system.cpu(spec)
        self.add_cpu(cpu)
        return cpu

    def add_cpu(self, cpu: CPU) -> None:
        """Put a CPU under this kernel's scheduling (once): a batching CPU gets a dispatcher
        applying the policy within the residency limit, and, if it can save KV, the swap
        directory; any other gets a Gate."""
        with self._lock:
            if cpu.name in self._cpus:
                return
            self._cpus[cpu.name] = cpu
            caps = cpu.capabilities
            if caps.batching:
                swap_dir = self.system.home / params.SWAP_DIR_NAME if caps.kv_state else None
                cpu.schedule(PolicyDispatcher(self.policy, self.max_resident), swap_dir)
            else:
                self._gates[cpu.name] = Gate(self.remote_in_flight, self.policy)

    # --- processes -------------------------------------------------------------------------------
    def spawn(
        self,
        program_ref: str | Program,
        inputs: dict[str, Any] | None = None,
        *,
        owner: str = "default",
        model: str | None = None,
        priority: int | None = None,
        budget: int | None = None,
        parent: int = 0,
        cpu: CPU | None = None,
        on_trace: Trace | None = None,
        pid: int | None = None,
        replay: list[str] | None = None,
    ) -> Process:
        """Start a process (on `cpu` if given, else the one `model` or the program names),
        within its owner's policy (`llmos.kernel.security.policy`): its budget, priority, devices
        and quotas are at most what the policy and, for a child, its parent allow.
        PolicyError/ProgramError/ModelError/AdmissionError if it cannot start."""
        principals.owner_name(owner)  # AccessError for a name that is not a valid owner
        user = self.user_policy(owner)  # PolicyError: nothing runs
        self.meter.check(owner, user.quota)  # QuotaError: the owner's tokens for today are used
        inputs = dict(inputs or {})
        program = (
            program_ref
            if isinstance(program_ref, Program)
            else self.system.load_program(program_ref)
        )
        if cpu is not None:
            self.add_cpu(cpu)
        elif model is not None and model in self._cpus:
            cpu = self._cpus[model]
        else:
            cpu = self.cpu(model or program.model)
        if budget is None and "budget" in program.llmos:
            budget = int(program.llmos["budget"])
        cap = user.budget.process_tokens
        budget = cap if budget is None else min(budget, cap)
        self.table.limit_account(owner, user.budget.user_tokens)
        proc = self.table.create(
            owner=owner,
            program=program.name,
            program_path=str(program.path),
            inputs=inputs,
            cpu=cpu.name,
            priority=min(program.priority if priority is None else priority, user.priority_max),
            budget=budget,
            parent=parent,
            max_descendants=user.quota.descendants,
            max_live=user.quota.max_processes,
            pid=pid,
        )
        if replay:  # a recovered process: its output so far, continued or reproduced first
            proc.output = list(replay)
            plain = not program.json_mode and not program.tools and not program.client_tools
            if plain and cpu.capabilities.continuation:
                proc.resume = "".join(replay)
            else:
                proc.replay = "".join(replay)
        if self.journal is not None:
            self._journal(proc, program, inputs, model)
        proc.context_limit = context_limit(program, cpu)
        try:
            proc.memory = spawn_setup.pager(self.system, program, proc, cpu)
            devices: Devices | None = spawn_setup.devices(self, program, proc, user)
            proc.devices = devices
        except LlmosError as exc:
            self.meter.record(proc)
            self.table.reaped(proc)
            proc.exit("failed", str(exc))
            raise
        proc.on_trace = _timeline(proc, on_trace)
        proc.entity.on_change = getattr(cpu, "wake", None)
        thread = threading.Thread(
            target=self._main,
            args=(proc, program, cpu),
            name=f"llmos-pid-{proc.pid}",
            daemon=True,
        )
        with self._lock:
            self._threads[proc.pid] = thread
        thread.start()
        return proc

    def _journal(
        self, proc: Process, program: Program, inputs: dict[str, Any], model: str | None
    ) -> None:
        """Record `proc` in the journal before it runs; if that fails, it never runs."""
        assert self.journal is not None
        try:
            self.journal.started(
                pid=proc.pid,
                ppid=proc.ppid,
                owner=proc.owner,
                program=proc.program,
                spec=recovery.spec_of(program, inputs, model),
                priority=proc.priority,
                budget=proc.entity.budget,
                created_at=proc.created_at,
            )
        except LlmosError as exc:
            self.table.reaped(proc)
            proc.exit("failed", str(exc))
            raise
        proc.journal = self.journal

    def recover(self) -> list[dict[str, Any]]:
        """Resume or report lost what a killed kernel left live (`llmos.kernel.recovery`)."""
        return recovery.recover(self)

    def _main(self, proc: Process, program: Program, cpu: CPU) -> None:
        gate = self._gates.get(cpu.name)
        status, error = "ok", None
        try:
            if gate is not None:
                if not gate.acquire(proc.entity):
                    status, error = "killed", "killed before it started"
                    self._log_unstarted(proc, program, cpu, error)
                    return
                proc.entity.resident = True  # holds one of the CPU's in-flight places
            result = run_process(
                program,
                proc.inputs,
                cpu,
                self.system.log,
                on_text=proc.append_output,
                owner=proc.owner,
                pid=os.getpid(),
                entity=proc.entity,
                on_run=lambda run_id: setattr(proc, "run_id", run_id),
                devices=proc.devices,
                prepare=lambda ctx: spawn_setup.prepare(self.system, proc, program, ctx),
                on_trace=proc.on_trace,
                resume=proc.resume,
            )
            proc.result = result
            if result.finish_reason == "cancelled":
                status, error = "killed", "killed before it finished"
            elif result.finish_reason == "budget":
                status, error = "budget", "token budget exhausted"
        except LlmosError as exc:
            proc.exception = exc
            status, error = ("killed", str(exc)) if proc.entity.killed else ("failed", str(exc))
            if isinstance(exc, BudgetError) and not proc.entity.killed:
                status = "budget"  # its prompt alone passed the budget; the error says so
        except Exception as exc:  # a bug must not take the kernel down with it
            status, error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        finally:
            if gate is not None:
                gate.release(proc.entity)
                proc.entity.resident = False
            if proc.diverged:
                status, error = "lost", recovery.DIVERGED
            self.meter.record(proc)  # its usage to the ledger, before waiters see the exit
            self.table.reaped(proc)  # before exit wakes waiters: a spawn after wait() fits
            proc.exit(status, error)
            with self._lock:
                self._threads.pop(proc.pid, None)
                self._rates.pop(proc.pid, None)

    # --- approvals and the audit trail (llmos.kernel.security.guard) ---------------------------
    def audit(self) -> AuditLog:
        """The home's audit trail, opened on first use (AuditError if it cannot be)."""
        with self._lock:
            if self._audit is None:
                self._audit = AuditLog.open(self.system.home / params.AUDIT_DB_NAME)
            return self._audit

    def approve(self, pid: int, by: str) -> Process:
        """Let the call process `pid` waits on run; NoSuchProcessError if it is not waiting."""
        proc = self._live(pid)
        self.approvals.decide(proc, True, by)
        return proc

    def deny(self, pid: int, by: str) -> Process:
        """Refuse the call process `pid` waits on; NoSuchProcessError if it is not waiting."""
        proc = self._live(pid)
        self.approvals.decide(proc, False, by)
        return proc

    def user_root(self, owner: str) -> Path:
        """The owner's private file namespace (`llmos.kernel.spawn.user_root`)."""
        return spawn_setup.user_root(self.system.home, owner)

    def _log_unstarted(self, proc: Process, program: Program, cpu: CPU, error: str) -> None:
        log = self.system.log
        run_id = log.start_run(
            program.name,
            cpu.name,
            proc.inputs,
            [],
            program_path=str(program.path),
            pid=os.getpid(),
            owner=proc.owner,
        )
        log.finish_run(run_id, status="cancelled", error_kind="killed", error=error)
        proc.run_id = run_id

    def kill(self, pid: int) -> Process:
        proc = self._live(pid)
        proc.entity.killed = True
        proc.entity.poke()
        self._wake_gates()
        return proc

    def stop(self, pid: int) -> Process:
        proc = self._live(pid)
        proc.entity.stopped = True
        proc.entity.poke()
        return proc

    def cont(self, pid: int) -> Process:
        proc = self._live(pid)
        proc.entity.stopped = False
        proc.entity.poke()
        self._wake_gates()
        return proc

    def renice(self, pid: int, priority: int) -> Process:
        proc = self._live(pid)
        priority = max(params.MIN_PRIORITY, min(params.MAX_PRIORITY, priority))
        if proc.ppid:
            with contextlib.suppress(NoSuchProcessError):
                priority = min(priority, self.table.get(proc.ppid).priority)
        proc.entity.priority = priority
        proc.entity.poke()
        return proc

    def migrate(self, pid: int, cpu: str) -> Process:
        """Move live process `pid` to CPU `cpu` of the pool it runs on (`llmos.kernel.pool`):
        RequestError when it does not run on a pool, NotFoundError for a CPU the pool lacks."""
        proc = self._live(pid)
        with self._lock:
            pool = self._cpus.get(proc.cpu)
        if not isinstance(pool, PoolCPU):
            raise RequestError(
                f"process {pid} runs on {proc.cpu}, not on a pool: nowhere to move it"
            )
        pool.migrate(pid, cpu)
        return proc

    def wait(self, pid: int, timeout: float | None = None) -> Process:
        proc = self.table.get(pid)
        proc.wait(timeout)
        return proc

    def _live(self, pid: int) -> Process:
        proc = self.table.get(pid)
        if not proc.alive:
            raise NoSuchProcessError(f"process {pid} has already exited ({proc.exit_status})")
        return proc

    def _wake_gates(self) -> None:
        for gate in list(self._gates.values()):
            gate.wake()

    # --- waiting off the CPU: the call and ask devices (llmos.hw.dev.proc) ----------
    @contextlib.contextmanager
    def off_cpu(self, pid: int) -> Iterator[None]:
        """While process `pid` waits in a syscall on something other than its CPU (a child, a
        person), its place on a remote CPU's gate is given back, so waiting parents cannot
        starve their own children; it is taken again (in the policy's order) afterwards."""
        proc = self.table.get(pid)
        gate = self._gates.get(proc.cpu)
        if gate is None or not proc.entity.resident:
            yield
            return
        gate.release(proc.entity)
        proc.entity.resident = False
        try:
            yield
        finally:
            if gate.acquire(proc.entity):  # False when killed: _main's release is a no-op then
                proc.entity.resident = True

    def ask(self, pid: int, question: str, timeout: float) -> str:
        """Put process `pid` in state waiting until `answer(pid, text)`; the answer.
        LlmosError if no answer comes within `timeout` seconds or the process is killed."""
        return self.questions.ask(self._live(pid), question, timeout, lambda: self.off_cpu(pid))

    def answer(self, pid: int, text: str) -> Process:
        """Answer the question process `pid` is waiting on; NoSuchProcessError if it is not
        waiting for one."""
        proc = self._live(pid)
        self.questions.answer(proc, text)
        return proc

    def question(self, pid: int) -> str | None:
        """The question process `pid` is waiting on, if any."""
        return self.questions.pending(pid)

    # --- observing -------------------------------------------------------------------------------
    def ps(self, *, include_exited: bool = True, owner: str | None = None) -> list[dict[str, Any]]:
        """The processes in the table (only `owner`'s when given)."""
        procs = self.table.all(include_exited=include_exited)
        return [self._info(p) for p in procs if owner is None or p.owner == owner]

    def _info(self, proc: Process) -> dict[str, Any]:
        """`Process.info()` plus the question the process is waiting on (None if none)."""
        info = proc.info()
        info["question"] = self.question(proc.pid)
        info["approval"] = self.approvals.pending(proc.pid)  # the call waiting for approval
        return info

    def top(self) -> dict[str, Any]:
        """A snapshot for `llmos top`: per process (with tokens/s since the last snapshot, or
        since it started for the first one: a generating process never shows 0), per user, per
        CPU."""
        now = time.monotonic()
        procs = []
        for p in self.table.all():
            info = self._info(p)
            last = self._rates.get(p.pid)
            gen = p.entity.generated
            rate = 0.0
            if not p.alive:
                pass
            elif last is not None and now > last[0]:
                rate = (gen - last[1]) / (now - last[0])
            elif gen and info.get("state") == State.RUNNING.value:
                rate = gen / max(time.time() - p.created_at, 1e-3)
            info["tokens_per_s"] = round(rate, 1)
            if p.alive:
                self._rates[p.pid] = (now, gen)
            procs.append(info)
        users: dict[str, dict[str, Any]] = {}
        for acct in self.table.accounts():
            users[acct.owner] = {"tokens": acct.tokens, "budget": acct.budget, "processes": 0}
        for info in procs:
            if info["state"] != State.EXITED.value:
                users.setdefault(info["owner"], {"tokens": 0, "budget": None, "processes": 0})
                users[info["owner"]]["processes"] += 1
        cpus = {}
        with self._lock:
            for name, cpu in self._cpus.items():
                stats = cpu.stats()
                gate = self._gates.get(name)
                if gate is not None:
                    stats["in_flight"] = gate.in_flight
                cpus[name] = stats
        return {
            "policy": self.policy.name,
            "processes": procs,
            "users": users,
            "cpus": cpus,
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    def shutdown(self, timeout: float = params.KERNEL_SHUTDOWN_GRACE_S) -> None:
        """Kill every live process, wait for them, release the CPUs."""
        for p in self.table.all(include_exited=False):
            p.entity.killed = True
            p.entity.poke()
        self._wake_gates()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads.values())
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            if self._audit is not None:
                self._audit.close()
                self._audit = None


def _timeline(proc: Process, on_trace: Trace | None) -> Trace:
    """The trace hook of `proc`: each step of its loop kept (timed, its result cut to
    params.TIMELINE_RESULT_CHARS, at most params.TIMELINE_MAX_STEPS of them) in
    `proc.steps` for the console's syscall timeline, then passed on to `on_trace`."""

    def trace(record: dict[str, Any]) -> None:
        kept = {**record, "at": time.time()}
        result = kept.get("result")
        if result is not None:
            text = result if isinstance(result, str) else repr(result)
            if len(text) > params.TIMELINE_RESULT_CHARS:
                text = text[: params.TIMELINE_RESULT_CHARS] + "…"
            kept["result"] = text
        with proc.cond:
            if len(proc.steps) < params.TIMELINE_MAX_STEPS:
                proc.steps.append(kept)
        if on_trace is not None:
            on_trace(record)

    return trace
