"""A discrete-event simulator of a fleet of CPUs: the kernel's real router and scheduler code
driven by synthetic traces, at sizes no machine here could run for real.

What is real and what is modelled:
- real: each CPU's step-by-step placement is `PolicyDispatcher.plan` with a kernel policy
  (`fair` by default, as `llmos serve` runs), over `Entity` objects charged with `Entity.charge`
  like the embedded CPU charges them; each CPU's prefix cache is the engine's `PrefixIndex`;
  the placement of each arriving request is a `Router`: the baselines below (round robin,
  least loaded, prefix affinity) or the kernel's own router (`LlmosRouter`: `route()`'s rules
  through the fleet-wide view of `llmos.kernel.sched.fleet`, told of each change of a CPU's
  load, state and cache as it happens);
- modelled: the time a step takes (a `CostModel`, by default this project's measurements of
  the embedded model on two cores: prefill ~300 tok/s, a decode step of N sequences
  3.5 + 4.35 N ms), and prompts as chains of 16-token blocks (a block id stands for its
  tokens, as paged-KV servers hash blocks), so a 4,000-token prompt costs 250 ints, not 4,000.

The trace (`make_trace`: heavy-tailed lengths, shared system prompts, continued conversations,
Poisson arrivals, CPUs that fail for a while) and the cost model are in
`llmos.kernel.sched.simtrace`. A failed CPU loses its cache; its requests are placed
again by the router and continue from the tokens they had produced (re-prefilling prompt and
output, as the kernel's failover does), so nothing is lost, only delayed.

Reported per run (`Report`): prefix-cache hit rate (prompt tokens found cached / prompt
tokens), time to first token p50/p99 (from arrival, in simulated seconds), Jain's fairness
over users (of each user's tokens per second of waiting: output tokens / summed latency), the
router's own cost per decision (wall microseconds, measured around each real call), requests
completed and lost.

Invariants: a run is a pure function of its trace, router and cost model (no wall clock
enters the simulated time; the router's wall cost is measured, never simulated); every request
of the trace ends completed, or lost only when no CPU is up at all until the end.

What this module does not do: run a model, move KV, or simulate the network between CPUs.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from llmos import params
from llmos.hw.cpu.prefix import PrefixIndex
from llmos.kernel.sched.dispatch import PolicyDispatcher
from llmos.kernel.sched.fleet import Fleet
from llmos.kernel.sched.policy import POLICIES, Account, Entity
from llmos.kernel.sched.router import CpuState
from llmos.kernel.sched.router import Job as RouteJob
from llmos.kernel.sched.simtrace import BLOCK, CostModel, Failure, Request, Trace

# ---------------------------------------------------------------------------------------------
# The CPUs


@dataclass(eq=False)
class _Seq:
    """What the dispatcher sees of a job's KV (the engine's SeqView)."""

    resident: bool = False
    prefill_left: int = 0  # prompt tokens not yet computed
    n_past: int = 0

    @property
    def prefilling(self) -> bool:
        return self.prefill_left > 0


@dataclass(eq=False)
class Done:
    """A request that ended: what the report needs of it."""

    req: Request
    first_at: float | None
    ended: float
    cached: int
    computed: int


@dataclass(eq=False)
class Job:
    req: Request
    entity: Entity
    seq: _Seq = field(default_factory=_Seq)
    generated: int = 0  # tokens produced so far (kept across a failover)
    first_at: float | None = None
    cached: int = 0  # prompt tokens found in a cache, summed over placements
    computed: int = 0  # prompt tokens computed, summed over placements

    @property
    def tokens_left(self) -> int:
        return self.seq.prefill_left + (self.req.output - self.generated)


class SimCPU:
    """One CPU of the fleet: slots, a prefix cache of block chains, the real dispatcher."""

    def __init__(self, index: int, policy: str, slots: int, cache_tokens: int) -> None:
        self.index = index
        self.name = f"cpu{index}"
        self.slots = slots
        self.cache_blocks = cache_tokens // BLOCK
        self.dispatcher = PolicyDispatcher(POLICIES[policy](), slots)
        self.jobs: list[Job] = []
        self.cache = PrefixIndex()
        self.cached: dict[int, tuple[int, ...]] = {}  # key -> blocks, oldest first (LRU)
        self._keys = itertools.count()
        self.up = True
        self.busy_until: float | None = None  # a step is in flight until then
        self.epoch = 0  # bumped when it fails: its in-flight step never completes
        self.load = 0  # tokens in flight (see tokens_in_flight)

    @property
    def tokens_in_flight(self) -> int:
        """Prompt tokens left to compute and output tokens left to generate, as of the last
        step or placement (kept as a counter, as a real router's view of load would be)."""
        return self.load

    def recount(self) -> None:
        self.load = sum(j.tokens_left for j in self.jobs)

    @property
    def queue_depth(self) -> int:
        return len(self.jobs)

    def longest_cached(self, blocks: tuple[int, ...]) -> int:
        """Blocks of `blocks` this CPU has cached (the longest cached prefix)."""
        key, n = self.cache.longest(blocks)
        if isinstance(key, int):  # a hit refreshes its entry (LRU)
            self.cached[key] = self.cached.pop(key)
        return n

    def remember(
        self, blocks: tuple[int, ...], on_evict: Callable[[tuple[int, ...]], None]
    ) -> None:
        """Keep `blocks` cached, evicting the least recently used entries to make room."""
        if len(blocks) > self.cache_blocks:
            return
        while self.cached and sum(map(len, self.cached.values())) + len(blocks) > self.cache_blocks:
            old = next(iter(self.cached))
            on_evict(self.cached.pop(old))
            self.cache.remove(old)
        key = next(self._keys)
        self.cached[key] = blocks
        self.cache.insert(key, blocks)

    def fail(self) -> list[Job]:
        """Down: its cache is gone and its jobs must be placed elsewhere."""
        self.up = False
        self.epoch += 1
        self.busy_until = None
        self.cache = PrefixIndex()
        self.cached.clear()
        jobs, self.jobs = self.jobs, []
        self.load = 0
        for j in jobs:
            j.seq.resident = False
        return jobs


# ---------------------------------------------------------------------------------------------
# Routers


class Router(Protocol):
    """Places a request on a CPU. `fleet` is every CPU (check `up`); `observe_cached` tells a
    router that keeps its own view of the caches what each CPU now holds or dropped."""

    name: str

    def place(self, req: Request, fleet: list[SimCPU]) -> int: ...

    def observe_cached(self, cpu: int, blocks: tuple[int, ...], present: bool) -> None: ...

    def observe_cpu(self, cpu: SimCPU) -> None: ...


class RoundRobin:
    name = "round robin"

    def __init__(self) -> None:
        self._next = 0

    def place(self, req: Request, fleet: list[SimCPU]) -> int:
        for _ in range(len(fleet)):
            i = self._next % len(fleet)
            self._next += 1
            if fleet[i].up:
                return i
        return -1

    def observe_cached(self, cpu: int, blocks: tuple[int, ...], present: bool) -> None:
        pass

    def observe_cpu(self, cpu: SimCPU) -> None:
        pass


class LeastLoaded:
    """The CPU with the fewest tokens in flight (prefill left plus output left)."""

    name = "least loaded"

    def place(self, req: Request, fleet: list[SimCPU]) -> int:
        up = [c for c in fleet if c.up]
        return min(up, key=lambda c: (c.tokens_in_flight, c.index)).index if up else -1

    def observe_cached(self, cpu: int, blocks: tuple[int, ...], present: bool) -> None:
        pass

    def observe_cpu(self, cpu: SimCPU) -> None:
        pass


class PrefixAffinity:
    """The CPU whose cache holds the longest prefix of the prompt, by one fleet-wide index of
    what each CPU cached (as SGLang's router keeps); with no match, round robin. It ignores
    load: a popular prefix piles onto one CPU (the failure mode the llmos router avoids)."""

    name = "prefix affinity"

    def __init__(self) -> None:
        self.index = PrefixIndex()
        self._rr = RoundRobin()

    def place(self, req: Request, fleet: list[SimCPU]) -> int:
        key, n = self.index.longest(req.blocks)
        if key is not None and n > 0:
            cpu = key[0]  # type: ignore[index]
            if fleet[cpu].up:
                return int(cpu)
        return self._rr.place(req, fleet)

    def observe_cached(self, cpu: int, blocks: tuple[int, ...], present: bool) -> None:
        key = (cpu, blocks)
        if present:
            self.index.insert(key, blocks)
        else:
            self.index.remove(key)

    def observe_cpu(self, cpu: SimCPU) -> None:
        pass


class LlmosRouter:
    """The kernel's own router (`llmos.kernel.sched.router.route`'s rules) through its
    fleet-wide view (`llmos.kernel.sched.fleet.Fleet`), fed as a pool at scale feeds it: each
    CPU's up state, tokens in flight and requests queued when they change, and the blocks
    each cache holds or evicts (block ids stand for chained block hashes: an id names its
    whole prefix, as a chained hash does)."""

    name = "llmos"

    def __init__(self) -> None:
        self.fleet: Fleet | None = None

    def _view(self, fleet: list[SimCPU]) -> Fleet:
        if self.fleet is None:
            self.fleet = Fleet(
                CpuState(
                    name=str(c.index),
                    up=c.up,
                    n_ctx=1 << 30,
                    in_flight=c.tokens_in_flight,
                    queued=c.queue_depth,
                )
                for c in fleet
            )
        return self.fleet

    def place(self, req: Request, fleet: list[SimCPU]) -> int:
        job = RouteJob(blocks=tuple(map(str, req.blocks)), prompt_tokens=req.prompt_tokens)
        decision = self._view(fleet).route(job)
        return -1 if decision.cpu is None else int(decision.cpu)

    def observe_cached(self, cpu: int, blocks: tuple[int, ...], present: bool) -> None:
        if self.fleet is not None:
            change = self.fleet.cache_add if present else self.fleet.cache_drop
            change(str(cpu), map(str, blocks))

    def observe_cpu(self, cpu: SimCPU) -> None:
        if self.fleet is not None:
            self.fleet.update(
                str(cpu.index), up=cpu.up, in_flight=cpu.tokens_in_flight, queued=cpu.queue_depth
            )


# ---------------------------------------------------------------------------------------------
# The simulation


@dataclass
class Report:
    router: str
    cpus: int
    requests: int
    completed: int
    lost: int
    hit_rate: float  # prompt tokens found cached / prompt tokens placed
    ttft_p50_s: float
    ttft_p99_s: float
    jain: float
    route_us_mean: float
    route_us_p99: float
    sim_end_s: float  # simulated time the last request ended

    def row(self) -> list[object]:
        return [
            self.cpus,
            self.router,
            f"{self.hit_rate:.1%}",
            f"{self.ttft_p50_s:.2f}",
            f"{self.ttft_p99_s:.2f}",
            f"{self.jain:.3f}",
            f"{self.route_us_mean:.1f}",
            f"{self.completed}/{self.requests}",
        ]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def jain(values: Iterable[float]) -> float:
    xs = list(values)
    if not xs:
        return 1.0
    total = sum(xs)
    squares = sum(x * x for x in xs)
    return total * total / (len(xs) * squares) if squares else 1.0


class Simulation:
    """One run of a trace on a fleet with a router. `run()` returns the `Report`."""

    def __init__(
        self,
        trace: Trace,
        router: Router,
        n_cpus: int,
        *,
        cost: CostModel | None = None,
        policy: str = params.SERVE_SCHED_POLICY,
        slots: int = params.SIM_SLOTS,
        cache_tokens: int = params.PREFIX_CACHE_TOKENS,
        step_tokens: int = params.SIM_STEP_TOKENS,
    ) -> None:
        self.trace = trace
        self.router = router
        self.cost = cost or CostModel()
        self.step_tokens = step_tokens
        self.fleet = [SimCPU(i, policy, slots, cache_tokens) for i in range(n_cpus)]
        self.accounts: dict[str, Account] = {}
        self.events: list[tuple[float, int, str, object]] = []
        self._order = itertools.count()
        self.now = 0.0
        self.unplaced: list[Job] = []  # waiting for any CPU to come up
        self.done: list[Done] = []
        self.route_us: list[float] = []

    # events ----------------------------------------------------------------------------------

    def _at(self, when: float, kind: str, what: object) -> None:
        heapq.heappush(self.events, (when, next(self._order), kind, what))

    def run(self) -> Report:
        for req in self.trace.requests:
            self._at(req.arrival, "arrive", req)
        for f in self.trace.failures:
            self._at(f.at, "fail", f)
        while self.events:
            self.now, _, kind, what = heapq.heappop(self.events)
            if kind == "arrive":
                assert isinstance(what, Request)
                account = self.accounts.setdefault(what.user, Account(what.user))
                self._place(Job(what, Entity(owner=what.user, account=account)))
            elif kind == "step":
                assert isinstance(what, tuple)
                cpu, epoch = what
                assert isinstance(cpu, SimCPU)
                if cpu.up and cpu.epoch == epoch:
                    self._step(cpu)
            elif kind == "fail":
                assert isinstance(what, Failure)
                self._fail(self.fleet[what.cpu], what.down_s)
            elif kind == "recover":
                assert isinstance(what, SimCPU)
                what.up = True
                self.router.observe_cpu(what)
                waiting, self.unplaced = self.unplaced, []
                for job in waiting:
                    self._place(job)
        return self._report()

    def _place(self, job: Job) -> None:
        t0 = time.perf_counter()
        i = self.router.place(job.req, self.fleet)
        self.route_us.append((time.perf_counter() - t0) * 1e6)
        if i < 0:
            self.unplaced.append(job)
            return
        cpu = self.fleet[i]
        # What this CPU must compute: the prompt (and, after a failover, the output so far),
        # less the longest prefix it has cached.
        need = job.req.prompt_tokens + job.generated
        hit = min(cpu.longest_cached(job.req.blocks) * BLOCK, need - 1)
        job.cached += hit
        job.computed += need - hit
        job.seq = _Seq(prefill_left=need - hit, n_past=hit)
        cpu.jobs.append(job)
        cpu.load += job.tokens_left
        self.router.observe_cpu(cpu)
        if cpu.busy_until is None:
            self._at(self.now, "step", (cpu, cpu.epoch))
            cpu.busy_until = self.now

    def _fail(self, cpu: SimCPU, down_s: float) -> None:
        if not cpu.up:
            return
        for blocks in list(cpu.cached.values()):
            self.router.observe_cached(cpu.index, blocks, False)
        orphans = cpu.fail()
        self.router.observe_cpu(cpu)
        self._at(self.now + down_s, "recover", cpu)
        for job in orphans:
            self._place(job)

    def _step(self, cpu: SimCPU) -> None:
        """`step_tokens` engine steps at once: the real dispatcher places the jobs, then each
        placed job prefills a chunk per step or decodes a token per step."""
        plan = cpu.dispatcher.plan(cpu.jobs, cpu.slots, 0)
        for job, _where in plan.preempt:
            job.seq.resident = False
        placed = plan.resident
        for job in placed:
            job.seq.resident = True
        k = self.step_tokens
        decoding = [j for j in placed if not j.seq.prefilling]
        prefill = 0
        finished: list[Job] = []
        for job in placed:
            if job.seq.prefilling:
                take = min(job.seq.prefill_left, params.PREFILL_CHUNK * k)
                job.seq.prefill_left -= take
                job.seq.n_past += take
                prefill += take
                job.entity.charge(prompt=take)
                if not job.seq.prefilling:  # its prompt's KV is now there to share
                    self._remember(cpu, job.req.blocks)
        steps = min([k] + [job.req.output - job.generated for job in decoding])
        duration = self.cost.step_s(len(decoding)) * steps + self.cost.step_s(0, prefill)
        end = self.now + duration
        for job in decoding:
            n = min(k, job.req.output - job.generated)
            job.generated += n
            job.seq.n_past += n
            job.entity.charge(generated=n)
            if job.first_at is None:
                job.first_at = end
            if job.generated >= job.req.output:
                finished.append(job)
        for job in finished:
            cpu.jobs.remove(job)
            self.done.append(Done(job.req, job.first_at, end, job.cached, job.computed))
        cpu.recount()
        self.router.observe_cpu(cpu)
        if cpu.jobs:
            cpu.busy_until = end
            self._at(end, "step", (cpu, cpu.epoch))
        else:
            cpu.busy_until = None

    def _remember(self, cpu: SimCPU, blocks: tuple[int, ...]) -> None:
        if cpu.longest_cached(blocks) == len(blocks):
            return
        index = cpu.index
        cpu.remember(blocks, lambda b: self.router.observe_cached(index, b, False))
        self.router.observe_cached(index, blocks, True)

    def _report(self) -> Report:
        ttft = [j.first_at - j.req.arrival for j in self.done if j.first_at is not None]
        per_user: dict[str, list[float]] = {}
        for j in self.done:
            tokens, waited = per_user.setdefault(j.req.user, [0.0, 0.0])
            per_user[j.req.user] = [tokens + j.req.output, waited + (j.ended - j.req.arrival)]
        prompt = sum(j.cached + j.computed for j in self.done)
        cached = sum(j.cached for j in self.done)
        return Report(
            router=self.router.name,
            cpus=len(self.fleet),
            requests=len(self.trace.requests),
            completed=len(self.done),
            lost=len(self.trace.requests) - len(self.done),
            hit_rate=cached / prompt if prompt else 0.0,
            ttft_p50_s=percentile(ttft, 0.50),
            ttft_p99_s=percentile(ttft, 0.99),
            jain=jain(t / w for t, w in per_user.values() if w > 0),
            route_us_mean=sum(self.route_us) / len(self.route_us) if self.route_us else 0.0,
            route_us_p99=percentile(self.route_us, 0.99),
            sim_end_s=max((j.ended for j in self.done), default=0.0),
        )
