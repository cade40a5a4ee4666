"""The router: which CPU of a pool a process (or one step of it) runs on.

A pure, synchronous decision over plain data: the pool's `CpuState`s (up or not, load,
capabilities, price, the prompt prefixes its cache holds), a `Job` (the block hashes of its
prompt, what it needs) and the user's `RoutePolicy`. No threads, no I/O, no clock: the pool
(`llmos.kernel.pool`) calls it for every generation and a discrete-event simulator can call it
the same way.

The decision, in order:
1. capability: a CPU that is down, lacks a grammar the job needs, has a smaller context than
   the job's prompt, or runs another model than the job names is not eligible;
2. policy: only the CPUs the user allows, at no more than the user's price per 1k tokens;
3. preference: CPUs not marked `fallback` first; only when none of them is eligible does a
   fallback CPU serve (a brownout: `Decision.brownout` is True);
4. score: the longest cached prefix of the job's prompt (in tokens), less the CPU's load
   (tokens in flight plus `params.ROUTER_QUEUE_TOKENS` per queued request), scaled by
   `params.ROUTER_AFFINITY_WEIGHT`; ties go to the cheaper CPU, then by name (deterministic).

Prefixes are compared by block hashes (`prefix_hashes`): the hash of block k covers every
token before the block's end, so two prompts share block k's hash only if they share all
tokens up to it, as in SGLang's and vLLM's prefix caches.

What this module does not do: run anything, measure load, or remember where it sent a job
(the pool keeps each CPU's `cached` set and counters and passes them in).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from llmos import params


def prefix_hashes(
    tokens: Sequence[int], block: int = params.ROUTER_BLOCK_TOKENS
) -> tuple[str, ...]:
    """The chained hash of each whole `block` of `tokens`: entry k names tokens[: (k+1)*block]."""
    out: list[str] = []
    h = hashlib.blake2b(digest_size=8)
    for end in range(block, len(tokens) + 1, block):
        h.update(b"".join(t.to_bytes(4, "little", signed=True) for t in tokens[end - block : end]))
        out.append(h.copy().hexdigest())
    return tuple(out)


@dataclass(frozen=True)
class CpuState:
    """One CPU of a pool as the router sees it."""

    name: str
    up: bool = True  # loaded, and its circuit breaker is not open
    n_ctx: int = 4096
    grammar: bool = False  # constrained decoding
    model: str = ""  # the model it runs (a GGUF's name, a server's model id)
    price_per_1k: float = 0.0  # what the user pays per 1000 tokens on it
    fallback: bool = False  # serves only when no preferred CPU can
    continuation: bool = False  # can continue a reply from its text so far (failover)
    in_flight: int = 0  # tokens of the generations running on it now
    queued: int = 0  # requests on it now
    cached: frozenset[str] = frozenset()  # block hashes of prompts it has computed


@dataclass(frozen=True)
class Job:
    """What the router knows of one generation: its prompt and what it needs."""

    blocks: tuple[str, ...] = ()  # prefix_hashes of its prompt tokens
    prompt_tokens: int = 0
    grammar: bool = False  # needs constrained decoding
    model: str | None = None  # needs this model (a KV state to reuse, a program's pin)
    pinned: str | None = None  # a CPU named by hand (migrate): placed there if eligible
    avoid: frozenset[str] = frozenset()  # CPUs that just failed it (failover)
    continuation: bool = False  # continues a reply already partly sent (needs a CPU that can)


@dataclass(frozen=True)
class RoutePolicy:
    """The user's say: which CPUs, at what price (None: any)."""

    allowed: frozenset[str] | None = None
    max_price_per_1k: float | None = None


@dataclass(frozen=True)
class Decision:
    """Where a job goes (`cpu` None: nowhere now) and why, in a few words."""

    cpu: str | None
    reason: str
    brownout: bool = False  # placed on a fallback CPU: every preferred one is down or refused
    cached_tokens: int = 0  # the prefix of its prompt the chosen CPU already holds
    scores: dict[str, float] = field(default_factory=dict)


def affinity(job: Job, cpu: CpuState, block: int = params.ROUTER_BLOCK_TOKENS) -> int:
    """Tokens of the job's prompt prefix that `cpu`'s cache holds."""
    n = 0
    for h in job.blocks:
        if h not in cpu.cached:
            break
        n += 1
    return n * block


def _why_not(job: Job, cpu: CpuState, policy: RoutePolicy) -> str | None:
    if not cpu.up:
        return "down"
    if cpu.name in job.avoid:
        return "failed this job"
    if job.grammar and not cpu.grammar:
        return "no grammar"
    if job.continuation and not cpu.continuation:
        return "cannot continue a reply"
    if job.prompt_tokens >= cpu.n_ctx:
        return f"context {cpu.n_ctx} < {job.prompt_tokens}"
    if job.model is not None and cpu.model != job.model:
        return f"runs {cpu.model or 'another model'}"
    if policy.allowed is not None and cpu.name not in policy.allowed:
        return "not allowed by policy"
    if policy.max_price_per_1k is not None and cpu.price_per_1k > policy.max_price_per_1k:
        return f"price {cpu.price_per_1k} > {policy.max_price_per_1k}"
    return None


def score(job: Job, cpu: CpuState) -> float:
    """Higher is better: cached prefix tokens (weighted) less the load in tokens."""
    load = cpu.in_flight + cpu.queued * params.ROUTER_QUEUE_TOKENS
    return params.ROUTER_AFFINITY_WEIGHT * affinity(job, cpu) - load


def route(job: Job, cpus: Iterable[CpuState], policy: RoutePolicy | None = None) -> Decision:
    """Where `job` runs now among `cpus` (see the module note for the order of the rules)."""
    policy = policy or RoutePolicy()
    states = list(cpus)
    refused: list[str] = []
    eligible: list[CpuState] = []
    for cpu in states:
        why = _why_not(job, cpu, policy)
        if why is None:
            eligible.append(cpu)
        else:
            refused.append(f"{cpu.name}: {why}")
    if job.pinned is not None:
        pinned = [c for c in eligible if c.name == job.pinned]
        if pinned:
            return Decision(pinned[0].name, "pinned", pinned[0].fallback, affinity(job, pinned[0]))
    preferred = [c for c in eligible if not c.fallback]
    pick_from = preferred or eligible
    if not pick_from:
        return Decision(None, "no CPU can take it (" + "; ".join(refused or ["empty pool"]) + ")")
    scores = {c.name: score(job, c) for c in pick_from}
    best = min(pick_from, key=lambda c: (-scores[c.name], c.price_per_1k, c.name))
    cached = affinity(job, best)
    brownout = not preferred
    if brownout:
        reason = "fallback: every preferred CPU is down or refused"
    elif cached:
        reason = f"prefix affinity ({cached} tokens cached)"
    else:
        reason = "least loaded"
    return Decision(best.name, reason, brownout, cached, scores)


class RoundRobin:
    """The baseline the benchmark compares against: every eligible CPU in turn, blind to
    prefixes and load. Deterministic; its only state is the turn."""

    def __init__(self) -> None:
        self._turn = 0

    def route(
        self, job: Job, cpus: Iterable[CpuState], policy: RoutePolicy | None = None
    ) -> Decision:
        policy = policy or RoutePolicy()
        eligible = [c for c in cpus if _why_not(job, c, policy) is None]
        if not eligible:
            return Decision(None, "no CPU can take it")
        cpu = eligible[self._turn % len(eligible)]
        self._turn += 1
        return Decision(cpu.name, "round robin", cpu.fallback, affinity(job, cpu))
