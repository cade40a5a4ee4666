"""Crash recovery for a long-lived kernel: what becomes of the processes a killed kernel left.

A kernel given a journal (`llmos.store.procs.ProcJournal`; `llmos serve` gives one) records
each process it starts (with the spec to start it again: its program's file, or a chat's
messages, its inputs, model, priority and budget) and each piece of output before anyone sees
it (`Process.append_output`). When a new kernel starts on the same home, `recover(kernel)`
looks at the processes the journal still has as live:

- a top process whose program declares no devices is started again with the same pid and
  owner, its output so far already in place, and its context prefilled again from its program
  and inputs. On a CPU that can continue a reply (`capabilities.continuation`: the embedded
  one) a plain-text answer goes on from the text it had sent: that text is prefilled after
  the conversation, as the reply's beginning, and generation continues from there, so a
  client that reconnects with `Last-Event-ID` gets the rest. Elsewhere (another CPU, a JSON
  answer, a caller's functions) the new run must first reproduce what it had sent; the pieces
  that match are not sent twice and it goes on from there; if it differs (sampling, or
  numerics that depend on the batch) it is stopped there and reported lost: what a client
  received is never contradicted;
- any other (a program with devices, whose syscalls must not run twice; a child whose parent
  is gone) is reported lost: it stays in the table as exited with status `lost`, its output
  so far kept, so `wait`, `ps` and a reconnecting event stream get everything it had
  produced, then its end.

Invariants: pids continue above the journal's highest, so no pid names two processes; a
recovered process keeps its owner (ownership checks hold across the restart); each live row
ends up either running again or finished as `lost`, never left live.

Not covered: restoring a reply's saved KV state (the context and the text so far are
prefilled again, which costs a prefill); a process with devices is never resumed, even one
that made no syscall yet.

What this does not do: write the journal (the kernel and `Process` do), or open it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llmos.errors import LlmosError
from llmos.hw.cpu.base import ToolSpec
from llmos.kernel import program as program_mod
from llmos.kernel.proc import Process, State
from llmos.kernel.program import Program
from llmos.kernel.sched.policy import Entity

LOST = "the service stopped before the process finished (its output so far is kept)"
DIVERGED = (
    "the service stopped before the process finished, and its new run did not reproduce the "
    "output already sent (that output is kept)"
)


def spec_of(program: Program, inputs: dict[str, Any], model: str | None) -> dict[str, Any]:
    """What starts the same process again."""
    spec: dict[str, Any] = {"inputs": inputs, "model": model}
    if program.kind == "chat":
        spec["chat"] = {
            "messages": program.messages,
            "model": program.model,
            "config": program.config,
            "output_schema": program.output_schema,
            "json": program.output_format == "json",
        }
    else:
        spec["path"] = str(program.path)
    if program.client_tools:
        spec["client_tools"] = [dataclasses.asdict(t) for t in program.client_tools]
        spec["llmos"] = program.llmos
    return spec


def program_of(spec: dict[str, Any]) -> Program:
    chat = spec.get("chat")
    if chat is not None:
        program = program_mod.chat(
            chat["messages"],
            model=chat.get("model"),
            config=chat.get("config"),
            output_schema=chat.get("output_schema"),
            json_output=bool(chat.get("json")),
        )
    else:
        program = program_mod.load(spec["path"])
    tools = spec.get("client_tools")
    if tools:
        program = dataclasses.replace(
            program,
            client_tools=[ToolSpec(**t) for t in tools],
            llmos={**program.llmos, **(spec.get("llmos") or {})},
        )
    return program


def recover(kernel: Any) -> list[dict[str, Any]]:
    """Resume or report lost every process the journal has as live (see the module's note);
    what became of each, as `{"pid", "owner", "program", "outcome", "error"}`."""
    journal = kernel.journal
    if journal is None:
        return []
    report = []
    for row in journal.live():
        pid, owner = int(row["pid"]), str(row["owner"])
        output = journal.output_of(pid)
        outcome, error = "resumed", None
        try:
            spec = row["spec"]
            program = program_of(spec)
            if row["ppid"] != 0 or program.tools:
                raise _NotResumable
            kernel.spawn(
                program,
                spec.get("inputs") or {},
                owner=owner,
                model=spec.get("model"),
                priority=row["priority"],
                budget=row["budget"],
                pid=pid,
                replay=output,
            )
        except _NotResumable:
            outcome, error = "lost", LOST
        except LlmosError as exc:
            outcome, error = "lost", f"{LOST}; it could not be started again: {exc}"
        if outcome == "lost":
            _restore_lost(kernel, row, output, error or LOST)
        report.append(
            {
                "pid": pid,
                "owner": owner,
                "program": row["program"],
                "outcome": outcome,
                "error": error,
            }
        )
    return report


class _NotResumable(Exception):
    pass


def _restore_lost(kernel: Any, row: dict[str, Any], output: list[str], error: str) -> None:
    pid, owner = int(row["pid"]), str(row["owner"])
    proc = Process(
        pid=pid,
        ppid=int(row["ppid"]),
        owner=owner,
        program=str(row["program"]),
        program_path=row["spec"].get("path"),
        inputs=dict(row["spec"].get("inputs") or {}),
        cpu=str(row["spec"].get("model") or "-"),
        entity=Entity(pid=pid, owner=owner, priority=int(row["priority"])),
        top=pid,
        created_at=float(row["created_at"]),
        output=list(output),
    )
    proc.journal = kernel.journal
    proc.base_state = State.RUNNABLE
    proc.exit("lost", error)  # journalled as ended
    kernel.table.restore(proc)
