"""What the shell prints for `ps`, `top` and `jobs`: the scheduler's view in plain columns.

Every process row says where it is (resident in a slot of its CPU, swapped out, queued, or
exited) and, when it is not running, what it waits for and why: the CPU (queued), a device
(blocked), the user's answer to its question, or an approval of the call it wants to make.

Invariants: plain text only (no colour, no cursor moves), one line per process plus at most
one line of detail, so it reads the same in a terminal, a pipe or a test.

What this does not do: fetch anything (the caller passes the API's replies).
"""

from __future__ import annotations

from typing import Any

PS_HEADER = (
    f"{'PID':>5} {'PROGRAM':<16} {'STATE':<16} {'WHERE':<9} {'CONTEXT':>11} {'TOKENS':>7}  WAITS ON"
)


def where(p: dict[str, Any]) -> str:
    if p.get("state") == "exited":
        return "-"
    if p.get("swapped"):
        return "swapped"
    return "resident" if p.get("resident") else "queued"


def waits_on(p: dict[str, Any]) -> str:
    state = p.get("state")
    if state == "waiting_approval":
        a = p.get("approval") or {}
        call = a.get("call", "a call")
        return f"approval of {call}" + (f" ({a['reason']})" if a.get("reason") else "")
    if state == "waiting":
        q = p.get("question")
        return f"an answer: {q}" if q else "an answer"
    if state == "blocked":
        return "a device"
    if state == "runnable":
        return "the CPU" + (f" ({p['progress']})" if p.get("progress") else "")
    if state == "stopped":
        return "cont (stopped)"
    if state == "exited":
        status = p.get("exit_status") or ""
        return status + (f": {p['error']}" if p.get("error") else "")
    return p.get("progress") or ""


def ps_row(p: dict[str, Any]) -> str:
    ctx = f"{p.get('context_used') or 0}/{p.get('context_limit') or 0}"
    tokens = (p.get("prompt_tokens") or 0) + (p.get("generated_tokens") or 0)
    return (
        f"{p['pid']:>5} {str(p.get('program'))[:16]:<16} {p.get('state', ''):<16} "
        f"{where(p):<9} {ctx:>11} {tokens:>7}  {waits_on(p)}"
    ).rstrip()


def ps(procs: list[dict[str, Any]]) -> str:
    return "\n".join([PS_HEADER, *(ps_row(p) for p in procs)])


def top(snap: dict[str, Any]) -> str:
    lines = [f"policy: {snap.get('policy')}"]
    for name, cpu in (snap.get("cpus") or {}).items():
        figures = ", ".join(
            f"{k} {v}"
            for k, v in cpu.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        )
        lines.append(f"cpu {name}: {figures}" if figures else f"cpu {name}")
    for owner, u in (snap.get("users") or {}).items():
        budget = u.get("budget")
        lines.append(
            f"user {owner}: {u.get('processes', 0)} live, {u.get('tokens', 0)} tokens"
            + (f" of {budget}" if budget is not None else "")
        )
    procs = [p for p in snap.get("processes") or [] if p.get("state") != "exited"]
    resident = sum(1 for p in procs if where(p) == "resident")
    swapped = sum(1 for p in procs if where(p) == "swapped")
    waiting = sum(1 for p in procs if p.get("state") in ("waiting", "waiting_approval", "blocked"))
    lines.append(f"{len(procs)} live: {resident} resident, {swapped} swapped, {waiting} waiting")
    lines.append(PS_HEADER + "  TOK/S")
    for p in procs:
        lines.append(f"{ps_row(p)}  {p.get('tokens_per_s', 0)}")
    return "\n".join(lines)


def job_line(number: int, state: str, source: str, pid: int | None, detail: str = "") -> str:
    at = f"pid {pid}" if pid is not None else "starting"
    return f"[{number}] {state:<8} {at:<9} {source}" + (f"  ({detail})" if detail else "")
