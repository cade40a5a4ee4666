"""The kernel API's process operations: spawn (and the one function that turns a program
reference, inputs and stdin into a spawn), ps, get, kill, stop, cont, renice, wait, follow,
answer, approve, deny, audit, top, context (the context window as memory), steps (the syscall
timeline); `run` (the in-process foreground run) and `follow_process`
(a process's one output stream, resumable from any piece).

Invariants: see `llmos.kernel.api` (every operation on a pid acts only on the caller's own
processes, or any for an admin).

What this does not do: installed programs and completions (`programs`), stores (`stores`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from llmos import params
from llmos.errors import (
    AdmissionError,
    LlmosError,
    NoSuchProcessError,
    ProgramError,
    RequestError,
)
from llmos.hw.cpu.base import CPU
from llmos.kernel import program as program_mod
from llmos.kernel.api.base import Caller, Empty, Handler, PidRequest, Request, owned
from llmos.kernel.core import Kernel
from llmos.kernel.inputs import parse_cli_inputs
from llmos.kernel.mm.context import one_line
from llmos.kernel.proc import Process
from llmos.kernel.program import Program
from llmos.kernel.reply import RunResult


class SpawnRequest(Request):
    program: str = Field(min_length=1)
    cwd: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    input_pairs: list[str] = Field(default_factory=list)
    stdin: str | None = None
    model: str | None = None
    priority: int | None = Field(default=None, ge=params.MIN_PRIORITY, le=params.MAX_PRIORITY)
    budget: int | None = Field(default=None, ge=0)


class PsRequest(Request):
    all: bool = False


class ReniceRequest(Request):
    pid: int
    priority: int = Field(ge=params.MIN_PRIORITY, le=params.MAX_PRIORITY)


class MigrateRequest(Request):
    pid: int
    cpu: str = Field(min_length=1, max_length=params.PLUGIN_NAME_MAX_CHARS)


class WaitRequest(Request):
    pid: int
    timeout: float | None = Field(default=None, ge=0)


class AnswerRequest(Request):
    pid: int
    text: str


class AuditRequest(Request):
    pid: int | None = None
    device: str | None = None
    decision: str | None = None
    limit: int = Field(default=params.AUDIT_LIST_DEFAULT, ge=1)
    verify: bool = False


# --- processes -----------------------------------------------------------------------------------


def spawn_request(
    kernel: Kernel, caller: Caller, req: SpawnRequest
) -> tuple[Program, dict[str, Any]]:
    """The program `req` names, loaded for the caller's working directory, and its inputs
    (`inputs`, then `key=value` pairs coerced to the input schema, then stdin as `input`).
    A program or input that fails is journalled as a failed run of the caller, then raised."""
    system = kernel.system
    ref = req.program
    cwd = Path(req.cwd) if req.cwd else Path.cwd()
    if not cwd.is_absolute():
        raise RequestError(f"'cwd' must be an absolute path, got {req.cwd!r}")
    candidate = cwd / ref
    if not Path(ref).is_absolute() and (
        "/" in ref
        or ref.endswith(params.PROGRAM_SUFFIXES)
        or candidate.is_file()
        or (candidate / params.SKILL_FILE).is_file()
    ):
        ref = str(candidate)
    try:
        try:
            program = program_mod.load(ref, program_mod.default_search_dirs(system.home, cwd))
        except ProgramError:
            if ref != req.program or not candidate.is_dir():
                raise
            # No installed program by that name, but a folder here: say what it lacks.
            program = program_mod.load(candidate)
    except LlmosError as exc:
        system.log_failure(ref, exc, owner=caller.owner)
        raise
    try:
        inputs = dict(req.inputs)
        inputs.update(parse_cli_inputs(list(req.input_pairs), program.input_schema))
    except LlmosError as exc:
        system.log_failure(program.name, exc, program_path=str(program.path))
        raise
    return program, with_stdin(inputs, req.stdin)


def with_stdin(inputs: dict[str, Any], stdin: str | None) -> dict[str, Any]:
    """Piped stdin is the input named `input`, unless that input was given explicitly."""
    if stdin is not None and "input" not in inputs:
        return {**inputs, "input": stdin}
    return inputs


def spawn(kernel: Kernel, caller: Caller, req: SpawnRequest) -> Process:
    """Start the program `req` names as a process owned by the caller."""
    program, inputs = spawn_request(kernel, caller, req)
    try:
        return kernel.spawn(
            program,
            inputs,
            owner=caller.owner,
            model=req.model,
            priority=req.priority,
            budget=req.budget,
        )
    except AdmissionError:
        raise
    except LlmosError as exc:
        kernel.system.log_failure(program.name, exc, str(program.path), caller.owner)
        raise


def run(
    kernel: Kernel,
    caller: Caller,
    program: Program,
    inputs: dict[str, Any],
    *,
    cpu: CPU | None = None,
    on_text: Callable[[str], None] | None = None,
    on_trace: Callable[[dict[str, Any]], None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run `program` as a process and wait for it in the foreground, streaming its output to
    `on_text` (and, given `on_event`, its notices and progress: see `follow_process`); raise
    the error it failed with. If the caller is interrupted (or its output pipe closes), the
    process is killed and logged as such first."""
    proc = kernel.spawn(program, inputs, owner=caller.owner, cpu=cpu, on_trace=on_trace)
    try:
        for event in follow_process(proc, caller, progress=on_event is not None):
            if ("notice" in event or "progress" in event) and on_event is not None:
                on_event(event)
            if "text" in event and on_text is not None:
                on_text(event["text"])
    except BaseException:
        if proc.alive:
            kernel.kill(proc.pid)
            proc.wait(timeout=params.KERNEL_SHUTDOWN_GRACE_S)
        raise
    if proc.exception is not None:
        raise proc.exception
    if proc.result is None:
        raise LlmosError(
            f"{program.path}: process {proc.pid} ended {proc.exit_status}: {proc.error}"
        )
    result: RunResult = proc.result
    return result


