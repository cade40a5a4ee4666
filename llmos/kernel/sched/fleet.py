"""A fleet-wide view for routing at scale: `router.route`'s decisions, in time that grows with
the CPUs that can win rather than with the fleet.

`route()` looks at every CPU it is given: right for a pool of a few CPUs, but at a thousand
CPUs a decision costs milliseconds (bench/sim.py). A `Fleet` keeps, updated as things change
instead of rebuilt for each decision:
- each CPU's `CpuState` (up, capabilities, price, load), without its cache;
- a directory: block hash -> the CPUs holding it, with a count per CPU (several cached
  prompts of one CPU can hold the same block);
- the CPUs in load order: (load, price, blocks held, name) in a sorted list.

`Fleet.route(job, policy)` gathers the only CPUs that can win under route()'s rules, then lets
route() decide among them:
- of the CPUs holding a prefix of the job's prompt, in order of score (cached tokens weighted,
  less load; then price, blocks held, name), the first eligible preferred CPU and the first
  eligible fallback one;
- in load order, the first eligible preferred CPU and the first eligible fallback one (the best
  of those holding no prefix: their score is minus their load);
- the pinned CPU, if any.
A job carrying a KV state (`Job.kv_model`: a reply moving after a failover or a migration)
scores on every CPU of that model, so it is routed over the whole fleet (a rare event).
Any other eligible CPU scores no higher than one of these and loses the tie-break to it
(candidates carry their matched blocks as `cached` and their whole cache's size as `held`). With
none eligible, route() sees the whole fleet, for its full reason.

Invariants:
- A CPU's blocks are prefix-closed: a block hash names its whole prefix (`prefix_hashes` chains
  them), so a CPU holding block k holds blocks 0..k-1; its matched prefix is found by binary
  search over the job's blocks.
- The decision (CPU, brownout, cached tokens) is route()'s on the whole fleet; only
  `Decision.scores` is smaller (the candidates'). tests/kernel/test_fleet.py compares both on
  random fleets.

What this module does not do: measure anything (its owner reports loads and caches), or hold
any policy of its own.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sortedcontainers import SortedList

from llmos import params
from llmos.kernel.sched.router import CpuState, Decision, Job, RoutePolicy, load, route, why_not


class Fleet:
    """CPUs by name, their caches in one directory, and their load order."""

    def __init__(self, cpus: Iterable[CpuState] = ()) -> None:
        self._states: dict[str, CpuState] = {}
        self._order: SortedList = SortedList()
        self._held: dict[str, Counter[str]] = {}  # name -> block hash -> cached prompts with it
        self._dir: dict[str, set[str]] = {}  # block hash -> names of the CPUs holding it
        for cpu in cpus:
            self.add(cpu)

    def __len__(self) -> int:
        return len(self._states)

    def _key(self, cpu: CpuState) -> tuple[int, float, int, str]:
        return (load(cpu), cpu.price_per_1k, len(self._held.get(cpu.name, ())), cpu.name)

    # --- what the owner reports ----------------------------------------------------------------

    def add(self, cpu: CpuState) -> None:
        """A new CPU (its `cached` blocks go into the directory)."""
        if cpu.name in self._states:
            raise ValueError(f"{cpu.name} is already in the fleet")
        self._states[cpu.name] = dataclasses.replace(cpu, cached=frozenset(), held=None)
        self._held[cpu.name] = Counter()
        self._order.add(self._key(cpu))
        self.cache_add(cpu.name, cpu.cached)

    def update(self, name: str, **changes: Any) -> None:
        """Change a CPU's state (up, in_flight, queued, price...; not `cached`)."""
        if "cached" in changes or "held" in changes:
            raise ValueError("report cache changes with cache_add and cache_drop")
        old = self._states[name]
        new = dataclasses.replace(old, **changes)
        if self._key(new) != self._key(old):
            self._order.remove(self._key(old))
            self._order.add(self._key(new))
        self._states[name] = new

    def cache_add(self, name: str, blocks: Iterable[str]) -> None:
        """`name` now caches a prompt with these block hashes."""
        state, held = self._states[name], self._held[name]
        self._order.remove(self._key(state))
        for h in blocks:
            if not held[h]:
                self._dir.setdefault(h, set()).add(name)
            held[h] += 1
        self._order.add(self._key(state))

    def cache_drop(self, name: str, blocks: Iterable[str]) -> None:
        """`name` evicted a cached prompt with these block hashes."""
        state, held = self._states[name], self._held[name]
        self._order.remove(self._key(state))
        for h in blocks:
            if held[h] <= 1:
                held.pop(h, None)
                holders = self._dir.get(h)
                if holders is not None:
                    holders.discard(name)
                    if not holders:
                        del self._dir[h]
            else:
                held[h] -= 1
        self._order.add(self._key(state))

    def cache_clear(self, name: str) -> None:
        """`name` lost its whole cache (it failed or restarted)."""
        held = self._held[name]
        self.cache_drop(name, [h for h, n in held.items() for _ in range(n)])

    # --- routing -------------------------------------------------------------------------------

    def matched(self, job: Job) -> dict[str, int]:
        """The CPUs holding a prefix of the job's prompt: name -> blocks held (binary search
        over the job's blocks: a CPU's blocks are prefix-closed)."""
        if not job.blocks:
            return {}
        out: dict[str, int] = {}
        for name in self._dir.get(job.blocks[0], ()):
            held = self._held[name]
            lo, hi = 1, len(job.blocks)  # it holds blocks[:lo]; find the largest such lo
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if job.blocks[mid - 1] in held:
                    lo = mid
                else:
                    hi = mid - 1
            out[name] = lo
        return out

    def states(self, job: Job | None = None) -> list[CpuState]:
        """Every CPU's state, with `cached` holding the job's matched blocks (for route())."""
        matched = self.matched(job) if job is not None else {}
        blocks = job.blocks if job is not None else ()
        return [
            dataclasses.replace(
                s, cached=frozenset(blocks[: matched.get(n, 0)]), held=len(self._held[n])
            )
            for n, s in self._states.items()
        ]

    def route(self, job: Job, policy: RoutePolicy | None = None) -> Decision:
        """route(job, every CPU, policy), from the few CPUs that can win (module note)."""
        policy = policy or RoutePolicy()
        if job.kv_model is not None:  # a KV state to place (a failover, a migration): rare, and
            return route(job, self.states(job), policy)  # any CPU of that model may win
        matched = self.matched(job)
        candidates: dict[str, CpuState] = {}

        def take(name: str) -> CpuState:
            n, held = matched.get(name, 0), len(self._held[name])
            return dataclasses.replace(
                self._states[name], cached=frozenset(job.blocks[:n]), held=held
            )

        def first_eligible(names: Iterable[str]) -> None:
            """Take the first eligible preferred CPU of `names` (and stop there), and the first
            eligible fallback one seen before it (it serves only if no preferred one can)."""
            fallback_taken = False
            for name in names:
                state = self._states[name]
                if (state.fallback and fallback_taken) or why_not(job, state, policy):
                    continue
                candidates[name] = take(name)
                if not state.fallback:
                    return
                fallback_taken = True

        weight = params.ROUTER_AFFINITY_WEIGHT * params.ROUTER_BLOCK_TOKENS
        by_score = sorted(
            matched,
            key=lambda n: (
                -(weight * matched[n] - load(self._states[n])),
                self._states[n].price_per_1k,
                len(self._held[n]),
                n,
            ),
        )
        first_eligible(by_score)
        first_eligible(name for *_rest, name in self._order)
        if job.pinned is not None and job.pinned in self._states:
            candidates[job.pinned] = take(job.pinned)
        if not any(why_not(job, c, policy) is None for c in candidates.values()):
            return route(job, self.states(job), policy)  # nothing can take it: say why
        return route(job, candidates.values(), policy)
