"""The router's decisions over plain data: prefix affinity, load, capability, policy, fallback."""

from __future__ import annotations

from llmos import params
from llmos.kernel.sched.router import (
    CpuState,
    Job,
    RoundRobin,
    RoutePolicy,
    affinity,
    prefix_hashes,
    route,
)

B = params.ROUTER_BLOCK_TOKENS


def job_of(tokens: list[int], **kw: object) -> Job:
    return Job(blocks=prefix_hashes(tokens), prompt_tokens=len(tokens), **kw)  # type: ignore[arg-type]


SYSTEM = list(range(1000, 1000 + 4 * B))  # a shared system prompt of four blocks


def test_block_hashes_name_the_whole_prefix() -> None:
    a = prefix_hashes(SYSTEM + [1] * B)
    b = prefix_hashes(SYSTEM + [2] * B)
    assert len(a) == 5 and a[:4] == b[:4] and a[4] != b[4]
    # a change in the first block changes every later hash
    c = prefix_hashes([7] + SYSTEM[1:] + [1] * B)
    assert not set(a) & set(c)
    assert prefix_hashes(list(range(B - 1))) == ()


def test_the_cpu_holding_the_longest_prefix_wins() -> None:
    job = job_of(SYSTEM + [5] * B)
    warm = CpuState("b", cached=frozenset(prefix_hashes(SYSTEM)))
    cold = CpuState("a")
    decision = route(job, [cold, warm])
    assert decision.cpu == "b" and decision.cached_tokens == 4 * B
    assert "affinity" in decision.reason and not decision.brownout
    assert affinity(job, cold) == 0


def test_load_outweighs_a_short_cached_prefix() -> None:
    job = job_of(SYSTEM)
    warm = CpuState("a", cached=frozenset(prefix_hashes(SYSTEM[:B])), in_flight=10 * B)
    idle = CpuState("b")
    assert route(job, [warm, idle]).cpu == "b"
    # queued requests count as load too
    busy = CpuState("a", queued=2)
    assert route(Job(), [busy, CpuState("b", queued=1)]).cpu == "b"


def test_ties_go_to_the_cheaper_cpu_then_by_name() -> None:
    assert route(Job(), [CpuState("b"), CpuState("a")]).cpu == "a"
    assert route(Job(), [CpuState("a", price_per_1k=1.0), CpuState("b")]).cpu == "b"


def test_capabilities_exclude_cpus() -> None:
    small = CpuState("small", n_ctx=64, grammar=True)
    plain = CpuState("plain", n_ctx=8192, grammar=False)
    other = CpuState("other", n_ctx=8192, grammar=True, model="qwen")
    ok = CpuState("ok", n_ctx=8192, grammar=True, model="smol")
    job = Job(prompt_tokens=100, grammar=True, model="smol")
    d = route(job, [small, plain, other, ok])
    assert d.cpu == "ok"
    d = route(job, [small, plain, other])
    assert d.cpu is None
    assert "small: context 64 < 100" in d.reason and "plain: no grammar" in d.reason
    assert "other: runs qwen" in d.reason
    # a continuation needs a CPU that can continue a reply
    assert (
        route(Job(continuation=True), [CpuState("a"), CpuState("b", continuation=True)]).cpu == "b"
    )


def test_policy_limits_cpus_and_price() -> None:
    cpus = [CpuState("cheap", price_per_1k=0.1), CpuState("dear", price_per_1k=2.0, in_flight=0)]
    busy_cheap = [CpuState("cheap", price_per_1k=0.1, in_flight=5000), cpus[1]]
    assert route(Job(), busy_cheap).cpu == "dear"
    assert route(Job(), busy_cheap, RoutePolicy(max_price_per_1k=1.0)).cpu == "cheap"
    assert route(Job(), cpus, RoutePolicy(allowed=frozenset({"dear"}))).cpu == "dear"
    d = route(Job(), cpus, RoutePolicy(allowed=frozenset({"none"})))
    assert d.cpu is None and "not allowed by policy" in d.reason


def test_fallback_serves_only_when_every_preferred_cpu_is_down() -> None:
    a = CpuState("a")
    fb = CpuState("fb", fallback=True)
    d = route(Job(), [a, fb])
    assert d.cpu == "a" and not d.brownout
    d = route(Job(), [CpuState("a", up=False), fb])
    assert d.cpu == "fb" and d.brownout and "fallback" in d.reason
    d = route(Job(), [CpuState("a", up=False), CpuState("fb", fallback=True, up=False)])
    assert d.cpu is None and "a: down" in d.reason


def test_a_failed_cpu_is_avoided_and_a_pin_is_kept() -> None:
    cpus = [CpuState("a"), CpuState("b", in_flight=100)]
    assert route(Job(avoid=frozenset({"a"})), cpus).cpu == "b"
    assert route(Job(pinned="b"), cpus).cpu == "b"
    # a pin to a CPU that cannot take the job is ignored: the usual rules place it
    assert route(Job(pinned="b"), [CpuState("a"), CpuState("b", up=False)]).cpu == "a"


def test_round_robin_takes_turns_blind_to_prefixes() -> None:
    rr = RoundRobin()
    warm = CpuState("a", cached=frozenset(prefix_hashes(SYSTEM)))
    cpus = [warm, CpuState("b")]
    job = job_of(SYSTEM)
    assert [rr.route(job, cpus).cpu for _ in range(4)] == ["a", "b", "a", "b"]