def follow_process(
    proc: Process, caller: Caller, start: int = 0, *, progress: bool = False
) -> Iterator[dict[str, Any]]:
    """The process's one output stream, as events: its text from piece `start` on (0: from
    the beginning), then live; each text event carries `next`, the number of pieces read
    through it (where a follower that lost the stream starts again, so nothing is missed or
    repeated). The last event says how it ended. Ends early (without that event) if the
    caller is gone. With `progress`, also `{"notice": line}` for each of the process's notices
    (paging) and `{"progress": words or None}` each time its progress changes (prefill...)."""
    seen = max(0, start)
    noted = 0
    shown: str | None = None
    poll = params.PROGRESS_POLL_S if progress else params.KERNEL_POLL_S
    while True:
        fresh, alive = proc.read_output(seen, poll)
        seen += len(fresh)
        if progress:
            now = proc.progress if alive and not fresh else None
            if now != shown:
                shown = now
                yield {"progress": now}
            notes = proc.notices[noted:]
            noted += len(notes)
            for note in notes:
                yield {"notice": note}
        if fresh:
            yield {"text": "".join(fresh), "next": seen}
        if not alive:
            yield {
                "done": True,
                "exit_status": proc.exit_status,
                "error": proc.error,
                "process": proc.info(),
            }
            return
        if not fresh and caller.gone():
            return


def _spawn_op(kernel: Kernel, caller: Caller, req: SpawnRequest) -> dict[str, Any]:
    proc = spawn(kernel, caller, req)
    return {"pid": proc.pid, "process": proc.info()}


def _get(kernel: Kernel, caller: Caller, req: PidRequest) -> dict[str, Any]:
    proc = owned(kernel, caller, req.pid)
    return {"process": proc.info(), "question": kernel.question(req.pid)}


def _ps(kernel: Kernel, caller: Caller, req: PsRequest) -> dict[str, Any]:
    owner = None if caller.admin else caller.owner
    return {"processes": kernel.ps(include_exited=req.all, owner=owner)}


def _signal(action: str) -> Handler:
    """kill, stop or cont. Killing a process that has already exited is not an error (what
    kill asks for is true): the reply says `already_exited`; stop and cont need a live one."""

    def handler(kernel: Kernel, caller: Caller, req: PidRequest) -> dict[str, Any]:
        target = owned(kernel, caller, req.pid)
        try:
            proc = {"kill": kernel.kill, "stop": kernel.stop, "cont": kernel.cont}[action](req.pid)
        except NoSuchProcessError:
            if action != "kill" or target.alive:
                raise
            return {"process": target.info(), "already_exited": True}  # (it just ended)
        return {"process": proc.info(), "already_exited": False}

    return handler


def _migrate(kernel: Kernel, caller: Caller, req: MigrateRequest) -> dict[str, Any]:
    owned(kernel, caller, req.pid)
    proc = kernel.migrate(req.pid, req.cpu)
    return {"process": proc.info(), "cpu": req.cpu}


def _renice(kernel: Kernel, caller: Caller, req: ReniceRequest) -> dict[str, Any]:
    old = owned(kernel, caller, req.pid).priority
    proc = kernel.renice(req.pid, req.priority)
    return {"process": proc.info(), "old_priority": old}


def _wait(kernel: Kernel, caller: Caller, req: WaitRequest) -> dict[str, Any] | None:
    """The process once it exits (or when the timeout passes); None if the caller left."""
    proc = owned(kernel, caller, req.pid)
    deadline = None if req.timeout is None else time.monotonic() + req.timeout
    timed_out = False
    while True:
        step = params.KERNEL_POLL_S
        if deadline is not None:
            step = max(0.0, min(step, deadline - time.monotonic()))
        if proc.wait(step):
            break
        if deadline is not None and time.monotonic() >= deadline:
            timed_out = True
            break
        if caller.gone():
            return None
    return {"process": proc.info(), "text": proc.text, "timed_out": timed_out}


