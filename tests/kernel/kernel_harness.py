"""Programs, waits and references shared by the in-process kernel tests (`test_kernel_*.py`;
their fixtures are in conftest.py).

Real-model tests share one `EmbeddedCPU` per test module (installed as the `embedded` CPU of
every kernel by putting it in `llmos.kernel.cpus`'s cache) and keep replies short. Greedy
decoding with one resident process per step (`max_resident=1`) is bit-exact, so a process
preempted and restored must produce exactly what it produces alone (`reference`). Remote-CPU
behaviour is tested with a `ScriptedCPU` (`PacedCPU`) registered through `Kernel.add_cpu` and
spawned with `model="scripted"`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import llmos.kernel.cpus as cpu_mod
from llmos.hw.cpu.base import Chunk, GenRequest
from llmos.hw.cpu.llama import EmbeddedCPU
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel.boot import System
from llmos.kernel.core import Kernel
from llmos.kernel.proc import Process, State

STORY_TOKENS = 40  # > the rr quantum (32), so rr preempts; <= 48 to stay quick
STORY = f"""---
config:
  maxOutputTokens: {STORY_TOKENS}
---
You are a storyteller. You always write long, detailed stories.
"""
SHORT = """---
config:
  maxOutputTokens: 8
---
You answer briefly.
"""
ECHO = """---
config:
  maxOutputTokens: 64
---
Say ok.
"""
TOPICS = (
    "Tell me a story about a dragon who learns to read.",
    "Tell me a story about a lighthouse keeper and a storm.",
    "Tell me a story about a robot that grows a garden.",
)
SETTLE_S = 30.0


def wait_for(cond: Callable[[], bool], timeout: float = SETTLE_S, step: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def cpu_idle(cpu: EmbeddedCPU) -> bool:
    """No jobs, and every slot free or holding a finished prompt kept as a shared prefix."""
    stats = cpu.stats()
    kept = stats.get("cached_prefixes", 0)
    return stats["jobs"] == 0 and cpu.engine.free_slots + kept == cpu.engine.n_seq_max


_references: dict[tuple[str, str], str] = {}


def reference(make_kernel: Callable[..., Kernel], program: str, text: str) -> str:
    """What `program` answers to `text` when it runs alone (one process in its kernel), from an
    empty prefix cache. It leaves the cache empty, so the process it is compared with starts
    from the same state (reusing another prompt's cached KV, computed in a batch of another
    shape, may change greedy output in its last bits)."""
    cpu = cpu_mod._cache["embedded"]
    assert isinstance(cpu, EmbeddedCPU)
    forget = cpu.forget_prefixes
    forget()
    key = (program, text)
    if key not in _references:
        kernel = make_kernel(policy="fifo", max_resident=1)
        proc = kernel.spawn(program, {"input": text})
        kernel.wait(proc.pid, timeout=120)
        assert proc.exit_status == "ok", proc.error
        _references[key] = proc.text
        forget()
    return _references[key]


def wait_reaped(kernel: Kernel, proc: Process) -> None:
    """Wait until the process's thread is gone (exit is noted in the table before that)."""
    assert kernel.wait(proc.pid, timeout=120).alive is False
    assert wait_for(lambda: proc.pid not in kernel._threads)


def record_states(proc: Process, until: float = 120.0) -> list[str]:
    """Poll the process's state until it exits; the distinct states in the order seen."""
    seen: list[str] = []
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        state = proc.state.value
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == State.EXITED.value:
            break
        time.sleep(0.001)
    return seen


def tokens_of(cpu: EmbeddedCPU, system: System, program: str, text: str) -> int:
    return cpu.count_messages(system.load_program(program).render({"input": text}))


class PacedCPU(ScriptedCPU):
    """A ScriptedCPU that takes `delay` seconds per word and records when each request ran."""

    def __init__(self, *replies: Any, delay: float = 0.0) -> None:
        super().__init__(replies)
        self.delay = delay
        self.active = 0
        self.max_active = 0
        self.spans: list[tuple[float, float]] = []
        self._count = threading.Lock()

    def generate(self, request: GenRequest) -> Iterator[Chunk]:
        with self._count:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        start = time.monotonic()
        try:
            for chunk in super().generate(request):
                if chunk.text:
                    time.sleep(self.delay)
                yield chunk
        finally:
            with self._count:
                self.active -= 1
                self.spans.append((start, time.monotonic()))
