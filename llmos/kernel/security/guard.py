"""The syscall guard: the one place every syscall of a process passes before its device.

`Guard.check(call, context)` decides, from the process's context (`llmos.kernel.mm.context`
labels every segment trusted or untrusted) and its owner's policy (`UserPolicy`):

    1. not granted                                -> refused (the syscall layer says why)
    2. data from a secret source in the context   -> denied, always, if the call is an external
       (policy `secret`: `fs:keys/*`, `shm:payroll`,   sink: an MCP tool or any device that is
       `memory`...) and the call is an external sink   not built in, `shm_write` into a segment
                                                       another user can read, or `call` (a
                                                       child trusts its inputs)
    3. the device is one the policy lists in `approve`, or `shm_write` into a segment another
       user owns and granted this owner write by name (a squatter can name its victim)
                                                  -> needs approval
    4. an effectful call (fs write, shell, python, shm_write, remember, forget, call, any MCP
       or plugin device) while untrusted text is in the context
                                                  -> denied, or needs approval (`on_taint`)
    5. anything else                              -> allowed

A call that needs approval puts the process in state `waiting_approval` (`ps` shows the call
and the reason) until `llmos approve PID` / `llmos deny PID` decides, or until the policy's
`approval_timeout_s` passes (then it is denied); a process killed meanwhile is denied. Every
decision is appended to the audit trail (`llmos.store.audit`) with its reason and who made
it, before the device runs; if the audit cannot be written the call is refused (fail closed).

`result_label(name, args)` says how a syscall's result enters the context: results that
carry outside text (file contents, tool, MCP and child output, memories, pages, shared
segments) are untrusted and name their source; the kernel's own acknowledgements (a write's
byte count, a memory's id) and one-line errors of built-in devices (but not `python`/`shell`,
whose errors carry their output), calc, clock and a person's `ask` answer are trusted; a
quarantine's schema-checked values are `trusted-data`.

What this does not cover: taint is per process and coarse (one untrusted segment taints the
whole context, and it stays tainted); it follows text into the context, not values through the
model's reasoning, so a tainted process's read-only calls still run and its final answer may
carry injected text to whoever reads it; a secret is known by where it was read (`fs:` paths as
written, not resolved through links), not by its content, so a secret the user pasted into
their input is not tracked; `python` and `shell` count as effectful but not as external sinks
(their sandbox has no network). The policy is the owner's policy file
(`llmos.kernel.security.policy`: `approve`, `secret`, `on_taint`, `approval_timeout_s`). A child
started by `call` trusts its inputs: a tainted parent's `call` is effectful (denied or approved
as above) and never carries a secret, but an approved call hands the child text it will not know
was untrusted.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmos import params
from llmos.errors import LlmosError, NoSuchProcessError
from llmos.hw.cpu.base import ToolCall
from llmos.hw.dev.fs import split_path
from llmos.kernel.mm.context import TRUSTED, TRUSTED_DATA, UNTRUSTED, Context
from llmos.kernel.proc import Process, State
from llmos.kernel.security.policy import UserPolicy
from llmos.store.audit import AuditLog

# Built-in devices that change nothing outside the process (their results may still be
# untrusted); every other device is effectful, and every non-built-in one an external sink.
_READ_ONLY = {
    "calc",
    "clock",
    "random",
    "recall",
    "page_in",
    "shm_read",
    "shm_list",
    "ask",
    "quarantine",
}
_BUILT_IN = _READ_ONLY | {"fs", "shell", "python", "shm_write", "remember", "forget", "call"}
_TRUSTED_RESULTS = {"calc", "clock", "random", "ask", "remember", "forget", "shm_write"}


def arguments(call: ToolCall) -> dict[str, Any]:
    try:
        args = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return {}
    return args if isinstance(args, dict) else {}


def _path(args: dict[str, Any]) -> str:
    try:
        return "/".join(split_path(str(args.get("path", ".")))) or "."
    except LlmosError:
        return str(args.get("path"))


def effectful(name: str, args: dict[str, Any]) -> bool:
    if name == "fs":
        return args.get("op") == "write"
    return name not in _READ_ONLY


def result_label(name: str, args: dict[str, Any], ok: bool) -> tuple[str, str]:
    """How a syscall's result enters the context: its label and its source."""
    if name == "quarantine" and ok:
        return TRUSTED_DATA, "quarantine"
    if name in _TRUSTED_RESULTS or (name == "fs" and args.get("op") == "write"):
        return TRUSTED, name
    if not ok and name in _BUILT_IN - {"python", "shell"}:
        return TRUSTED, name  # the kernel's own one-line error, not outside text
    if name == "fs":
        return UNTRUSTED, f"fs:{_path(args)}"
    if name == "shm_read":
        return UNTRUSTED, f"shm:{args.get('name')}"
    if name == "recall":
        return UNTRUSTED, "memory"
    if name == "page_in":
        return UNTRUSTED, "page"
    if name == "call":
        return UNTRUSTED, f"call:{args.get('program')}"
    return UNTRUSTED, name


@dataclass
class Decision:
    allowed: bool
    decision: str  # an audit decision: allowed, denied, approved, denied-timeout, refused
    reason: str
    by: str = "policy"


@dataclass
class _Pending:
    call: str
    reason: str
    event: threading.Event = field(default_factory=threading.Event)
    approved: bool = False
    by: str = ""


