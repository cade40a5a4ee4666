"""Scale: 1,000 processes in the table; kernel memory and the scheduler's cost per step.

(1) Kernel: spawn PROCS processes on a CPU whose `generate` blocks until released (they sit in
the table as blocked/waiting threads, like processes waiting on a syscall or for a slot), and
measure the kernel process's RSS before and after (VmRSS), per process.
(2) Scheduler: PROCS entities (from a ProcessTable: most of them stopped or waiting, a few
resident), and each policy's `select` over them for the default number of slots, as the
embedded CPU calls it once per engine step; p50/p99 over STEPS calls, with the entities'
counters changing between calls as decoding would change them.

Goal: policy.select <= 1 ms per step (p99) with 1,000 processes, for every policy.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, percentile, quick, rss_kib, table

from llmos import params
from llmos.hw.cpu.base import Chunk, GenRequest
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel.boot import boot
from llmos.kernel.core import Kernel
from llmos.kernel.proc import ProcessTable
from llmos.kernel.program import load
from llmos.kernel.sched.policy import POLICIES, Entity

QUICK = quick()
PROCS = 1000
STEPS = 200 if QUICK else 2000
GOAL_MS = 1.0
PROGRAM = """---
name: waiter
description: Waits (scale benchmark).
---
Wait for it.
"""


class BlockingCPU(ScriptedCPU):
    """Every generate blocks until `release` is set, then says one word."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "blocking"
        self.release = threading.Event()

    def generate(self, request: GenRequest) -> Iterator[Chunk]:
        self.release.wait()
        yield Chunk(text="ok")
        yield Chunk(done=True, finish_reason="stop", prompt_tokens=3, completion_tokens=1)


def kernel_memory() -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as home:
        os.environ[params.ENV_HOME] = home
        (Path(home) / "waiter.prompt").write_text(PROGRAM)
        program = load(Path(home) / "waiter.prompt")
        kernel = Kernel(boot(), remote_in_flight=PROCS)
        cpu = BlockingCPU()
        kernel.add_cpu(cpu)
        before = rss_kib()
        procs = [kernel.spawn(program, model=cpu.name) for _ in range(PROCS)]
        time.sleep(1.0)
        after = rss_kib()
        live = sum(p.alive for p in procs)
        cpu.release.set()
        for p in procs:
            kernel.wait(p.pid, timeout=60)
        kernel.shutdown()
    return (after - before) / PROCS, live


def scheduler_cost() -> dict[str, dict[str, float]]:
    table_ = ProcessTable()
    rng = random.Random(0)
    entities: list[Entity] = []
    for i in range(PROCS):
        proc = table_.create(
            owner=f"user{i % 10}",
            program="p",
            program_path=None,
            inputs={},
            cpu="embedded",
            priority=rng.randint(params.MIN_PRIORITY, params.MAX_PRIORITY),
        )
        proc.entity.stopped = i % 3 == 0
        proc.entity.swapped = "ram" if i % 3 == 1 else "disk"
        entities.append(proc.entity)
    runnable = [e for e in entities if not e.stopped]
    out = {}
    slots = params.MAX_RESIDENT
    for name, make in POLICIES.items():
        policy = make()
        resident: set[Entity] = set()
        times = []
        for _ in range(STEPS):
            t0 = time.perf_counter()
            chosen = policy.select(runnable, slots, resident)
            times.append((time.perf_counter() - t0) * 1000)
            resident = set(chosen)
            for e in chosen:  # one decoded token each, as an engine step does
                e.charge(generated=1)
        out[name] = {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99)}
    return out


def main() -> None:
    per_proc_kib, live = kernel_memory()
    costs = scheduler_cost()
    worst = max(c["p99_ms"] for c in costs.values())
    print(f"kernel RSS per blocked process: {per_proc_kib:.1f} KiB ({live} of {PROCS} alive)")
    print(
        table(
            ["policy", "select p50 ms", "select p99 ms"],
            [[n, c["p50_ms"], c["p99_ms"]] for n, c in costs.items()],
        )
    )
    print(f"worst p99 = {worst:.3f} ms over {PROCS} processes (goal <= {GOAL_MS} ms)")
    emit(
        "scale",
        {
            "processes": PROCS,
            "rss_kib_per_process": round(per_proc_kib, 1),
            "blocked_alive": live,
            "select_ms": {n: {k: round(v, 4) for k, v in c.items()} for n, c in costs.items()},
            "worst_p99_ms": round(worst, 4),
            "goal_ms": GOAL_MS,
            "pass": worst <= GOAL_MS,
            "steps": STEPS,
            "quick": QUICK,
        },
    )


if __name__ == "__main__":
    main()
