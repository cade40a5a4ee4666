"""Router: prefix-affinity routing against round robin, on two real embedded engines.

A shared-prefix workload: DOCS long system prompts (documents), REQUESTS questions, each about
one document, in a fixed shuffled order, sent one at a time to a pool of two embedded engines
(`llmos.kernel.pool.PoolCPU`). Each generates one token, so what is measured is prompt work.
The same workload runs twice on fresh engines: placed by the router (`route`: the engine whose
cache holds the longest prefix of the prompt) and by round robin (`RoundRobin`). Measured:
prompt tokens computed (prompt tokens less those an engine's prefix cache supplied) and time
to first token (median, p90).

Goal: affinity computes each document once in the whole pool: its prompt tokens computed are
at most 1.1x the ideal (every prompt's tokens, less the document each request after a
document's first could take from a cache). Round robin computes each document once per engine.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, median, n_threads, percentile, quick, table

from llmos.hw.cpu.base import CPU, GenRequest, Message
from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path
from llmos.kernel.pool import MemberSpec, PoolCPU, PoolSpec
from llmos.kernel.sched.router import RoundRobin, route

QUICK = quick()
DOCS = 2 if QUICK else 4
REQUESTS = 6 if QUICK else 24
PREFIX = 150 if QUICK else 600
GOAL = 1.1
SYSTEM = "Answer questions about this ledger.\n\n"
SENTENCE = (
    "Ledger {d}, entry {i}. The harbour office of town {d} records every mooring fee, cargo "
    "manifest and departure, audited each spring by the council. "
)


def document(d: int, cpu: EmbeddedCPU) -> str:
    parts: list[str] = []
    while len(cpu.tokenize("".join(parts))) < PREFIX:
        parts.append(SENTENCE.format(d=d, i=len(parts) + 1))
    return "".join(parts)


def request(doc: str, i: int) -> GenRequest:
    messages: list[Message] = [
        {"role": "system", "content": SYSTEM + doc},
        {"role": "user", "content": f"Question {i}: what does entry {i + 1} record?"},
    ]
    return GenRequest(messages=messages, max_tokens=1, temperature=0.0)


def workload(docs: list[str]) -> list[GenRequest]:
    order = [i % DOCS for i in range(REQUESTS)]
    random.Random(7).shuffle(order)
    return [request(docs[d], i) for i, d in enumerate(order)]


def measure(name: str, router: Callable[..., Any], requests: list[GenRequest]) -> dict[str, Any]:
    engines: dict[str, CPU] = {
        f"e{k}": EmbeddedCPU(embedded_model_path(), n_threads=n_threads(), name=f"e{k}")
        for k in (1, 2)
    }
    try:
        spec = PoolSpec("bench", tuple(MemberSpec(n, n) for n in engines))
        pool = PoolCPU(spec, engines.__getitem__, router=router)
        for cpu in engines.values():  # warm-up on unrelated text
            for _ in cpu.generate(
                GenRequest(messages=[{"role": "user", "content": "Hi."}], max_tokens=2)
            ):
                pass
        shared0 = sum(c.stats()["prefix_shared_tokens"] for c in engines.values())
        prompt = 0
        ttft: list[float] = []
        t0 = time.perf_counter()
        for req in requests:
            start = time.perf_counter()
            first = None
            for chunk in pool.generate(req):
                if first is None:
                    first = time.perf_counter() - start
                if chunk.done:
                    prompt += chunk.prompt_tokens
            ttft.append(first or 0.0)
        wall = time.perf_counter() - t0
        shared = sum(c.stats()["prefix_shared_tokens"] for c in engines.values()) - shared0
        return {
            "router": name,
            "prompt_tokens": prompt,
            "computed": prompt - shared,
            "ttft_median_s": median(ttft),
            "ttft_p90_s": percentile(ttft, 90),
            "wall_s": wall,
        }
    finally:
        for cpu in engines.values():
            cpu.close()


def main() -> None:
    probe = EmbeddedCPU(embedded_model_path(), n_threads=n_threads())
    docs = [document(d, probe) for d in range(DOCS)]

    def shared(doc: str) -> int:
        """Tokens two requests about `doc` have in common: what a cache can supply."""
        a, b = (probe.prompt_tokens(request(doc, i).messages) for i in (0, 1))
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    shareable = sum(shared(d) for d in docs) // DOCS
    probe.close()

    requests = workload(docs)
    affinity = measure("prefix affinity", route, requests)
    rr = measure("round robin", RoundRobin().route, requests)
    rows = [
        [
            r["router"],
            len(requests),
            r["prompt_tokens"],
            r["computed"],
            r["ttft_median_s"],
            r["ttft_p90_s"],
            r["wall_s"],
        ]
        for r in (affinity, rr)
    ]
    print(
        table(
            [
                "router",
                "requests",
                "prompt tokens",
                "computed",
                "ttft med s",
                "ttft p90 s",
                "wall s",
            ],
            rows,
        )
    )
    ratio = affinity["computed"] / max(rr["computed"], 1)
    ideal = affinity["prompt_tokens"] - (len(requests) - DOCS) * shareable
    of_ideal = affinity["computed"] / max(ideal, 1)
    print(
        f"affinity computes {ratio:.2f}x the prompt tokens round robin does; "
        f"{of_ideal:.2f}x the ideal of {ideal} (goal <= {GOAL}x)"
    )
    emit(
        "router",
        {
            "engines": 2,
            "documents": DOCS,
            "requests": len(requests),
            "prefix_tokens": PREFIX,
            "affinity_computed": affinity["computed"],
            "rr_computed": rr["computed"],
            "affinity_ttft_median_s": round(affinity["ttft_median_s"], 4),
            "rr_ttft_median_s": round(rr["ttft_median_s"], 4),
            "affinity_wall_s": round(affinity["wall_s"], 3),
            "rr_wall_s": round(rr["wall_s"], 3),
            "computed_ratio": round(ratio, 3),
            "ideal_computed": ideal,
            "affinity_of_ideal": round(of_ideal, 3),
            "goal": GOAL,
            "pass": of_ideal <= GOAL,
        },
    )


if __name__ == "__main__":
    main()
