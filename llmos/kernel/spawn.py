"""What each process is given at spawn: its memory manager, its first context, its devices.

`pager` builds a process's memory manager (its paging policy and swap key); `prepare` attaches
it to the context the loop renders and pages in the shared segments and the owner's memories
the program asks for; `devices` decides which devices the process may call, through which
quotas, guard and file namespace (`user_root`). The kernel calls them from `Kernel.spawn` and
the process's thread; everything they need is passed in.

Invariants:
- A process never holds a device its program did not declare, its owner's policy does not
  allow or, for a child, its parent does not hold; a child's device options are at most its
  parent's.
- What is paged in at spawn (shared segments, recalled memories) is untrusted: user-role
  messages fenced as data, never system.
- An owner's file namespace is theirs alone, created owner-only, never a symlink.

What this module does not do: create, schedule or signal processes (see `llmos.kernel.core`),
decide what the policy allows (see `llmos.kernel.security.policy`), or run the syscall guard
itself (see `llmos.kernel.security.guard`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from llmos import params
from llmos.errors import AccessError, InputError, LlmosError, ProgramError
from llmos.hw.cpu.base import CPU
from llmos.hw.dev.base import CallContext
from llmos.kernel import plugins
from llmos.kernel.boot import System
from llmos.kernel.calls import Devices
from llmos.kernel.handles import Handles, KernelOps
from llmos.kernel.mm.context import UNTRUSTED, Context, fence
from llmos.kernel.mm.paging import Pager, cpu_summarizer, recall_into
from llmos.kernel.proc import Process, State
from llmos.kernel.program import Program
from llmos.kernel.security import principals
from llmos.kernel.security.guard import Approvals, Guard
from llmos.kernel.security.policy import UserPolicy, narrow_options
from llmos.kernel.security.quota import GuardedTable
from llmos.kernel.syscall import grants_for
from llmos.store.audit import AuditLog
from llmos.store.shm import SharedMemory


class Kernel(KernelOps, Protocol):
    """What spawn-time set-up uses of `llmos.kernel.core.Kernel` (named here, not imported:
    the kernel core imports this module)."""

    @property
    def system(self) -> System: ...

    approvals: Approvals
    user_policy: Callable[[str], UserPolicy]

    def audit(self) -> AuditLog: ...


def pager(system: System, program: Program, proc: Process, cpu: CPU) -> Pager:
    """The memory manager of one process: its paging policy and swap key."""
    name = str(program.llmos.get("paging") or params.PAGING_POLICY)
    try:
        policy = plugins.paging_policy(name, cpu_summarizer(cpu, proc.entity))
    except InputError as exc:
        raise ProgramError(f"{program.path}: llmos.paging: {exc}") from exc
    reserve = int(program.gen_settings().get("max_tokens") or params.DEFAULT_MAX_OUTPUT_TOKENS)

    def paged(segments: int, chars: int, limit: int) -> None:
        # Said as it happens (before the step generates), never a silent truncation.
        proc.notice(
            f"the context did not fit its {limit}-token limit: {segments} segments "
            f"({chars / 1e6:.1f} MB) were paged out to the swap store (page ids: "
            f"`llmos logs {proc.run_id} --json`; read one: `llmos memory page ID`)"
        )

    return Pager(
        store=lambda: system.memory,
        owner=proc.owner,
        process=f"{os.getpid()}.{proc.pid}.{secrets.token_hex(4)}",
        policy=policy,
        reserve=reserve,
        label=str(program.path),
        on_progress=lambda text: setattr(proc.entity, "progress", text),
        on_paged=paged,
    )


def prepare(system: System, proc: Process, program: Program, context: Context) -> None:
    """At spawn: attach the pager; page in the owner's memories most relevant to the
    input (`llmos.memory.auto_recall` tokens) and the shared segments the program names
    (`llmos.shm`). Both are untrusted: user-role messages fenced as data, never system."""
    proc.context = context
    memory: Pager = proc.memory
    memory.attach(context)
    for name in program.llmos.get("shm") or []:
        seg = SharedMemory(system.memory).read(proc.owner, name)
        context.insert_after_program(
            "user",
            fence(
                f"shared segment {seg.name} (version {seg.version}, owner {seg.owner})",
                seg.text,
            ),
            "shm",
            {"shm": seg.name, "version": seg.version, "source": f"shm:{seg.name}"},
            label=UNTRUSTED,
        )
    budget = int((program.llmos.get("memory") or {}).get("auto_recall") or 0)
    if budget > 0:
        query = " ".join(str(v) for v in proc.inputs.values() if isinstance(v, str))
        if query.strip():
            hits = system.memory.recall(proc.owner, query, params.RECALL_MAX_K)
            recall_into(context, hits, budget, header="Memories from earlier runs that may help:")


def devices(kernel: Kernel, program: Program, proc: Process, user: UserPolicy) -> Devices | None:
    """What a program that declares devices may call (None for one that declares none):
    the intersection of what it declares, what its owner's policy allows and, for a
    child, what its parent holds (device options narrowed to the parent's too). Its
    syscalls go through its quotas. ProgramError if it declares devices that do not
    exist or are not granted."""
    declared = list(program.tools)
    raw = program.llmos.get("devices") or {}
    options: dict[str, Any] = {name: {} for name in raw} if isinstance(raw, list) else dict(raw)
    if not declared and not options:
        return None
    table = kernel.system.syscalls
    grants = grants_for(declared, options, table, str(program.path))
    grants = {
        name: dev
        for name, dev in grants.items()
        if user.allows_device(name, default_on=dev.default_on)
    }
    if proc.ppid:
        held: Devices | None = kernel.table.get(proc.ppid).devices
        grants = {n: d for n, d in grants.items() if held is not None and n in held.grants}
        if held is not None:
            options = {n: narrow_options(options.get(n), held.options.get(n)) for n in grants}
    options = {n: o for n, o in options.items() if n in grants}
    handles = Handles.for_process(kernel, proc.pid, proc.memory, user)
    ctx = CallContext(
        pid=proc.pid,
        owner=proc.owner,
        root=user_root(kernel.system.home, proc.owner),
        proc=handles.proc,  # what the call/ask devices may do (llmos.hw.dev.proc)
        memory=handles.memory,  # and the memory and shm devices (llmos.hw.dev.memory)
        shm=handles.shm,
    )
    return Devices(
        table=GuardedTable(table, user.quota, proc.entity),
        grants=grants,
        ctx=ctx,
        options=options,
        on_syscall=lambda busy: _blocked(proc, busy),
        guard=guard(kernel, proc),
    )


def guard(kernel: Kernel, proc: Process) -> Guard:
    """The syscall guard of `proc` (`llmos.kernel.security.guard`): its owner's policy, the
    kernel's audit trail and approvals, and what it needs to know of shared segments."""

    def segment(name: str) -> Any:
        """The segment `name` as the owner sees it (None if missing or unreadable)."""
        with contextlib.suppress(LlmosError):
            for seg in SharedMemory(kernel.system.memory).list(proc.owner):
                if seg.name == name:
                    return seg
        return None

    def shared(name: str) -> bool:
        seg = segment(name)
        return seg is not None and (
            seg.owner != proc.owner or bool(seg.others) or any(seg.acl.values())
        )

    def foreign(name: str) -> str | None:
        """The other owner of a segment that granted this owner write by name."""
        seg = segment(name)
        if seg is None or seg.owner == proc.owner or seg.acl.get(proc.owner) != "rw":
            return None
        return str(seg.owner)

    return Guard(
        proc,
        kernel.user_policy(proc.owner),
        kernel.audit,
        kernel.approvals,
        lambda: kernel.off_cpu(proc.pid),
        shared,
        foreign,
    )


def user_root(home: Path, owner: str) -> Path:
    """The owner's private file namespace under `home` (what `fs` and `python` may touch),
    created owner-only. The owner name is used as it is once valid (`principals.owner_name`
    refuses any other with AccessError), so two owners never share a namespace."""
    root = home
    for part in (params.USERS_DIR_NAME, principals.owner_name(owner), "files"):
        root = root / part
        with contextlib.suppress(FileExistsError):
            root.mkdir(mode=params.PRIVATE_DIR_MODE)
        if root.is_symlink() or not root.is_dir():
            raise AccessError(f"{root} is not a directory; refusing it as a file namespace")
    return root


def _blocked(proc: Process, busy: bool) -> None:
    """A syscall starts (blocked) or ends (runnable again)."""
    if busy:
        proc.syscalls += 1
    proc.set_state(State.BLOCKED if busy else State.RUNNABLE)