class Approvals:
    """The calls waiting for a person's decision, one per process, kernel-wide."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}

    def pending(self, pid: int) -> dict[str, str] | None:
        with self._lock:
            p = self._pending.get(pid)
        return None if p is None else {"call": p.call, "reason": p.reason}

    def decide(self, proc: Process, approve: bool, by: str) -> None:
        """Approve or deny the call process `proc` waits on; NoSuchProcessError if none."""
        with self._lock:
            p = self._pending.pop(proc.pid, None)
            if p is None:
                raise NoSuchProcessError(
                    f"process {proc.pid} is not waiting for approval (it is {proc.state.value})"
                )
            p.approved, p.by = approve, by
            p.event.set()

    def wait(
        self,
        proc: Process,
        call: str,
        reason: str,
        timeout: float,
        off_cpu: Callable[[], contextlib.AbstractContextManager[None]],
    ) -> Decision:
        pending = _Pending(call, reason)
        with self._lock:
            self._pending[proc.pid] = pending
        proc.set_state(State.WAITING_APPROVAL)
        deadline = time.monotonic() + timeout
        try:
            with off_cpu():
                while not pending.event.wait(params.APPROVAL_POLL_S):
                    if proc.entity.killed or time.monotonic() >= deadline:
                        break
        finally:
            with self._lock:
                if self._pending.get(proc.pid) is pending:
                    del self._pending[proc.pid]
            proc.set_state(State.RUNNABLE)
        if pending.event.is_set():
            verdict = "approved" if pending.approved else "denied"
            return Decision(
                pending.approved, verdict, f"{reason}; {verdict} by {pending.by}", pending.by
            )
        if proc.entity.killed:
            return Decision(False, "denied", f"{reason}; killed while waiting for approval", "kill")
        return Decision(
            False, "denied-timeout", f"{reason}; no approval within {timeout:g} s", "policy"
        )


class Guard:
    """The guard of one process: its owner's policy, the audit trail, the kernel's approvals.

    `shared(name)` says whether shared segment `name` exists and someone other than the
    process's owner can read it, and `foreign(name)` the other owner of a segment that is not
    the process owner's (None if it is theirs or missing)."""

    def __init__(
        self,
        proc: Process,
        policy: UserPolicy,
        audit: Callable[[], AuditLog],
        approvals: Approvals,
        off_cpu: Callable[[], contextlib.AbstractContextManager[None]],
        shared: Callable[[str], bool],
        foreign: Callable[[str], str | None],
    ) -> None:
        self.proc = proc
        self.policy = policy
        self.audit = audit
        self.approvals = approvals
        self.off_cpu = off_cpu
        self.shared = shared
        self.foreign = foreign

    def check(self, call: ToolCall, granted: bool, context: Context | None) -> Decision:
        """Decide (waiting for approval if need be) and audit; see the module note."""
        args = arguments(call)
        decision = self._decide(call.name, args, granted, context)
        if decision.decision == "approve":
            shown = f"{call.name} {call.arguments}"[: params.AUDIT_ARGS_CHARS]
            decision = self.approvals.wait(
                self.proc, shown, decision.reason, self.policy.approval_timeout_s, self.off_cpu
            )
        try:
            self.audit().append(
                owner=self.proc.owner,
                pid=self.proc.pid,
                program=self.proc.program,
                device=call.name,
                args=call.arguments or "{}",
                decision=decision.decision,
                by=decision.by,
                reason=decision.reason,
            )
        except LlmosError as exc:
            return Decision(False, "denied", f"refused: the audit trail cannot be written ({exc})")
        return decision

    def _decide(
        self, name: str, args: dict[str, Any], granted: bool, context: Context | None
    ) -> Decision:
        if not granted:
            return Decision(False, "refused", f"device '{name}' is not granted to this program")
        tainted = context is None or context.tainted
        sources = context.sources() if context is not None else ["unknown"]
        sink = self._external_sink(name, args)
        if sink:
            secret = [
                s for s in sources if any(fnmatch.fnmatchcase(s, p) for p in self.policy.secret)
            ]
            if secret:
                return Decision(
                    False, "denied", f"secret data from {secret[0]} may not reach {sink}"
                )
        if any(fnmatch.fnmatchcase(name, p) for p in self.policy.approve):
            return Decision(False, "approve", f"the policy says {name} needs approval")
        if name == "shm_write":
            other = self.foreign(str(args.get("name")))
            if other is not None:
                return Decision(
                    False,
                    "approve",
                    f"shared segment {args.get('name')!r} belongs to {other}, not to "
                    f"{self.proc.owner}",
                )
        if effectful(name, args) and tainted:
            reason = (
                f"untrusted data in context (from {', '.join(sources[:3])}): effectful call {name}"
            )
            if self.policy.on_taint == "approve":
                return Decision(False, "approve", reason + " needs approval")
            return Decision(False, "denied", reason + " is denied")
        return Decision(
            True, "allowed", "effectful, context trusted" if effectful(name, args) else "read-only"
        )

    def _external_sink(self, name: str, args: dict[str, Any]) -> str | None:
        """What makes this call an external sink (None if it is not one)."""
        if name not in _BUILT_IN:
            return f"external device {name}"
        if name == "call":  # a child's inputs are trusted in its own context
            return "a child process, whose inputs it would trust"
        if name == "shm_write" and self.shared(str(args.get("name"))):
            return f"shared segment {args.get('name')!r}, which others can read"
        return None
