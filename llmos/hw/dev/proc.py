"""The process devices: `call` (run another program as a child process) and `ask` (a question
to the person who runs the program).

`call {program, inputs}` spawns the named program (an installed name, a program in the
owner's policy's `call_paths`, or a path beside the calling program's own file; never `..` or
a file elsewhere: the kernel's handle decides) as a child of the calling process, waits for
it, and returns `{pid, exit_status, output}` (output parsed when the child's program replies in
JSON). The child gets the caller's owner, at most the caller's devices, priority and remaining
budget (its tokens are charged to the caller too), and the caller's CPU unless its program
names a model. Spawn depth is bounded
(`params.MAX_SPAWN_DEPTH`), so a program that calls itself ends with the error result "spawn
depth N exceeds the limit of M", never a hang.

`ask {question}` blocks the process in state `waiting` until someone answers with `llmos
answer PID TEXT` (the daemon's `answer` op) or `Kernel.answer(pid, text)`, and returns
`{answer}`. `llmos ps` shows the pending question.

Both reach the kernel only through `ctx.proc` (a `ProcHandle`, set when a `Kernel` spawns the
process; see `llmos.kernel.handles`). Outside the kernel (no handle),
`call` fails with a message that says how to run under the kernel, and `ask` prompts on stderr
and reads a line from the terminal when stdin is a TTY ("no one to ask" otherwise).

Waiting: a `call` waits at most `llmos.hw.dev.call.timeout_s` (default and cap
`params.CALL_TIMEOUT_S`), then kills the child; an `ask` waits at most
`llmos.hw.dev.ask.timeout_s` (cap `params.ASK_TIMEOUT_S`). Each device declares a syscall
wall-clock limit (`Device.timeout_s`) a margin above its cap, so the syscall layer never
abandons it first. While waiting, the process gives back its place on a
remote CPU (the handle's `wait` does, like `ask`), so a chain of calls cannot starve its own
children of the CPU; and a waiting process that is killed stops waiting (a `call` kills its
child too).

Invariants: never raises for a failure of its own work (a missing program, a refused spawn, a
child that fails, a timeout, a kill are failure results); every child spawned by `call` has
exited, or been killed, when `call` returns.

What this module does not do: find, schedule, run or kill the child (the handle does), or keep
the question table (the kernel does, `llmos.kernel.questions`, so that `ps` and `answer` see
it).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import threading
from typing import Any

from llmos import params
from llmos.errors import LlmosError
from llmos.hw.dev.base import CallContext, Device, DeviceResult

NO_KERNEL = "call needs the kernel (run with `llmos kernel start` and `llmos run -d`)"
NO_ONE_TO_ASK = (
    "no one to ask: not running under the kernel and stdin is not a terminal "
    "(run with `llmos run -d` and answer with `llmos answer PID TEXT`)"
)


def _wait_limit(ctx: CallContext, cap: float) -> float:
    """How long a device may wait: the program's `timeout_s` option, at most `cap`, and always
    a margin inside the syscall layer's own limit."""
    limit = cap
    option = ctx.options.get("timeout_s")
    if isinstance(option, int | float) and not isinstance(option, bool) and option > 0:
        limit = min(limit, float(option))
    inside = ctx.timeout_s - params.PROC_DEVICE_MARGIN_S
    if inside <= 0:
        inside = ctx.timeout_s / 2
    return max(0.0, min(limit, inside))


class CallDevice(Device):
    name = "call"
    timeout_s = params.CALL_TIMEOUT_S + params.PROC_DEVICE_MARGIN_S
    description = (
        "Run another program as a child process and get its output. Give the program's name "
        "(or path) and its inputs as an object. Returns {pid, exit_status, output}."
    )
    schema: dict[str, Any] = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "program": {"type": "string", "minLength": 1, "description": "program name or path"},
            "inputs": {"type": "object", "description": "the program's inputs"},
        },
        "required": ["program"],
        "additionalProperties": False,
    }

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        if ctx.proc is None:
            return DeviceResult.failure(NO_KERNEL)
        ref = str(args["program"])
        try:
            child = ctx.proc.spawn(ref, dict(args.get("inputs") or {}))
        except LlmosError as exc:
            return DeviceResult.failure(f"cannot start {ref}: {exc}")
        limit = _wait_limit(ctx, params.CALL_TIMEOUT_S)
        end = ctx.proc.wait(child, limit)
        if end.how == "killed":
            return DeviceResult.failure(
                f"killed while waiting for {child.program} (pid {child.pid})"
            )
        if end.how == "timeout":
            return DeviceResult.failure(
                f"{child.program} (pid {child.pid}) did not finish within {limit:g} s; "
                "it was killed"
            )
        if end.exit_status != "ok":
            return DeviceResult.failure(
                f"{child.program} (pid {child.pid}) ended {end.exit_status}"
                + (f": {end.error}" if end.error else "")
            )
        output: Any = end.text
        if child.json_mode:
            with contextlib.suppress(json.JSONDecodeError):  # else keep the text
                output = json.loads(output)
        return DeviceResult.success(
            {"pid": child.pid, "exit_status": end.exit_status, "output": output}
        )


class AskDevice(Device):
    name = "ask"
    timeout_s = params.ASK_TIMEOUT_S + params.PROC_DEVICE_MARGIN_S
    description = (
        "Ask the user a question and wait for the answer. Use it only when you cannot go on "
        "without information only the user has. Returns {answer}."
    )
    schema: dict[str, Any] = {  # noqa: RUF012
        "type": "object",
        "properties": {"question": {"type": "string", "minLength": 1}},
        "required": ["question"],
        "additionalProperties": False,
    }

    def __init__(self) -> None:
        self._tty_lock = threading.Lock()  # one terminal prompt at a time

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        question = str(args["question"])
        limit = _wait_limit(ctx, params.ASK_TIMEOUT_S)
        try:
            if ctx.proc is not None:
                answer = ctx.proc.ask(question, limit)
            else:
                answer = self._ask_tty(question, limit)
        except LlmosError as exc:
            return DeviceResult.failure(str(exc))
        return DeviceResult.success({"answer": answer})

    def _ask_tty(self, question: str, limit: float) -> str:
        if not stdin_is_tty():
            raise LlmosError(NO_ONE_TO_ASK)
        with self._tty_lock:
            try:
                with open("/dev/tty", encoding="utf-8", errors="replace") as tty:
                    sys.stderr.write(f"\nllmos: the program asks: {question}\n> ")
                    sys.stderr.flush()
                    ready, _, _ = select.select([tty], [], [], limit)
                    if not ready:
                        sys.stderr.write("\n")
                        raise LlmosError(f"no answer within {limit:g} s")
                    line = tty.readline()
            except OSError as exc:
                raise LlmosError(f"{NO_ONE_TO_ASK} ({exc.strerror})") from exc
        if not line:
            raise LlmosError("no answer: the terminal was closed")
        return line.rstrip("\n")


def stdin_is_tty() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, ValueError, OSError):
        return False
