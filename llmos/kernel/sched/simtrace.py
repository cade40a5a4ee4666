"""The fleet simulator's inputs: a synthetic trace of requests and failures, and the cost model.

A trace (`make_trace`) has heavy-tailed prompt and output lengths (Pareto tails, capped), a
Zipf-popular set of shared system prompts, users who continue their last conversation (whose
prompt then starts with that whole conversation), Poisson arrivals sized to a target load, and
failures: CPUs that go down for a while. Prompts are chains of 16-token blocks (a block id
stands for its tokens, as paged-KV servers hash blocks), so a 4,000-token prompt costs 250
ints, not 4,000. The `CostModel` is the time a step takes (by default this project's
measurements of the embedded model on two cores); the trace uses it only to size its arrivals.

Invariants: a trace is a pure function of its `Workload` (seed included), fleet size and cost
model; block ids are never reused across unrelated text, so equal blocks mean equal tokens.

What this module does not do: simulate anything (see `llmos.kernel.sched.sim`), or read real
traffic.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from llmos import params

BLOCK = params.SIM_BLOCK_TOKENS


@dataclass
class Workload:
    """What a synthetic trace looks like; `for_fleet` sizes it to a number of CPUs."""

    n_requests: int = 2000
    n_users: int = 1000
    n_system_prompts: int = 40
    zipf_s: float = 1.1  # popularity of system prompts: weight of the k-th is 1 / k**s
    system_median: int = 400  # tokens (lognormal)
    user_min: int = 24  # tokens (Pareto tail)
    user_alpha: float = 1.4
    output_min: int = 16  # tokens (Pareto tail)
    output_alpha: float = 1.8
    max_tokens: int = 4096  # cap of any one length
    continue_p: float = 0.4  # a user's request continues their last conversation
    load: float = 0.7  # offered decode load as a fraction of the fleet's batched capacity
    failures: int = 0  # CPUs that fail during the trace
    down_s: float = 60.0  # how long a failed CPU stays down
    seed: int = 0

    @classmethod
    def for_fleet(cls, n_cpus: int, **over: float) -> Workload:
        base = cls(
            n_requests=params.SIM_REQUESTS_PER_CPU * n_cpus,
            n_users=params.SIM_USERS_PER_CPU * n_cpus,
            n_system_prompts=max(10, 4 * n_cpus),
            failures=max(1, n_cpus // 20),
        )
        for k, v in over.items():
            setattr(base, k, type(getattr(base, k))(v))
        return base


@dataclass
class Request:
    id: int
    user: str
    arrival: float
    blocks: tuple[int, ...]  # the prompt as block ids (each stands for BLOCK tokens)
    output: int  # tokens to generate

    @property
    def prompt_tokens(self) -> int:
        return len(self.blocks) * BLOCK


@dataclass
class Failure:
    at: float
    cpu: int  # index into the fleet
    down_s: float


@dataclass
class Trace:
    requests: list[Request]
    failures: list[Failure]


def _pareto(rng: random.Random, minimum: int, alpha: float, cap: int) -> int:
    return min(cap, int(minimum * (1.0 - rng.random()) ** (-1.0 / alpha)))


def make_trace(w: Workload, n_cpus: int, cost: CostModel) -> Trace:
    """A deterministic trace for `w` on `n_cpus` CPUs (the same seed, the same trace)."""
    rng = random.Random(w.seed)
    blocks = itertools.count(1)

    def run_of(n_tokens: int) -> tuple[int, ...]:  # fresh blocks standing for n_tokens
        return tuple(next(blocks) for _ in range(max(1, n_tokens // BLOCK)))

    systems = [
        run_of(min(w.max_tokens, int(rng.lognormvariate(0, 0.8) * w.system_median)))
        for _ in range(w.n_system_prompts)
    ]
    weights = [1.0 / (k + 1) ** w.zipf_s for k in range(w.n_system_prompts)]
    favourite = {u: rng.choices(range(w.n_system_prompts), weights)[0] for u in range(w.n_users)}
    last: dict[int, tuple[int, ...]] = {}
    requests = []
    for i in range(w.n_requests):
        u = rng.randrange(w.n_users)
        asked = run_of(_pareto(rng, w.user_min, w.user_alpha, w.max_tokens))
        out = _pareto(rng, w.output_min, w.output_alpha, w.max_tokens)
        head = last.get(u) if u in last and rng.random() < w.continue_p else None
        prompt = (head or systems[favourite[u]]) + asked
        if len(prompt) * BLOCK > w.max_tokens * 2:  # a conversation too long starts afresh
            prompt = systems[favourite[u]] + asked
        answer = run_of(out)
        last[u] = prompt + answer
        requests.append(Request(i, f"u{u}", 0.0, prompt, out))
    # Arrivals: Poisson at the rate that offers `load` of the fleet's capacity, counting each
    # request's whole prompt as computed (caches only lower the load).
    per_token_s = cost.step_s(params.SIM_SLOTS) / params.SIM_SLOTS  # a batched decode token
    work = sum(cost.step_s(0, r.prompt_tokens) + r.output * per_token_s for r in requests)
    rate = w.load * n_cpus / (work / len(requests))
    t = 0.0
    for r in requests:
        t += rng.expovariate(rate)
        r.arrival = t
    horizon = t
    failures = [
        Failure(at=rng.uniform(0.1, 0.8) * horizon, cpu=rng.randrange(n_cpus), down_s=w.down_s)
        for _ in range(w.failures)
    ]
    return Trace(requests, sorted(failures, key=lambda f: f.at))


@dataclass
class CostModel:
    """Seconds a step takes; by default the embedded model's measured figures (2 cores)."""

    prefill_tok_s: float = 300.0
    step_base_s: float = 0.0035
    step_per_seq_s: float = 0.00435

    def step_s(self, n_decoding: int, prefill_tokens: int = 0) -> float:
        decode = self.step_base_s + self.step_per_seq_s * n_decoding if n_decoding else 0.0
        return decode + prefill_tokens / self.prefill_tok_s
