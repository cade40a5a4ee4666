"""Fairness under the kernel (embedded CPU, max_resident default).

(1) Latency: BATCH long processes at low priority keep the CPU busy while INTERACTIVE short
processes at high priority arrive one at a time, GAP_S apart, under the `priority` policy.
Interactive time-to-first-token (spawn to first output) p50/p99, against the same interactive
requests on an idle machine. Goal: p99 <= 3x idle p99.
(2) Fair share: user A runs 1 process, user B runs 7, under the `fair` policy, for WINDOW_S
seconds; per-user generated tokens; Jain's index over the two users. Goal: >= 0.95.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, jain, n_threads, percentile, quick, table

from llmos import params
from llmos.boot import boot
from llmos.kernel import Kernel
from llmos.proc import Process
from llmos.program import Program, load

QUICK = quick()
BATCH = 3 if QUICK else 8
INTERACTIVE = 3 if QUICK else 12
GAP_S = 0.5 if QUICK else 1.0
WINDOW_S = 8.0 if QUICK else 40.0
LATENCY_GOAL = 3.0
JAIN_GOAL = 0.95
LONG = """---
name: long
description: A long batch job (fairness benchmark).
config:
  temperature: 0
  maxOutputTokens: 4000
input:
  schema:
    start: integer
---
{{role "user"}}
Count upward from {{start}} to {{start}} plus five thousand. Write every number in words, one per
line, and do not skip any.
"""
SHORT = """---
name: short
description: A short interactive request (fairness benchmark).
config:
  temperature: 0
  maxOutputTokens: 8
input:
  schema:
    q: integer
---
{{role "user"}}
Say hello to visitor number {{q}} in one short sentence.
"""


def ttft(kernel: Kernel, program: Program, q: int, priority: int) -> float:
    t0 = time.perf_counter()
    proc = kernel.spawn(program, {"q": q}, priority=priority)
    with proc.cond:
        proc.cond.wait_for(lambda: bool(proc.output) or not proc.alive, timeout=600)
    first = time.perf_counter() - t0
    kernel.wait(proc.pid)
    if proc.exit_status != "ok":
        raise RuntimeError(f"interactive process failed: {proc.error}")
    return first


def interactive(kernel: Kernel, program: Program) -> list[float]:
    out = []
    for q in range(INTERACTIVE):
        out.append(ttft(kernel, program, q, params.MAX_PRIORITY))
        time.sleep(GAP_S)
    return out


def kill_all(kernel: Kernel, procs: list[Process]) -> None:
    for p in procs:
        if p.alive:
            kernel.kill(p.pid)
    for p in procs:
        kernel.wait(p.pid)


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        os.environ[params.ENV_HOME] = home
        (Path(home) / "long.prompt").write_text(LONG)
        (Path(home) / "short.prompt").write_text(SHORT)
        long_p, short_p = load(Path(home) / "long.prompt"), load(Path(home) / "short.prompt")
        system = boot()
        kernel = Kernel(system, policy="priority")
        kernel.cpu(None)
        ttft(kernel, short_p, 999, params.MAX_PRIORITY)  # warm-up
        idle = interactive(kernel, short_p)
        batch = [
            kernel.spawn(long_p, {"start": 10 + 100 * i}, priority=params.MIN_PRIORITY)
            for i in range(BATCH)
        ]
        time.sleep(2.0)  # let the batch fill the CPU
        loaded = interactive(kernel, short_p)
        batch_alive = sum(p.alive for p in batch)
        kill_all(kernel, batch)
        kernel.shutdown()

        kernel = Kernel(system, policy="fair")
        kernel.cpu(None)  # a new kernel puts its own policy on the shared CPU
        procs = [kernel.spawn(long_p, {"start": 7}, owner="alice")]
        procs += [kernel.spawn(long_p, {"start": 1000 * i}, owner="bob") for i in range(1, 8)]
        time.sleep(WINDOW_S)
        per_user = {"alice": 0, "bob": 0}
        for p in procs:
            per_user[p.owner] += p.entity.generated
        early = sum(not p.alive for p in procs)
        kill_all(kernel, procs)
        kernel.shutdown()
    idle_p50, idle_p99 = percentile(idle, 50), percentile(idle, 99)
    load_p50, load_p99 = percentile(loaded, 50), percentile(loaded, 99)
    ratio = load_p99 / idle_p99 if idle_p99 else 0.0
    index = jain(list(per_user.values()))
    print(
        table(
            ["interactive TTFT", "p50 s", "p99 s"],
            [["idle", idle_p50, idle_p99], [f"with {BATCH} batch", load_p50, load_p99]],
        )
    )
    print(f"p99 loaded/idle = {ratio:.2f} (goal <= {LATENCY_GOAL}); batch alive: {batch_alive}")
    print(
        table(
            ["user", "processes", "generated tokens"],
            [["alice", 1, per_user["alice"]], ["bob", 7, per_user["bob"]]],
        )
    )
    print(f"Jain's index = {index:.3f} (goal >= {JAIN_GOAL}); processes ended early: {early}")
    emit(
        "fairness",
        {
            "ttft_idle_p50_s": round(idle_p50, 3),
            "ttft_idle_p99_s": round(idle_p99, 3),
            "ttft_loaded_p50_s": round(load_p50, 3),
            "ttft_loaded_p99_s": round(load_p99, 3),
            "p99_ratio": round(ratio, 3),
            "latency_goal": LATENCY_GOAL,
            "tokens_per_user": per_user,
            "jain": round(index, 4),
            "jain_goal": JAIN_GOAL,
            "pass": ratio <= LATENCY_GOAL and index >= JAIN_GOAL,
            "batch_processes": BATCH,
            "interactive_requests": INTERACTIVE,
            "window_s": WINDOW_S,
            "threads": n_threads(),
            "quick": QUICK,
        },
    )


if __name__ == "__main__":
    main()
