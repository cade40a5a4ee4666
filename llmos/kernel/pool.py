"""A pool of CPUs behind one CPU: the router places each generation, failover continues it.

A pool is declared in `config.json` (`pools`, see `llmos.config`) and named by the model spec
`pool/NAME`. `PoolCPU` is a `CPU` like any other, so the kernel, the loop and every front end
drive it unchanged; inside, each `generate`:
1. asks the router (`llmos.kernel.sched.router.route`, pure) which member runs it, from each
   member's state: loaded, circuit breaker, load, capabilities, price, the prompt prefixes it
   has computed (block hashes the pool remembers per member), and the owner's policy;
2. streams the member's reply to the caller, metering tokens, seconds and cost per member and
   per owner (`stats()`: `llmos top` and the `top` operation);
3. when the member fails (a `BackendError` or `ModelError`: an error, a timeout, a server that
   went away), opens its breaker after `params.POOL_BREAKER_FAILURES` failures in a row and
   places the generation again, avoiding the member that failed: before any text was sent it
   starts afresh; after, it continues on a member with `continuation` from the text already
   sent (a re-prefill of the context and the reply so far), so the caller's stream goes on
   with nothing lost and nothing repeated;
4. when no member can take it, the process waits in a visible state (its `progress` says so)
   for up to the pool's `wait_down_s`, then fails with a `BackendError` naming every member
   and why it is out. A member marked `fallback` serves only while every preferred one is
   out: a brownout, stated in the process's progress and counted in `stats()`.

Invariants: a member that cannot load is reported by name (`stats()`, the `down` error) and
the rest of the pool serves; a continuation is never sent to a member that cannot continue a
reply, and never for a constrained or tool-calling reply (those fail over only before their
first text); a generation moves at most `params.POOL_FAILOVERS_MAX` times.

What this module does not do: choose (the router does), move KV state between members (a
continuation re-prefills; members running the same GGUF share nothing but the prefix cache
each builds), or time-share a member (each member's own scheduling does, under the kernel).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos import params
from llmos.errors import BackendError, LlmosError, ModelError, NotFoundError
from llmos.hw.cpu.base import CPU, Capabilities, Chunk, Dispatcher, GenRequest, Message
from llmos.kernel.sched.router import (
    CpuState,
    Decision,
    Job,
    RoutePolicy,
    prefix_hashes,
    route,
)

log = logging.getLogger(__name__)

FAULTS = (BackendError, ModelError)  # what a member's failure looks like; others are the request's


@dataclass(frozen=True)
class MemberSpec:
    """One pool entry of `config.json`."""

    name: str
    model: str
    price_per_1k: float = 0.0
    fallback: bool = False


@dataclass(frozen=True)
class PoolSpec:
    name: str
    members: tuple[MemberSpec, ...]
    wait_down_s: float = params.POOL_WAIT_DOWN_S
    policies: dict[str, RoutePolicy] = field(default_factory=dict)  # per owner


def spec_of(name: str, raw: dict[str, Any]) -> PoolSpec:
    """The pool `name` as `llmos.config` validated it."""
    return PoolSpec(
        name=name,
        members=tuple(MemberSpec(**c) for c in raw["cpus"]),
        wait_down_s=raw["wait_down_s"],
        policies={
            user: RoutePolicy(
                None if p["cpus"] is None else frozenset(p["cpus"]), p["max_price_per_1k"]
            )
            for user, p in raw["policies"].items()
        },
    )


@dataclass
class Usage:
    """Metered use of one member by one owner."""

    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    cost: float = 0.0


@dataclass
class Member:
    spec: MemberSpec
    cpu: CPU | None  # None: it could not be loaded
    error: str | None = None  # why it could not be loaded, or its last failure
    failures: int = 0  # in a row
    open_until: float = 0.0  # its breaker keeps it out until then (monotonic)
    in_flight: int = 0
    queued: int = 0
    failed_total: int = 0
    cached: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def state(self, now: float) -> str:
        if self.cpu is None:
            return "failed to load"
        return "open" if now < self.open_until else "up"


class PoolCPU(CPU):
    """Several CPUs as one; see the module note."""

    def __init__(
        self,
        spec: PoolSpec,
        build: Callable[[str], CPU],
        *,
        clock: Callable[[], float] = time.monotonic,
        router: Callable[[Job, list[CpuState], RoutePolicy | None], Decision] = route,
    ) -> None:
        self.name = params.POOL_SPEC_PREFIX + spec.name
        self.spec = spec
        self._clock = clock
        self._route = router  # the router's rules; a benchmark passes round robin to compare
        self._lock = threading.Lock()
        self.members: dict[str, Member] = {}
        for m in spec.members:
            try:
                self.members[m.name] = Member(m, build(m.model))
            except LlmosError as exc:
                log.warning(
                    "pool %s: CPU %s (%s) cannot be used: %s", spec.name, m.name, m.model, exc
                )
                self.members[m.name] = Member(m, None, error=str(exc))
        loaded = [m.cpu for m in self.members.values() if m.cpu is not None]
        if not loaded:
            reasons = "; ".join(f"{m.spec.name}: {m.error}" for m in self.members.values())
            raise ModelError(f"pool '{spec.name}': no CPU can be used ({reasons})")
        self._tokenizer = loaded[0]
        caps = [c.capabilities for c in loaded]
        self.capabilities = Capabilities(
            grammar=all(c.grammar for c in caps),
            json_schema=all(c.json_schema or c.grammar for c in caps),
            tools=all(c.tools for c in caps),
            streaming=True,
            batching=any(c.batching for c in caps),
            kv_state=any(c.kv_state for c in caps),
            exact_tokens=all(c.exact_tokens for c in caps),
            continuation=all(c.continuation for c in caps),
        )
        self._n_ctx = min(c.n_ctx for c in loaded)
        self.usage: dict[tuple[str, str], Usage] = {}
        self.failovers = 0
        self.brownouts = 0
        self.migrations = 0
        self.placements: dict[str, str] = {}  # member -> why it was last chosen
        self.pins: dict[int, str] = {}  # pid -> member named by migrate

    # --- the CPU interface -------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.tokenize(text)

    def count_messages(self, messages: list[Message]) -> int:
        return self._tokenizer.count_messages(messages)

    def schedule(self, dispatcher: Dispatcher, swap_dir: Path | None) -> None:
        for m in self.members.values():
            if m.cpu is not None:
                m.cpu.schedule(dispatcher, swap_dir)

    def close(self) -> None:
        for m in self.members.values():
            if m.cpu is not None:
                m.cpu.close()

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["members"] = [
            {"name": m.spec.name, "model": m.spec.model, "fallback": m.spec.fallback}
            for m in self.members.values()
        ]
        return out

    def stats(self) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            members = {
                name: {
                    "model": m.spec.model,
                    "state": m.state(now),
                    "fallback": m.spec.fallback,
                    "in_flight": m.in_flight,
                    "queued": m.queued,
                    "failures": m.failed_total,
                    "error": m.error,
                    "price_per_1k": m.spec.price_per_1k,
                }
                for name, m in self.members.items()
            }
            usage = [
                {"cpu": cpu, "user": owner, **dataclasses.asdict(u)}
                for (cpu, owner), u in sorted(self.usage.items())
            ]
            return {
                "pool": self.spec.name,
                "members": members,
                "usage": usage,
                "failovers": self.failovers,
                "brownouts": self.brownouts,
                "migrations": self.migrations,
            }

    # --- placement -----------------------------------------------------------------------------
    def migrate(self, pid: int, member: str) -> None:
        """Run process `pid` on `member` from now on (while it can take it): its next
        generations, and the one running now, which moves at its next piece of text when it
        is plain text and `member` can continue a reply (else at its next generation)."""
        if member not in self.members:
            known = ", ".join(self.members)
            raise NotFoundError(f"pool '{self.spec.name}' has no CPU '{member}' (it has {known})")
        with self._lock:
            self.pins[pid] = member

    def _states(self, now: float) -> list[CpuState]:
        out = []
        for m in self.members.values():
            cpu = m.cpu
            caps = cpu.capabilities if cpu is not None else Capabilities()
            out.append(
                CpuState(
                    name=m.spec.name,
                    up=cpu is not None and now >= m.open_until,
                    n_ctx=cpu.n_ctx if cpu is not None else 0,
                    grammar=caps.grammar or caps.json_schema,
                    model=m.spec.model,
                    price_per_1k=m.spec.price_per_1k,
                    fallback=m.spec.fallback,
                    continuation=caps.continuation,
                    in_flight=m.in_flight,
                    queued=m.queued,
                    cached=frozenset(m.cached),
                )
            )
        return out

    def _fault(self, m: Member, exc: LlmosError) -> None:
        with self._lock:
            m.failures += 1
            m.failed_total += 1
            m.error = str(exc)
            if m.failures >= params.POOL_BREAKER_FAILURES:
                m.open_until = self._clock() + params.POOL_BREAKER_OPEN_S
            else:
                # a failure takes it out at once for one trial later: a member that errors
                # on every request must not take every failover first
                m.open_until = (
                    self._clock() + params.POOL_BREAKER_OPEN_S / params.POOL_BREAKER_FAILURES
                )
            self.failovers += 1

    def _ok(
        self, m: Member, owner: str, chunk: Chunk, seconds: float, blocks: tuple[str, ...]
    ) -> None:
        with self._lock:
            m.failures = 0
            m.open_until = 0.0
            for h in blocks:
                m.cached[h] = None
                m.cached.move_to_end(h)
            while len(m.cached) > params.ROUTER_CACHED_BLOCKS:
                m.cached.popitem(last=False)
            self._meter(m, owner, chunk.prompt_tokens, chunk.completion_tokens, seconds)

    def _meter(self, m: Member, owner: str, prompt: int, generated: int, seconds: float) -> None:
        u = self.usage.setdefault((m.spec.name, owner), Usage())
        u.requests += 1
        u.prompt_tokens += prompt
        u.generated_tokens += generated
        u.seconds += seconds
        u.cost += (prompt + generated) / 1000.0 * m.spec.price_per_1k

    def generate(self, request: GenRequest) -> Iterator[Chunk]:
        entity = request.entity
        owner = str(getattr(entity, "owner", "default"))
        pid = getattr(entity, "pid", None)
        policy = self.spec.policies.get(owner)
        text = "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in request.messages)
        tokens = self.tokenize(text)
        blocks = prefix_hashes(tokens)
        plain = request.json_schema is None and not request.tools
        sent = ""  # what this generation has streamed to the caller
        earlier_generated = 0  # tokens generated by members that then failed
        avoid: set[str] = set()
        moves = 0
        waiting_since: float | None = None
        while True:
            now = self._clock()
            job = Job(
                blocks=blocks,
                prompt_tokens=len(tokens),
                grammar=request.json_schema is not None,
                pinned=self.pins.get(pid) if isinstance(pid, int) else None,
                avoid=frozenset(avoid),
                continuation=bool(sent),
            )
            with self._lock:
                decision = self._route(job, self._states(now), policy)
            if decision.cpu is None and avoid:
                avoid.clear()  # every other member is out too: a failed one may serve again
                continue
            if decision.cpu is None:
                if waiting_since is None:
                    waiting_since = now
                    log.warning(
                        "pool %s: no CPU can take a generation: %s", self.spec.name, decision.reason
                    )
                if entity is not None and entity.killed:
                    yield Chunk(done=True, finish_reason="cancelled")
                    return
                if now - waiting_since >= self.spec.wait_down_s:
                    self._say(entity, None)
                    why = decision.reason.removeprefix("no CPU can take it ")
                    raise BackendError(
                        f"pool '{self.spec.name}': every CPU is down or refused for "
                        f"{self.spec.wait_down_s:g}s {why}"
                    )
                self._say(entity, f"waiting for a CPU of pool {self.spec.name}: {decision.reason}")
                time.sleep(params.POOL_WAIT_POLL_S)
                continue
            m = self.members[decision.cpu]
            assert m.cpu is not None
            if decision.brownout:
                with self._lock:
                    self.brownouts += 1
                log.warning("pool %s: brownout, on fallback CPU %s", self.spec.name, m.spec.name)
                self._say(
                    entity, f"brownout: on fallback CPU {m.spec.name} (every preferred CPU is down)"
                )
            elif waiting_since is not None or moves:
                self._say(entity, None)
            with self._lock:
                self.placements[m.spec.name] = decision.reason
                m.in_flight += len(tokens)
                m.queued += 1
            sub = request
            if sent:
                sub = dataclasses.replace(request, prefix=request.prefix + sent)
            started = self._clock()
            stream = iter(m.cpu.generate(sub))
            moved = False
            try:
                for chunk in stream:
                    if chunk.text:
                        sent += chunk.text
                        if plain and not chunk.done and self._moved(pid, m):
                            yield chunk
                            moved = True
                            break
                    if chunk.done:
                        self._ok(m, owner, chunk, self._clock() - started, blocks)
                        if earlier_generated:
                            chunk = dataclasses.replace(
                                chunk, completion_tokens=chunk.completion_tokens + earlier_generated
                            )
                    yield chunk
                if not moved:
                    return
            except FAULTS as exc:
                moves += 1
                log.warning("pool %s: CPU %s failed: %s", self.spec.name, m.spec.name, exc)
                self._fault(m, exc)
                part = self.count_tokens(sent) - earlier_generated if sent else 0
                with self._lock:
                    self._meter(m, owner, len(tokens), max(part, 0), self._clock() - started)
                earlier_generated += max(part, 0)
                if moves > params.POOL_FAILOVERS_MAX or (sent and not plain):
                    raise
                avoid.add(m.spec.name)
            else:  # moved by migrate: meter what it generated here, go on elsewhere
                part = max(self.count_tokens(sent) - earlier_generated, 0)
                with self._lock:
                    self._meter(m, owner, len(tokens), part, self._clock() - started)
                    self.migrations += 1
                earlier_generated += part
                log.info("pool %s: process %s moved from %s", self.spec.name, pid, m.spec.name)
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
                with self._lock:
                    m.in_flight -= len(tokens)
                    m.queued -= 1

    def _moved(self, pid: object, m: Member) -> bool:
        """Whether migrate has sent process `pid` from `m` to a member that can take over."""
        target = self.pins.get(pid) if isinstance(pid, int) else None
        if target is None or target == m.spec.name:
            return False
        t = self.members[target]
        return (
            t.cpu is not None and t.cpu.capabilities.continuation and self._clock() >= t.open_until
        )

    @staticmethod
    def _say(entity: object, what: str | None) -> None:
        """Show `what` as the process's progress (its visible state in ps and top)."""
        if entity is not None and hasattr(entity, "progress"):
            entity.progress = what