class FollowRequest(Request):
    pid: int
    progress: bool = False  # also notices and progress events (see follow_process)


def _follow(kernel: Kernel, caller: Caller, req: FollowRequest) -> Iterator[dict[str, Any]]:
    return follow_process(owned(kernel, caller, req.pid), caller, progress=req.progress)


def _answer(kernel: Kernel, caller: Caller, req: AnswerRequest) -> dict[str, Any]:
    owned(kernel, caller, req.pid)
    return {"process": kernel.answer(req.pid, req.text).info()}


def _decide(approve: bool) -> Handler:
    def handler(kernel: Kernel, caller: Caller, req: PidRequest) -> dict[str, Any]:
        owned(kernel, caller, req.pid)  # another owner's process: as if it did not exist
        decide = kernel.approve if approve else kernel.deny
        return {"process": decide(req.pid, caller.owner).info()}

    return handler


def _audit(kernel: Kernel, caller: Caller, req: AuditRequest) -> dict[str, Any]:
    """The caller's audit records (filtered); with `verify`, the whole chain checked."""
    trail = kernel.audit()
    reply: dict[str, Any] = {
        "records": trail.query(
            caller.owner, pid=req.pid, device=req.device, decision=req.decision, limit=req.limit
        )
    }
    if req.verify:
        v = trail.verify()
        reply["verify"] = {
            "ok": v.ok,
            "records": v.records,
            "broken_at": v.broken_at,
            "reason": v.reason,
        }
    return reply


def _top(kernel: Kernel, caller: Caller, req: Empty) -> dict[str, Any]:
    """The kernel's snapshot; a caller who is not an admin sees only their own processes and
    account (the CPUs' figures are shared)."""
    snap = kernel.top()
    if not caller.admin:
        snap["processes"] = [p for p in snap["processes"] if p["owner"] == caller.owner]
        snap["users"] = {o: u for o, u in snap["users"].items() if o == caller.owner}
    return snap


def _context(kernel: Kernel, caller: Caller, req: PidRequest) -> dict[str, Any]:
    """The process's context window as memory: its segments in order (kind, label, tokens,
    resident or the page it went to, a short preview of resident text), the tokens used of
    the limit, whether it is tainted and by what. A process whose program is not yet rendered
    has no segments."""
    proc = owned(kernel, caller, req.pid)
    ctx = proc.context
    info = proc.info()
    reply: dict[str, Any] = {
        "pid": proc.pid,
        "state": info["state"],
        "swapped": info["swapped"],
        "used": info["context_used"],
        "limit": proc.context_limit,
        "pages_out": info["pages_out"],
        "tainted": False,
        "sources": [],
        "segments": [],
        "by_kind": {},
    }
    if ctx is None:
        return reply
    segments = list(ctx.segments)  # a snapshot: the process's thread appends and pages
    rows = []
    for seg in segments:
        row = seg.info()
        row["resident"] = seg.resident
        row["preview"] = (
            one_line(seg.text, params.CONTEXT_VIEW_PREVIEW_CHARS) if seg.resident else seg.summary
        )
        rows.append(row)
    reply.update(
        tainted=ctx.tainted,
        sources=ctx.sources(),
        segments=rows,
        by_kind=ctx.accounting()["by_kind"],
    )
    return reply


def _steps_op(kernel: Kernel, caller: Caller, req: PidRequest) -> dict[str, Any]:
    """The process's syscall timeline: each step of its loop (a syscall with its device,
    arguments, outcome and duration, and the guard's decision on it; a malformed call; the
    answer), with when it ended, and the call it waits on for approval now, if any."""
    proc = owned(kernel, caller, req.pid)
    with proc.cond:
        steps = [dict(s) for s in proc.steps]
    _decisions(kernel, proc, steps)
    return {
        "pid": proc.pid,
        "state": proc.state.value,
        "steps": steps,
        "approval": kernel.approvals.pending(proc.pid),
        "question": kernel.question(proc.pid),
    }


def _decisions(kernel: Kernel, proc: Process, steps: list[dict[str, Any]]) -> None:
    """Each syscall step given the guard's audited decision on it (`decision`, `by`,
    `reason`): the process's audit records since it started, matched in order by device."""
    records = [
        r
        for r in kernel.audit().query(proc.owner, pid=proc.pid, limit=params.TIMELINE_MAX_STEPS)
        if r["ts"] >= proc.created_at
    ]
    for step in steps:
        if step.get("kind") != "syscall":
            continue
        for i, r in enumerate(records):
            if r["device"] == step["device"]:
                step.update(decision=r["decision"], by=r["by"], reason=r["reason"])
                del records[: i + 1]
                break
