"""Processes: the process table, each process's lifecycle, and the signals it takes.

A process is one running instance of a program: who started it (owner), its parent, its
inputs, its scheduling entity (priority, budget, counters: see `llmos.kernel.sched.policy`), its
state, its output so far, and how it ended.

States and the legal moves between them:

    runnable --(scheduled)--> running --(preempted)--> runnable
    running --(syscall)--> blocked --(result)--> runnable
    running --(asks)--> waiting --(answered)--> runnable
    running --(privileged syscall)--> waiting_approval --(approved, denied, timeout)--> runnable
    any live state --(stop)--> stopped --(continue)--> the state it had
    any live state --(ends, killed, budget)--> exited

`running` means resident in the CPU's KV this step; the CPU flips a process between runnable
and running through its entity, and `Process.state` reads it from there, so the table never
holds a stale copy.

Invariants:
- pids are never reused during a kernel's life.
- A child never gets more than its parent: its priority is at most the parent's, its budget at
  most what the parent has left, every token it spends is charged to its ancestors' budgets
  too (`Entity.parent`), and its depth is bounded (params.MAX_SPAWN_DEPTH).
- One run (a top process and everything below it) spawns at most `descendants` processes
  below its top (the owner's policy, params.QUOTA_DESCENDANTS by default); beyond that spawn
  is refused (AdmissionError), so a fork bomb of `call`s leaves the table bounded.
- At most params.MAX_PROCESSES live processes; spawn beyond that is refused (AdmissionError),
  never queued without bound. An owner whose policy sets `quota.max_processes` has at most
  that many live processes (QuotaError beyond it, checked under the same lock).
- Exited processes stay in the table (for `ps` and `wait`) up to params.EXITED_KEEP; their full
  record is in the log either way.

What this module does not do: run programs (see `llmos.kernel.core`), or pick who runs (see
`llmos.kernel.sched.policy`).
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from llmos import params
from llmos.errors import AdmissionError, LlmosError, NoSuchProcessError, QuotaError
from llmos.kernel.sched.policy import Account, Entity


class State(enum.StrEnum):
    RUNNABLE = "runnable"
    RUNNING = "running"
    BLOCKED = "blocked"
    WAITING = "waiting"
    WAITING_APPROVAL = "waiting_approval"  # a syscall waits for `llmos approve`/`deny`
    STOPPED = "stopped"
    EXITED = "exited"


LIVE = (
    State.RUNNABLE,
    State.RUNNING,
    State.BLOCKED,
    State.WAITING,
    State.WAITING_APPROVAL,
    State.STOPPED,
)

# What a process's exit status may be.
EXIT_STATUSES = ("ok", "failed", "killed", "budget", "lost")


@dataclass(eq=False)
class Process:
    pid: int
    ppid: int
    owner: str
    program: str
    program_path: str | None
    inputs: dict[str, Any]
    cpu: str
    entity: Entity
    depth: int = 0
    top: int = 0  # pid of the top process of its run (itself for a top process)
    created_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    base_state: State = State.RUNNABLE  # runnable/blocked/waiting/exited; see `state`
    exit_status: str | None = None
    error: str | None = None
    run_id: str | None = None
    output: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # one-line notes for its followers (stderr)
    syscalls: int = 0
    devices: Any = None  # its llmos.kernel.calls.Devices (None for a program without devices)
    on_trace: Any = None  # called with each step of its loop (`llmos run --trace`)
    steps: list[dict[str, Any]] = field(default_factory=list)  # its loop's steps so far, timed
    result: Any = None  # the llmos.kernel.reply.RunResult of a process that ran to its end
    exception: BaseException | None = None  # the LlmosError a failed process ended with
    context_limit: int = 0
    context: Any = None  # its llmos.kernel.mm.context.Context, once its program is rendered
    memory: Any = None  # its llmos.kernel.mm.paging.Pager (policy, swap key)
    journal: Any = None  # the kernel's llmos.store.procs.ProcJournal, if it keeps one
    replay: str = ""  # recovered output its new run must reproduce first (llmos.kernel.recovery)
    resume: str = ""  # recovered output its new run continues from (a CPU with continuation)
    diverged: bool = False  # its new run did not reproduce it: stopped, to be reported lost
    metered: bool = False  # its usage is in the ledger (llmos.kernel.meter): no longer live
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def state(self) -> State:
        if self.base_state == State.EXITED:
            return State.EXITED
        if self.entity.stopped:
            return State.STOPPED
        if self.base_state == State.RUNNABLE and (self.entity.resident or self.entity.done):
            return State.RUNNING
        return self.base_state

    @property
    def alive(self) -> bool:
        return self.base_state != State.EXITED

    @property
    def text(self) -> str:
        return "".join(self.output)

    @property
    def priority(self) -> int:
        return self.entity.priority

    @property
    def budget_left(self) -> int | None:
        if self.entity.budget is None:
            return None
        return max(0, self.entity.budget - self.entity.spent)

    def append_output(self, text: str) -> None:
        """Add a piece of output: journalled first (when the kernel keeps a journal), then
        visible to followers, so nobody sees a piece the journal lacks."""
        with self.cond:
            if self.diverged:
                return  # stopping: nothing after a divergence is sent
            if self.replay:
                text = self._replayed(text)
                if not text:
                    return
            if self.journal is not None:
                self.journal.output(self.pid, len(self.output), text)
            self.output.append(text)
            self.cond.notify_all()

    def _replayed(self, text: str) -> str:
        """A recovered process regenerates what it had already sent: a piece that matches it is
        dropped (its followers have it), the part past it is new; a piece that differs stops
        the process (`diverged`), since what was sent cannot be taken back."""
        if self.replay.startswith(text):
            self.replay = self.replay[len(text) :]
            return ""
        if text.startswith(self.replay):
            text, self.replay = text[len(self.replay) :], ""
            return text
        self.replay = ""
        self.diverged = True
        self.entity.killed = True
        self.entity.poke()
        return ""

    @property
    def progress(self) -> str | None:
        """The long work it is doing before its first token, in a few words (None if none):
        building or paging its context (the kernel's loop says), or the CPU's prefill."""
        if not self.alive:
            return None
        e = self.entity
        if e.prefill is not None:
            done, total = e.prefill
            return f"prefill {done}/{total} prompt tokens ({100 * done // max(total, 1)}%)"
        return e.progress

    def notice(self, text: str) -> None:
        """A one-line note for whoever follows the process (paging, say), sent at once."""
        with self.cond:
            self.notices.append(text)
            self.cond.notify_all()

    def read_output(self, seen: int, timeout: float | None) -> tuple[list[str], bool]:
        """The output pieces after the first `seen`, waiting up to `timeout` seconds for one
        (or for the exit), and whether the process is still alive. Every follower of the
        process's output reads it through here."""
        with self.cond:
            if len(self.output) == seen and self.alive:
                self.cond.wait(timeout=timeout)
            return self.output[seen:], self.alive

    def set_state(self, state: State) -> None:
        with self.cond:
            self.base_state = state
            self.cond.notify_all()

    def exit(self, status: str, error: str | None = None) -> None:
        assert status in EXIT_STATUSES, status
        with self.cond:
            if self.base_state == State.EXITED:
                return
            self.exit_status = status
            self.error = error
            self.ended_at = time.time()
            self.base_state = State.EXITED
            self.entity.resident = False
            if self.journal is not None:
                with contextlib.suppress(LlmosError):  # the exit stands; the journal is best kept
                    self.journal.ended(self.pid, status, error, self.ended_at)
            self.cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the process exits; False on timeout."""
        with self.cond:
            return self.cond.wait_for(lambda: not self.alive, timeout=timeout)

    def info(self) -> dict[str, Any]:
        """What `ps` and `top` show."""
        e = self.entity
        return {
            "pid": self.pid,
            "ppid": self.ppid,
            "owner": self.owner,
            "program": self.program,
            "cpu": self.cpu,
            "state": self.state.value,
            "priority": e.priority,
            "swapped": e.swapped,
            "resident": e.resident,  # its KV is in a slot of its CPU now
            "prompt_tokens": e.prompt_tokens,
            "generated_tokens": e.generated,
            "budget": e.budget,
            "budget_left": self.budget_left,
            "syscalls": self.syscalls,
            "context_used": self._context_used(),
            "context_limit": self.context_limit,
            "pages_out": self.memory.pages_out if self.memory is not None else 0,
            "created_at": self.created_at,
            "ended_at": self.ended_at,
            "exit_status": self.exit_status,
            "error": self.error,
            "run_id": self.run_id,
            "progress": self.progress,
        }

    def _context_used(self) -> int:
        """Tokens in the context window now: the CPU's count while the process is resident
        (prompt plus what it generated), else the context's last exact measure."""
        e = self.entity
        if e.resident and e.context_used:
            return e.context_used
        if self.context is not None and self.context.used:
            return int(self.context.used)
        return e.context_used or e.tokens


class ProcessTable:
    """All processes of one kernel, by pid. Thread-safe."""

    def __init__(
        self,
        max_processes: int = params.MAX_PROCESSES,
        user_budgets: dict[str, int] | None = None,
    ) -> None:
        self.max_processes = max_processes
        self._lock = threading.Lock()
        self._procs: dict[int, Process] = {}
        self._exited: deque[int] = deque()
        self._next_pid = 1
        self._live = 0  # processes not yet reaped
        self._accounts: dict[str, Account] = {}
        self._user_budgets = dict(user_budgets or {})
        self._spawned_below: dict[int, int] = {}  # top pid -> processes spawned below it
        self._live_of: dict[str, int] = {}  # owner -> their processes not yet reaped

    def account(self, owner: str) -> Account:
        with self._lock:
            return self._account(owner)

    def limit_account(self, owner: str, budget: int) -> None:
        """Cap `owner`'s tokens at `budget` (their policy's, as it is now), or at the budget
        the table was made with for them if that is lower."""
        with self._lock:
            acct = self._account(owner)
            acct.budget = min(budget, self._user_budgets.get(owner, budget))

    def _account(self, owner: str) -> Account:
        acct = self._accounts.get(owner)
        if acct is None:
            acct = Account(owner=owner, budget=self._user_budgets.get(owner))
            self._accounts[owner] = acct
        return acct

    def accounts(self) -> list[Account]:
        with self._lock:
            return list(self._accounts.values())

    def create(
        self,
        *,
        owner: str,
        program: str,
        program_path: str | None,
        inputs: dict[str, Any],
        cpu: str,
        priority: int = params.DEFAULT_PRIORITY,
        budget: int | None = None,
        parent: int = 0,
        max_descendants: int = params.QUOTA_DESCENDANTS,
        max_live: int | None = None,
        pid: int | None = None,
    ) -> Process:
        """A new runnable process; AdmissionError when the table is full, the spawn is too
        deep, or the run already spawned `max_descendants` processes below its top;
        QuotaError when the owner already has `max_live` live processes."""
        with self._lock:
            live = self._live
            if live >= self.max_processes:
                raise AdmissionError(
                    f"process table full: {live} live processes (limit {self.max_processes})"
                )
            mine = self._live_of.get(owner, 0)
            if max_live is not None and mine >= max_live:
                raise QuotaError(
                    f"{owner} has {mine} live processes (quota.max_processes {max_live}); "
                    "wait for one to end",
                    params.QUOTA_PROCESSES_RETRY_S,
                )
            depth, top, parent_entity = 0, 0, None
            if parent:
                par = self._procs.get(parent)
                if par is None or not par.alive:
                    raise NoSuchProcessError(f"parent process {parent} is not running")
                depth = par.depth + 1
                if depth > params.MAX_SPAWN_DEPTH:
                    raise AdmissionError(
                        f"spawn depth {depth} exceeds the limit of {params.MAX_SPAWN_DEPTH}"
                    )
                top = par.top
                below = self._spawned_below.get(top, 0)
                if below >= max_descendants:
                    raise AdmissionError(
                        f"run of pid {top} already spawned {below} processes "
                        f"(limit {max_descendants})"
                    )
                parent_entity = par.entity
                if parent_entity.over_budget:
                    raise AdmissionError(f"parent process {parent} has spent its token budget")
                self._spawned_below[top] = below + 1
                priority = min(priority, par.priority)
                left = par.budget_left
                if left is not None:
                    budget = left if budget is None else min(budget, left)
            if pid is None:  # a recovered process keeps its pid (`Kernel.recover`)
                pid = self._next_pid
                self._next_pid += 1
            elif pid in self._procs:
                raise AdmissionError(f"pid {pid} is in use")
            entity = Entity(
                pid=pid,
                owner=owner,
                priority=max(params.MIN_PRIORITY, min(params.MAX_PRIORITY, priority)),
                budget=budget,
                account=self._account(owner),
                parent=parent_entity,
            )
            proc = Process(
                pid=pid,
                ppid=parent,
                owner=owner,
                program=program,
                program_path=program_path,
                inputs=inputs,
                cpu=cpu,
                entity=entity,
                depth=depth,
                top=top or pid,
            )
            self._procs[pid] = proc
            self._live += 1
            self._live_of[owner] = mine + 1
            return proc

    def continue_after(self, pid: int) -> None:
        """New pids start above `pid` (a journal's highest, so none is used twice)."""
        with self._lock:
            self._next_pid = max(self._next_pid, pid + 1)

    def restore(self, proc: Process) -> None:
        """Put back an exited process from before a restart (for ps, wait and its output)."""
        with self._lock:
            self._procs[proc.pid] = proc
            self._exited.append(proc.pid)
            while len(self._exited) > params.EXITED_KEEP:
                self._procs.pop(self._exited.popleft(), None)

    def reaped(self, proc: Process) -> None:
        """Note an exit; forget the oldest exited processes beyond params.EXITED_KEEP."""
        with self._lock:
            self._live -= 1
            left = self._live_of.get(proc.owner, 0) - 1
            if left > 0:
                self._live_of[proc.owner] = left
            else:
                self._live_of.pop(proc.owner, None)
            if proc.top == proc.pid:
                self._spawned_below.pop(proc.pid, None)
            self._exited.append(proc.pid)
            while len(self._exited) > params.EXITED_KEEP:
                self._procs.pop(self._exited.popleft(), None)

    def get(self, pid: int) -> Process:
        with self._lock:
            proc = self._procs.get(pid)
        if proc is None:
            raise NoSuchProcessError(f"no process with pid {pid}")
        return proc

    def all(self, *, include_exited: bool = True) -> list[Process]:
        with self._lock:
            procs = list(self._procs.values())
        return [p for p in procs if include_exited or p.alive]

    def children(self, pid: int) -> list[Process]:
        return [p for p in self.all() if p.ppid == pid]

    def __len__(self) -> int:
        with self._lock:
            return len(self._procs)
