"""Fairness under the kernel (embedded CPU, max_resident default).

(1) Latency: BATCH long generations at low priority keep the CPU busy while INTERACTIVE short
processes at high priority arrive one at a time, GAP_S apart, under the `priority` policy.
The interactive ones are kernel processes (`Kernel.spawn`); the batch ones are direct
`EmbeddedCPU.generate` calls from threads (GenRequest with ignore_eos, so they never end at
the model's end token; programs have no ignore_eos) with low-priority Entities, on the same
CPU the kernel configured. Interactive time-to-first-token (spawn to first output) p50/p99,
against the same interactive requests on an idle machine. Goal: p99 <= 3x idle p99.
(2) Fair share: user A runs 1 generation, user B runs 7 (direct generate calls, ignore_eos,
Entities sharing one Account per owner), under the `fair` policy. After a settling time,
per-user generated tokens are counted inside a WINDOW_S window (Entity.generated at its end
minus at its start); Jain's index over the two users. Goal: >= 0.95.

Every long generation asks for as many tokens as the shared KV can hold for all of them at
once (so it never runs out of KV); one that reaches that length is re-submitted at once by its
thread (counted as a restart), so the load stays on for the whole measurement. All are killed
at the end.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, jain, n_threads, percentile, quick, table

from llmos import params
from llmos.errors import LlmosError
from llmos.hw.cpu.base import GenRequest, Message, collect
from llmos.hw.cpu.llama import EmbeddedCPU
from llmos.kernel.boot import boot
from llmos.kernel.core import Kernel
from llmos.kernel.plugins import sched_policy
from llmos.kernel.program import Program, load
from llmos.kernel.sched.dispatch import PolicyDispatcher
from llmos.kernel.sched.policy import Account, Entity

QUICK = quick()
BATCH = 3 if QUICK else 8
INTERACTIVE = 3 if QUICK else 12
GAP_S = 0.5 if QUICK else 1.0
SETTLE_S = 1.0 if QUICK else 2.0
WINDOW_S = 8.0 if QUICK else 40.0
LATENCY_GOAL = 3.0
JAIN_GOAL = 0.95
KV_RESERVE = 512  # KV cells left for the interactive requests
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


def long_messages(start: int) -> list[Message]:
    text = (
        f"Count upward from {start} to {start} plus five thousand. Write every number in "
        "words, one per line, and do not skip any."
    )
    return [{"role": "user", "content": text}]


class Long:
    """A long generation on its own thread: ignore_eos, re-submitted if it reaches its
    length, until killed. Its Entity (and so its counters) lives across re-submissions."""

    def __init__(
        self, cpu: EmbeddedCPU, messages: list[Message], entity: Entity, max_tokens: int
    ) -> None:
        self.cpu = cpu
        self.messages = messages
        self.entity = entity
        self.max_tokens = max_tokens
        self.in_flight = False
        self.restarts = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.entity.done = False
            request = GenRequest(
                messages=self.messages,
                max_tokens=self.max_tokens,
                ignore_eos=True,
                temperature=0,
                entity=self.entity,
            )
            self.in_flight = True
            try:
                _, last = collect(self.cpu.generate(request))
            except LlmosError as exc:
                self.error = exc
                return
            finally:
                self.in_flight = False
            if last.finish_reason != "length":
                return  # cancelled (killed), or something unexpected
            if not self._stop.is_set():
                self.restarts += 1

    def kill(self) -> None:
        self._stop.set()
        self.entity.killed = True
        self.entity.poke()

    def join(self) -> None:
        self._thread.join(timeout=60)


def max_tokens_for(cpu: EmbeddedCPU, resident: int, prompt: list[Message]) -> int:
    """The longest generation `resident` of them can hold in KV at once, with room left for
    the kept prefixes and the interactive requests."""
    room = cpu.n_ctx - params.PREFIX_CACHE_TOKENS - KV_RESERVE
    return max(64, room // resident - cpu.count_messages(prompt))


def stop_all(longs: list[Long]) -> None:
    for w in longs:
        w.kill()
    for w in longs:
        w.join()
    failed = [w.error for w in longs if w.error is not None]
    if failed:
        raise RuntimeError(f"batch generation failed: {failed[0]}")


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


def generated_by(longs: list[Long]) -> dict[str, int]:
    per_user: dict[str, int] = {}
    for w in longs:
        per_user[w.entity.owner] = per_user.get(w.entity.owner, 0) + w.entity.generated
    return per_user


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        os.environ[params.ENV_HOME] = home
        (Path(home) / "short.prompt").write_text(SHORT)
        short_p = load(Path(home) / "short.prompt")
        system = boot()
        kernel = Kernel(system, policy="priority")
        cpu = kernel.cpu(None)
        assert isinstance(cpu, EmbeddedCPU)
        ttft(kernel, short_p, 999, params.MAX_PRIORITY)  # warm-up
        idle = interactive(kernel, short_p)
        prompts = [long_messages(10 + 100 * i) for i in range(BATCH)]
        batch_tokens = max_tokens_for(cpu, BATCH, prompts[0])
        batch = [
            Long(
                cpu,
                msgs,
                Entity(pid=10_000 + i, owner="batch", priority=params.MIN_PRIORITY),
                batch_tokens,
            )
            for i, msgs in enumerate(prompts)
        ]
        time.sleep(2.0)  # let the batch fill the CPU
        loaded = interactive(kernel, short_p)
        batch_alive = sum(w.in_flight for w in batch)
        batch_restarts = sum(w.restarts for w in batch)
        batch_generated = sum(w.entity.generated for w in batch)
        stop_all(batch)
        kernel.shutdown()

        cpu.schedule(PolicyDispatcher(sched_policy("fair"), params.MAX_RESIDENT), cpu.swap_dir)
        accounts = {"alice": Account(owner="alice"), "bob": Account(owner="bob")}
        owners = ["alice"] + ["bob"] * 7
        starts = [7] + [1000 * i for i in range(1, 8)]
        # Under `fair` one process per owner is resident at a time: two in all.
        share_tokens = max_tokens_for(cpu, 2, long_messages(starts[-1]))
        procs = []
        for i, (owner, start) in enumerate(zip(owners, starts, strict=True)):
            entity = Entity(pid=20_000 + i, owner=owner)
            entity.account = accounts[owner]
            procs.append(Long(cpu, long_messages(start), entity, share_tokens))
        time.sleep(SETTLE_S)
        before = generated_by(procs)
        acct_before = {o: a.tokens for o, a in accounts.items()}
        restarts_before = sum(w.restarts for w in procs)
        time.sleep(WINDOW_S)
        after = generated_by(procs)
        acct_after = {o: a.tokens for o, a in accounts.items()}
        share_alive = sum(w.in_flight for w in procs)
        share_restarts = sum(w.restarts for w in procs) - restarts_before
        stop_all(procs)
        cpu.close()
    per_user = {o: after[o] - before[o] for o in ("alice", "bob")}
    acct_window = {o: acct_after[o] - acct_before[o] for o in ("alice", "bob")}
    early = len(procs) - share_alive
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
    print(
        f"p99 loaded/idle = {ratio:.2f} (goal <= {LATENCY_GOAL}); batch alive: {batch_alive}"
        f"/{BATCH} (restarts {batch_restarts}, {batch_generated} tokens generated)"
    )
    print(
        table(
            ["user", "processes", f"generated tokens in {WINDOW_S:g} s", "account tokens"],
            [
                ["alice", 1, per_user["alice"], acct_window["alice"]],
                ["bob", 7, per_user["bob"], acct_window["bob"]],
            ],
        )
    )
    print(
        f"Jain's index = {index:.3f} (goal >= {JAIN_GOAL}); not generating at window end: "
        f"{early}; restarts in window: {share_restarts}"
    )
    emit(
        "fairness",
        {
            "ttft_idle_p50_s": round(idle_p50, 3),
            "ttft_idle_p99_s": round(idle_p99, 3),
            "ttft_loaded_p50_s": round(load_p50, 3),
            "ttft_loaded_p99_s": round(load_p99, 3),
            "p99_ratio": round(ratio, 3),
            "latency_goal": LATENCY_GOAL,
            "batch_alive": batch_alive,
            "batch_restarts": batch_restarts,
            "batch_max_tokens": batch_tokens,
            "tokens_per_user": per_user,
            "account_tokens_per_user": acct_window,
            "share_alive": share_alive,
            "share_restarts": share_restarts,
            "share_max_tokens": share_tokens,
            "jain": round(index, 4),
            "jain_goal": JAIN_GOAL,
            "pass": ratio <= LATENCY_GOAL and index >= JAIN_GOAL and early == 0,
            "batch_processes": BATCH,
            "interactive_requests": INTERACTIVE,
            "settle_s": SETTLE_S,
            "window_s": WINDOW_S,
            "threads": n_threads(),
            "quick": QUICK,
        },
    )


if __name__ == "__main__":
    main()
