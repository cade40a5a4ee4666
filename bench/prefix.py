"""Shared prefix: N processes of one program reading the same long document.

Each process's prompt is one ~PREFIX-token system prompt (a document) plus a short distinct
question; each generates one token, so the time measured is prompt work. The N requests go to
the embedded CPU at once (N threads calling `EmbeddedCPU.generate`), and the CPU's prefix index
should let them compute the shared prefix's KV once. Compared with one such process alone:
total wall time for the N / time for 1.

Goal: <= 1.3x (without sharing it is about N x).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, n_threads, quick, table

from llmos.hw.cpu.base import GenRequest, Message
from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path

QUICK = quick()
N = 3 if QUICK else 8
PREFIX = 120 if QUICK else 1000
GOAL = 1.3
SENTENCE = (
    "Section {i}. The harbour office records every mooring fee, every cargo manifest and every "
    "departure in a ledger that is audited each spring by the town council. "
)


def document(cpu: EmbeddedCPU) -> str:
    parts: list[str] = []
    while len(cpu.tokenize("".join(parts))) < PREFIX:
        parts.append(SENTENCE.format(i=len(parts) + 1))
    return "".join(parts)


def request(doc: str, i: int) -> GenRequest:
    messages: list[Message] = [
        {"role": "system", "content": "Answer questions about this document.\n\n" + doc},
        {"role": "user", "content": f"Question {i}: what is recorded in section {i + 1}?"},
    ]
    return GenRequest(messages=messages, max_tokens=1, temperature=0.0)


def run(cpu: EmbeddedCPU, doc: str, ids: range) -> float:
    def one(i: int) -> None:
        for _ in cpu.generate(request(doc, i)):
            pass

    threads = [threading.Thread(target=one, args=(i,)) for i in ids]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def measure(doc: str, ids: range) -> tuple[float, int]:
    """Wall time of these requests on a fresh CPU (no prefix kept from earlier requests),
    after a warm-up on unrelated text; and the prefix tokens shared meanwhile."""
    cpu = EmbeddedCPU(embedded_model_path(), n_threads=n_threads())
    try:
        for _ in cpu.generate(
            GenRequest(messages=[{"role": "user", "content": "Hi."}], max_tokens=4)
        ):
            pass
        before = cpu.stats()["prefix_shared_tokens"]
        wall = run(cpu, doc, ids)
        return wall, cpu.stats()["prefix_shared_tokens"] - before
    finally:
        cpu.close()


def main() -> None:
    probe = EmbeddedCPU(embedded_model_path(), n_threads=n_threads(), n_ctx=4096)
    doc = document(probe)
    prompt_tokens = len(probe.prompt_tokens(request(doc, 0).messages))
    probe.close()
    alone, _ = measure(doc, range(1))
    together, shared = measure(doc, range(1, N + 1))
    ratio = together / alone
    print(
        table(
            ["case", "processes", "prompt tokens each", "wall s", "prefix tokens shared"],
            [
                ["alone", 1, prompt_tokens, alone, 0],
                ["together", N, prompt_tokens, together, shared],
            ],
        )
    )
    print(f"{N} together / 1 alone = {ratio:.2f}x (goal <= {GOAL}x; no sharing ~{N}x)")
    emit(
        "prefix",
        {
            "processes": N,
            "prefix_tokens": PREFIX,
            "prompt_tokens": prompt_tokens,
            "alone_s": round(alone, 3),
            "together_s": round(together, 3),
            "shared_tokens": shared,
            "ratio": round(ratio, 3),
            "goal": GOAL,
            "pass": ratio <= GOAL,
            "threads": n_threads(),
            "quick": QUICK,
        },
    )


if __name__ == "__main__":
    main()
