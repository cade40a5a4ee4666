"""The fleet simulator: traces are deterministic and shaped as asked, every request ends (also
when CPUs fail), the real dispatcher shares a CPU fairly, and prefix affinity finds caches."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from llmos.kernel.sched import sim, simtrace


def _trace(n_cpus: int = 4, **over: float) -> simtrace.Trace:
    return simtrace.make_trace(
        simtrace.Workload.for_fleet(n_cpus, **over), n_cpus, simtrace.CostModel()
    )


def test_a_trace_is_a_function_of_its_seed() -> None:
    a, b, c = _trace(seed=1), _trace(seed=1), _trace(seed=2)
    assert [(r.user, r.arrival, r.blocks, r.output) for r in a.requests] == [
        (r.user, r.arrival, r.blocks, r.output) for r in b.requests
    ]
    assert [r.blocks for r in a.requests] != [r.blocks for r in c.requests]
    assert [(f.at, f.cpu) for f in a.failures] == [(f.at, f.cpu) for f in b.failures]


def test_a_trace_has_heavy_tails_shared_prompts_and_ordered_arrivals() -> None:
    trace = _trace(n_cpus=10)
    reqs = trace.requests
    assert len(reqs) == 400 and len({r.user for r in reqs}) > 100
    outputs = sorted(r.output for r in reqs)
    assert outputs[0] >= 16 and outputs[-1] >= 10 * outputs[len(outputs) // 2]  # a heavy tail
    firsts = Counter(r.blocks[0] for r in reqs)
    assert firsts.most_common(1)[0][1] >= 20  # a popular system prompt opens many prompts
    assert all(a.arrival < b.arrival for a, b in itertools.pairwise(reqs))
    assert trace.failures and all(0 < f.at < reqs[-1].arrival for f in trace.failures)


@pytest.mark.parametrize(
    "router", [sim.RoundRobin, sim.LeastLoaded, sim.PrefixAffinity, sim.LlmosRouter]
)
def test_every_request_completes_on_every_router_despite_failures(router: type) -> None:
    trace = _trace(n_cpus=8, failures=3, down_s=20.0)
    report = sim.Simulation(trace, router(), 8).run()
    assert (report.completed, report.lost) == (len(trace.requests), 0)
    assert 0 < report.ttft_p50_s <= report.ttft_p99_s
    assert 0 < report.jain <= 1
    assert report.route_us_mean > 0


def test_a_failed_cpu_loses_its_cache_and_its_requests_continue_elsewhere() -> None:
    req = simtrace.Request(0, "u0", 0.0, tuple(range(1, 33)), output=400)
    # CPU 0 fails while the request generates; it continues on CPU 1 and re-prefills its prompt
    # and the tokens it had produced (nothing lost, more computed).
    trace = simtrace.Trace([req], [simtrace.Failure(at=3.0, cpu=0, down_s=1000.0)])
    report = sim.Simulation(trace, sim.RoundRobin(), 2).run()
    assert (report.completed, report.lost) == (1, 0)
    whole = sim.Simulation(simtrace.Trace([req], []), sim.RoundRobin(), 2).run()
    assert report.sim_end_s > whole.sim_end_s


def test_with_every_cpu_down_requests_wait_then_run_when_one_recovers() -> None:
    reqs = [simtrace.Request(i, f"u{i}", 5.0 + i, (100 + i,), output=16) for i in range(3)]
    trace = simtrace.Trace(reqs, [simtrace.Failure(at=1.0, cpu=0, down_s=30.0)])
    report = sim.Simulation(trace, sim.RoundRobin(), 1).run()
    assert report.completed == 3 and report.ttft_p50_s > 20.0  # they waited for the recovery


def test_the_real_dispatcher_shares_one_cpu_fairly_between_users() -> None:
    # One user sends 6 long requests, another 1, at once, to a CPU with 2 slots: under the
    # fair policy the lone user's request is placed at once and finishes first.
    reqs = [simtrace.Request(i, "heavy", 0.0, (1000 + i,), output=200) for i in range(6)]
    reqs.append(simtrace.Request(6, "light", 0.0, (2000,), output=200))
    s = sim.Simulation(simtrace.Trace(reqs, []), sim.RoundRobin(), 1, slots=2, policy="fair")
    s.run()
    ended = {d.req.id: d.ended for d in s.done}
    assert ended[6] <= min(ended[i] for i in range(6))
    fifo = sim.Simulation(simtrace.Trace(reqs, []), sim.RoundRobin(), 1, slots=2, policy="fifo")
    fifo.run()
    assert {d.req.id: d.ended for d in fifo.done}[6] > ended[6]  # fifo makes it wait


def test_prefix_affinity_finds_the_caches_round_robin_misses() -> None:
    trace = _trace(n_cpus=10)
    rr = sim.Simulation(trace, sim.RoundRobin(), 10).run()
    affinity = sim.Simulation(trace, sim.PrefixAffinity(), 10).run()
    assert affinity.hit_rate > rr.hit_rate + 0.2


def test_jain_and_percentile() -> None:
    assert sim.jain([1, 1, 1, 1]) == 1.0
    assert sim.jain([1, 0, 0, 0]) == pytest.approx(0.25)
    assert sim.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert sim.percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0


def test_the_llmos_router_finds_caches_without_piling_onto_them() -> None:
    trace = _trace(n_cpus=10)
    rr = sim.Simulation(trace, sim.RoundRobin(), 10).run()
    affinity = sim.Simulation(trace, sim.PrefixAffinity(), 10).run()
    llmos = sim.Simulation(trace, sim.LlmosRouter(), 10).run()
    assert llmos.hit_rate > rr.hit_rate  # it follows the caches
    assert llmos.ttft_p99_s <= affinity.ttft_p99_s * 1.5  # without the hot spots' tail
