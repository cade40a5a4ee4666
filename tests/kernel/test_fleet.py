"""The fleet-wide router view (llmos.kernel.sched.fleet): the same decisions as `route()` over
the whole fleet, on random fleets changed step by step (loads, failures, caches filled and
evicted), random jobs and random user policies; and its directory kept right."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from llmos.kernel.sched.fleet import Fleet
from llmos.kernel.sched.router import CpuState, Job, RoutePolicy, prefix_hashes, route

# A few prompts sharing system prompts, as block-hash chains.
SYSTEMS = [list(range(s * 1000, s * 1000 + 40)) for s in range(3)]
PROMPTS = [
    prefix_hashes(SYSTEMS[i % 3] + list(range(5000 + 100 * i, 5000 + 100 * i + 8 * (i % 5))), 4)
    for i in range(12)
]


def random_state(rng: random.Random, name: str) -> CpuState:
    return CpuState(
        name=name,
        up=rng.random() > 0.15,
        n_ctx=rng.choice([1024, 4096, 8192]),
        grammar=rng.random() > 0.3,
        model=rng.choice(["a", "a", "b"]),
        price_per_1k=rng.choice([0.0, 0.0, 0.5, 1.0]),
        fallback=rng.random() < 0.15,
        continuation=rng.random() > 0.2,
        in_flight=rng.choice([0, 0, 10, 64, 300, 1000]),
        queued=rng.choice([0, 0, 1, 3]),
        kv_model=rng.choice([None, "ka", "kb"]),
    )


def random_job(rng: random.Random, names: list[str]) -> Job:
    blocks = rng.choice(PROMPTS) if rng.random() > 0.1 else ()
    return Job(
        blocks=blocks,
        prompt_tokens=rng.choice([100, 2000, 5000]),
        grammar=rng.random() < 0.3,
        model=rng.choice([None, None, "a", "b"]),
        pinned=rng.choice(names) if rng.random() < 0.1 else None,
        avoid=frozenset(rng.sample(names, k=rng.randint(0, min(2, len(names))))),
        continuation=rng.random() < 0.2,
        kv_model=rng.choice([None, None, None, "ka"]),
        kv_tokens=rng.choice([0, 300]),
    )


def random_policy(rng: random.Random, names: list[str]) -> RoutePolicy:
    return RoutePolicy(
        allowed=frozenset(rng.sample(names, k=len(names) // 2)) if rng.random() < 0.2 else None,
        max_price_per_1k=rng.choice([None, None, 0.5, 0.0]),
    )


@pytest.mark.parametrize("seed", range(8))
def test_the_fleet_decides_as_route_over_every_cpu(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"cpu{i}" for i in range(rng.choice([1, 3, 20, 60]))]
    states = {n: random_state(rng, n) for n in names}
    caches: dict[str, list[tuple[str, ...]]] = {n: [] for n in names}  # cached prompts, LRU
    fleet = Fleet(states.values())
    for _ in range(300):
        # the world changes: loads move, CPUs fail and come back, caches fill and evict
        name = rng.choice(names)
        roll = rng.random()
        if roll < 0.3:
            change = {"in_flight": rng.choice([0, 5, 64, 900]), "queued": rng.randint(0, 3)}
            states[name] = CpuState(**{**states[name].__dict__, **change})
            fleet.update(name, **change)
        elif roll < 0.4:
            up = not states[name].up
            states[name] = CpuState(**{**states[name].__dict__, "up": up})
            fleet.update(name, up=up)
            if not up:
                caches[name].clear()
                fleet.cache_clear(name)
        elif roll < 0.7:
            prompt = rng.choice(PROMPTS)[: rng.randint(1, 12)]
            caches[name].append(prompt)
            fleet.cache_add(name, prompt)
        elif caches[name]:
            fleet.cache_drop(name, caches[name].pop(0))
        job = random_job(rng, names)
        policy = random_policy(rng, names)
        full = [
            CpuState(**{**s.__dict__, "cached": frozenset(h for p in caches[n] for h in p)})
            for n, s in states.items()
        ]
        want = route(job, full, policy)
        got = fleet.route(job, policy)
        assert (got.cpu, got.brownout, got.cached_tokens) == (
            want.cpu,
            want.brownout,
            want.cached_tokens,
        ), (job, policy)
        if want.cpu is None:
            assert got.reason == want.reason


def test_the_directory_counts_prompts_sharing_blocks() -> None:
    fleet = Fleet([CpuState("a"), CpuState("b")])
    short, long = PROMPTS[0][:3], PROMPTS[0][:9]
    fleet.cache_add("a", short)
    fleet.cache_add("a", long)
    fleet.cache_add("b", short)
    job = Job(blocks=PROMPTS[0])
    assert fleet.matched(job) == {"a": 9, "b": 3}
    fleet.cache_drop("a", long)  # the shorter prompt still holds the first three blocks
    assert fleet.matched(job) == {"a": 3, "b": 3}
    fleet.cache_clear("b")
    assert fleet.matched(job) == {"a": 3}
    fleet.cache_drop("a", short)
    assert fleet.matched(job) == {} and fleet._dir == {}
    assert fleet._held == {"a": Counter(), "b": Counter()}


def test_bad_reports_are_refused() -> None:
    fleet = Fleet([CpuState("a")])
    with pytest.raises(ValueError, match="already in the fleet"):
        fleet.add(CpuState("a"))
    with pytest.raises(ValueError, match="cache_add"):
        fleet.update("a", cached=frozenset({"x"}))
