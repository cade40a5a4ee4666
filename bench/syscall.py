"""Syscall overhead: the kernel's own cost per syscall, without device work.

Times `SyscallTable.dispatch` (name lookup, access check, JSON parse of the arguments, schema
validation, the hand-off to a worker thread and back, result labelling) plus appending the
result to the process's context as a `tool` message, for a device whose `call` returns at once.
Two argument shapes: a small one (`calc`'s schema) and a larger object (10 typed fields).
Reported as p50/p99/max in milliseconds over CALLS calls, after a warm-up.

Goal: p99 <= 1 ms.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, quick, table

from llmos.hw.cpu.base import ToolCall
from llmos.hw.dev.base import CallContext, Device, DeviceResult
from llmos.kernel.syscall import SyscallTable

CALLS = 500 if quick() else 10_000
GOAL_MS = 1.0


class Noop(Device):
    """Returns at once: what is timed is the kernel's path, not a device's work."""

    def __init__(self, name: str, schema: dict[str, Any]) -> None:
        self.name = name
        self.description = "does nothing"
        self.schema = schema

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        return DeviceResult.success({"ok": True})


SMALL = {
    "type": "object",
    "properties": {"expression": {"type": "string", "maxLength": 1000}},
    "required": ["expression"],
    "additionalProperties": False,
}
LARGE = {
    "type": "object",
    "properties": {
        **{f"s{i}": {"type": "string"} for i in range(5)},
        **{f"n{i}": {"type": "integer", "minimum": 0} for i in range(5)},
    },
    "required": [f"s{i}" for i in range(5)],
    "additionalProperties": False,
}


def measure(tbl: SyscallTable, call: ToolCall) -> list[float]:
    grants = dict(tbl.devices)
    ctx = CallContext()
    context: list[dict[str, Any]] = []
    times = []
    for i in range(CALLS + 200):
        t0 = time.perf_counter()
        result = tbl.dispatch(call, grants, ctx)
        context.append({"role": "tool", "tool_call_id": call.id, "content": result.segment()})
        dt = time.perf_counter() - t0
        if i >= 200:  # warm-up
            times.append(dt * 1000)
        if len(context) > 100:
            context.clear()
    return times


def main() -> None:
    tbl = SyscallTable({"small": Noop("small", SMALL), "large": Noop("large", LARGE)})
    small = ToolCall(id="c", name="small", arguments=json.dumps({"expression": "17 * 23"}))
    large = ToolCall(
        id="c",
        name="large",
        arguments=json.dumps(
            {**{f"s{i}": "x" * 20 for i in range(5)}, **{f"n{i}": i for i in range(5)}}
        ),
    )
    rows, results = [], {}
    for name, call in (("small", small), ("large", large)):
        t = sorted(measure(tbl, call))
        p50 = statistics.median(t)
        p99 = t[int(len(t) * 0.99) - 1]
        rows.append([name, len(t), p50, p99, t[-1]])
        results[name] = {
            "p50_ms": round(p50, 4),
            "p99_ms": round(p99, 4),
            "max_ms": round(t[-1], 3),
        }
    tbl.close()
    print(table(["arguments", "calls", "p50 ms", "p99 ms", "max ms"], rows))
    worst = max(r["p99_ms"] for r in results.values())
    print(f"worst p99 = {worst:.3f} ms (goal <= {GOAL_MS} ms)")
    emit(
        "syscall",
        {
            "calls": CALLS,
            "by_args": results,
            "worst_p99_ms": worst,
            "goal_ms": GOAL_MS,
            "pass": worst <= GOAL_MS,
        },
    )


if __name__ == "__main__":
    main()
