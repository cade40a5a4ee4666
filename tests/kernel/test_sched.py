"""The scheduler's policies, budgets and the Gate, without a model.

Policies are pure functions of the entities' counters and the clock, so every test drives them
step by step: `select` is one engine step, `charge(generated=...)` is what the CPU does with the
tokens a step decoded, and the clock (`llmos.kernel.sched.policy.time`) is replaced by a fake one
wherever aging matters.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable

import pytest

from llmos.errors import LlmosError
from llmos.kernel.plugins import sched_policy
from llmos.kernel.sched import policy as sched
from llmos.kernel.sched.gate import Gate
from llmos.kernel.sched.policy import (
    FIFO,
    Account,
    Entity,
    FairShare,
    PriorityAging,
    RoundRobin,
)


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Replace the scheduler's clock (only inside llmos.kernel.sched.policy) with one the test
    moves."""
    fake = FakeClock()
    monkeypatch.setattr(sched, "time", types.SimpleNamespace(monotonic=fake))
    return fake


def entities(n: int, **kwargs: object) -> list[Entity]:
    return [Entity(pid=i + 1, waiting_since=0.0, **kwargs) for i in range(n)]  # type: ignore[arg-type]


def pids(chosen: list[Entity]) -> list[int]:
    return [e.pid for e in chosen]


def jain(values: list[int]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


# --- FIFO ------------------------------------------------------------------------------------


def test_fifo_orders_by_arrival_whatever_the_list_order() -> None:
    a, b, c = entities(3)
    policy = FIFO()
    assert pids(policy.select([c, a, b], 2, set())) == [1, 2]
    # running does not change the order: the first arrivals run to completion
    a.charge(generated=1000)
    assert pids(policy.select([b, c, a], 2, {a, b})) == [1, 2]
    # when the first one ends the next arrival comes in
    assert pids(policy.select([c, b], 2, {b})) == [2, 3]
    assert pids(policy.select([c, b, a], 1, set())) == [1]


def test_fifo_ignores_priority() -> None:
    low = Entity(pid=1, priority=0)
    high = Entity(pid=2, priority=39)
    assert pids(FIFO().select([high, low], 1, set())) == [1]


# --- Round-robin -----------------------------------------------------------------------------


def test_rr_moves_a_resident_to_the_back_after_its_quantum() -> None:
    a, b, c = entities(3)
    policy = RoundRobin(quantum=4)
    chosen = policy.select([a, b, c], 1, set())
    assert pids(chosen) == [1]
    a.charge(generated=3)  # quantum not used up yet: a keeps the slot
    assert pids(policy.select([a, b, c], 1, {a})) == [1]
    a.charge(generated=1)  # 4 tokens: a goes to the back
    assert pids(policy.select([a, b, c], 1, {a})) == [2]
    b.charge(generated=4)
    assert pids(policy.select([a, b, c], 1, {b})) == [3]
    c.charge(generated=4)
    assert pids(policy.select([a, b, c], 1, {c})) == [1]
    assert a.quantum_used == 0  # a fresh quantum once placed again


def test_rr_with_two_slots_rotates_the_queue() -> None:
    a, b, c = entities(3)
    policy = RoundRobin(quantum=4)
    assert pids(policy.select([a, b, c], 2, set())) == [1, 2]
    a.charge(generated=4)
    b.charge(generated=2)
    assert pids(policy.select([a, b, c], 2, {a, b})) == [2, 3]
    b.charge(generated=2)
    c.charge(generated=4)
    # b and c both used their quantum; b's went first so b is queued before c
    assert pids(policy.select([a, b, c], 2, {b, c})) == [1, 2]


def test_rr_tokens_are_shared_evenly_over_many_steps() -> None:
    ents = entities(3)
    policy = RoundRobin(quantum=8)
    resident: set[Entity] = set()
    for _ in range(240):
        chosen = policy.select(ents, 1, resident)
        chosen[0].charge(generated=1)
        resident = set(chosen)
    assert [e.generated for e in ents] == [80, 80, 80]


# --- Priority with aging ---------------------------------------------------------------------


def test_priority_runs_the_highest_first(clock: FakeClock) -> None:
    low = Entity(pid=1, priority=10, waiting_since=0.0)
    high = Entity(pid=2, priority=30, waiting_since=0.0)
    mid = Entity(pid=3, priority=20, waiting_since=0.0)
    policy = PriorityAging()
    assert pids(policy.select([low, high, mid], 2, set())) == [2, 3]
    assert pids(policy.select([low, high, mid], 3, set())) == [2, 3, 1]


def test_priority_ties_go_to_the_earlier_arrival(clock: FakeClock) -> None:
    a, b = entities(2)
    assert pids(PriorityAging().select([b, a], 1, set())) == [1]


def test_aging_lets_a_low_priority_waiter_overtake(clock: FakeClock) -> None:
    high = Entity(pid=1, priority=25, waiting_since=0.0)
    low = Entity(pid=2, priority=20, waiting_since=0.0)
    policy = PriorityAging(aging=1.0, quantum=4)
    resident: set[Entity] = set()
    chosen: list[Entity] = []
    # high runs, using a full quantum every step, so it keeps no boost; low ages 1 level/s
    for t in (0.0, 1.0, 2.0, 3.0, 4.0, 4.9):
        clock.now = t
        chosen = policy.select([high, low], 1, resident)
        assert pids(chosen) == [1], t
        chosen[0].charge(generated=4)
        resident = set(chosen)
    clock.now = 5.1  # 20 + 5.1 > 25
    chosen = policy.select([high, low], 1, resident)
    assert pids(chosen) == [2]
    assert low.boost == pytest.approx(5.1)
    assert high.waiting_since == 5.1


def test_without_aging_a_low_priority_waiter_starves(clock: FakeClock) -> None:
    high = Entity(pid=1, priority=25, waiting_since=0.0)
    low = Entity(pid=2, priority=20, waiting_since=0.0)
    policy = PriorityAging(aging=0.0, quantum=4)
    resident: set[Entity] = set()
    for t in range(0, 1000, 100):
        clock.now = float(t)
        chosen = policy.select([high, low], 1, resident)
        assert pids(chosen) == [1]
        chosen[0].charge(generated=4)
        resident = set(chosen)


def test_an_overtaking_waiter_keeps_its_place_while_it_has_quantum(clock: FakeClock) -> None:
    """Once aging has placed the low one, the high one (now waiting 0 s) cannot take the slot
    straight back: the resident keeps the age it had when placed."""
    high = Entity(pid=1, priority=25, waiting_since=0.0)
    low = Entity(pid=2, priority=20, waiting_since=0.0)
    policy = PriorityAging(aging=1.0, quantum=4)
    clock.now = 0.0
    resident = set(policy.select([high, low], 1, set()))
    high.charge(generated=4)
    clock.now = 6.0
    resident = set(policy.select([high, low], 1, resident))
    assert resident == {low}
    # 0.5 s later high has waited 0.5 s: 25.5 < 20 + 6 (low's boost)
    clock.now = 6.5
    low.charge(generated=1)
    assert pids(policy.select([high, low], 1, resident)) == [2]


def _residency_runs(policy: sched.Policy, clock: FakeClock, steps: int, dt: float) -> list[int]:
    a, b = entities(2)
    resident: set[Entity] = set()
    runs: list[int] = []
    current: Entity | None = None
    for i in range(steps):
        clock.now = i * dt
        chosen = policy.select([a, b], 1, resident)
        chosen[0].charge(generated=1)
        resident = set(chosen)
        if chosen[0] is not current:
            runs.append(0)
            current = chosen[0]
        runs[-1] += 1
    return runs


def test_priority_does_not_thrash_two_equal_entities(clock: FakeClock) -> None:
    """Two entities of equal priority, one slot, one token per 10 ms step: a resident keeps
    its place until it has used its quantum (the module note: 'no thrashing')."""
    quantum = 32
    runs = _residency_runs(PriorityAging(aging=1.0, quantum=quantum), clock, 300, 0.01)
    assert all(r >= quantum for r in runs[:-1]), runs


def test_priority_without_aging_never_switches_equal_entities(clock: FakeClock) -> None:
    runs = _residency_runs(PriorityAging(aging=0.0, quantum=32), clock, 300, 0.01)
    assert runs == [300]


# --- Fair share ------------------------------------------------------------------------------


def test_fair_share_gives_each_owner_the_same_tokens() -> None:
    acct_a, acct_b = Account("a"), Account("b")
    a = [Entity(pid=1, owner="a", account=acct_a)]
    b = [Entity(pid=i, owner="b", account=acct_b) for i in range(2, 9)]
    ents = a + b
    policy = FairShare()
    resident: set[Entity] = set()
    for _ in range(100):
        chosen = policy.select(ents, 8, resident)
        assert len(chosen) == 2
        assert sorted(e.owner for e in chosen) == ["a", "b"]
        for e in chosen:
            e.charge(generated=1)
        resident = set(chosen)
    assert (acct_a.tokens, acct_b.tokens) == (100, 100)
    assert jain([acct_a.tokens, acct_b.tokens]) >= 0.99
    # inside owner b it is round-robin with the default quantum
    assert [e.generated for e in b] == [32, 32, 32, 4, 0, 0, 0]


def test_round_robin_is_not_fair_between_owners() -> None:
    """The same workload under plain rr: owner b's 7 processes get 7/8 of the tokens (the
    contrast that makes the fair-share test meaningful)."""
    acct_a, acct_b = Account("a"), Account("b")
    ents = [Entity(pid=1, owner="a", account=acct_a)] + [
        Entity(pid=i, owner="b", account=acct_b) for i in range(2, 9)
    ]
    policy = RoundRobin()
    resident: set[Entity] = set()
    for _ in range(100):
        chosen = policy.select(ents, 8, resident)
        for e in chosen:
            e.charge(generated=1)
        resident = set(chosen)
    assert (acct_a.tokens, acct_b.tokens) == (100, 700)
    assert jain([acct_a.tokens, acct_b.tokens]) < 0.99


def test_fair_share_serves_the_owner_behind_first() -> None:
    acct_a, acct_b, acct_c = Account("a", tokens=50), Account("b", tokens=10), Account("c")
    a = Entity(pid=1, owner="a", account=acct_a)
    b = Entity(pid=2, owner="b", account=acct_b)
    c = Entity(pid=3, owner="c", account=acct_c)
    assert pids(FairShare().select([a, b, c], 2, set())) == [3, 2]


def test_fair_share_of_nothing_is_nothing() -> None:
    assert FairShare().select([], 8, set()) == []


# --- Budgets ---------------------------------------------------------------------------------


def test_charge_is_false_at_the_process_budget() -> None:
    e = Entity(budget=10)
    assert e.charge(prompt=6) is True
    assert e.charge(generated=3) is True
    assert not e.over_budget
    assert e.charge(generated=1) is False
    assert e.over_budget
    assert (e.prompt_tokens, e.generated, e.tokens) == (6, 4, 10)


def test_charge_is_false_at_the_owner_budget() -> None:
    acct = Account("u", budget=5)
    e1 = Entity(owner="u", account=acct)
    e2 = Entity(owner="u", account=acct)
    other = Entity(owner="v", account=Account("v"))
    assert e1.charge(generated=3) is True
    assert e2.charge(generated=1) is True
    assert e2.charge(generated=1) is False
    assert acct.tokens == 5
    assert acct.over_budget
    assert e1.over_budget  # the whole owner is over, not only the one that crossed it
    assert e1.charge(generated=0) is False
    assert other.charge(generated=100) is True


def test_unlimited_budgets_never_stop() -> None:
    e = Entity(account=Account("u"))
    assert e.charge(prompt=10**6, generated=10**6) is True
    assert not e.over_budget


# --- Gate ------------------------------------------------------------------------------------


def _acquire_in_thread(
    gate: Gate, entity: Entity, results: dict[int, bool], order: list[int], hold: float = 0.0
) -> threading.Thread:
    def go() -> None:
        ok = gate.acquire(entity, timeout=10.0)
        results[entity.pid] = ok
        if ok:
            order.append(entity.pid)
            time.sleep(hold)
            gate.release(entity)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def _wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def test_gate_respects_its_limit_and_times_out() -> None:
    gate = Gate(2, FIFO())
    a, b, c = entities(3)
    assert gate.acquire(a, timeout=1.0)
    assert gate.acquire(b, timeout=1.0)
    assert gate.in_flight == 2
    started = time.monotonic()
    assert gate.acquire(c, timeout=0.2) is False
    assert time.monotonic() - started >= 0.19
    assert gate.in_flight == 2
    gate.release(a)
    assert gate.acquire(c, timeout=1.0) is True
    assert gate.in_flight == 2


def test_gate_grants_waiters_in_priority_order() -> None:
    gate = Gate(1, PriorityAging())
    holder = Entity(pid=100)
    assert gate.acquire(holder)
    low = Entity(pid=1, priority=10)
    mid = Entity(pid=2, priority=20)
    high = Entity(pid=3, priority=30)
    results: dict[int, bool] = {}
    order: list[int] = []
    threads = []
    for e in (low, mid, high):
        threads.append(_acquire_in_thread(gate, e, results, order, hold=0.05))
        assert _wait_for(lambda e=e: e in gate._waiting)
    gate.release(holder)
    for t in threads:
        t.join(10)
    assert order == [3, 2, 1]
    assert results == {1: True, 2: True, 3: True}
    assert gate.in_flight == 0


def test_gate_fifo_grants_in_arrival_order() -> None:
    gate = Gate(1, FIFO())
    holder = Entity(pid=100)
    assert gate.acquire(holder)
    ents = [Entity(pid=i, priority=40 - i) for i in range(1, 4)]
    results: dict[int, bool] = {}
    order: list[int] = []
    threads = []
    for e in reversed(ents):  # threads start in reverse, arrival still decides
        threads.append(_acquire_in_thread(gate, e, results, order, hold=0.05))
        assert _wait_for(lambda e=e: e in gate._waiting)
    gate.release(holder)
    for t in threads:
        t.join(10)
    assert order == [1, 2, 3]


def test_a_killed_waiter_gives_up() -> None:
    gate = Gate(1, FIFO())
    holder, waiter = entities(2)
    assert gate.acquire(holder)
    results: dict[int, bool] = {}
    order: list[int] = []
    t = _acquire_in_thread(gate, waiter, results, order)
    assert _wait_for(lambda: waiter in gate._waiting)
    waiter.killed = True
    gate.wake()
    t.join(5)
    assert not t.is_alive()
    assert results == {waiter.pid: False}
    assert gate.in_flight == 1
    assert not gate._waiting


def test_a_stopped_waiter_is_passed_over_until_continued() -> None:
    gate = Gate(1, FIFO())
    holder, stopped, other = entities(3)
    assert gate.acquire(holder)
    stopped.stopped = True
    results: dict[int, bool] = {}
    order: list[int] = []
    t1 = _acquire_in_thread(gate, stopped, results, order, hold=0.05)
    assert _wait_for(lambda: stopped in gate._waiting)
    t2 = _acquire_in_thread(gate, other, results, order, hold=0.05)
    assert _wait_for(lambda: other in gate._waiting)
    gate.release(holder)
    t2.join(5)
    assert order == [other.pid]
    stopped.stopped = False
    gate.wake()
    t1.join(5)
    assert order == [other.pid, stopped.pid]


class CountingFIFO(FIFO):
    """FIFO that counts how often the Gate ranks its waiters."""

    def __init__(self) -> None:
        self.calls = 0
        self.ranked = 0
        self.granted: list[int] = []

    def rank(self, entities: list[Entity], resident: set[Entity]) -> list[Entity]:
        self.calls += 1
        self.ranked += len(entities)
        return super().rank(entities, resident)

    def placed(self, chosen: list[Entity], resident: set[Entity]) -> None:
        self.granted.extend(e.pid for e in chosen)
        super().placed(chosen, resident)


def test_gate_drains_many_waiters_without_a_thundering_herd() -> None:
    n, limit = 100, 4
    policy = CountingFIFO()
    gate = Gate(limit, policy)
    holders = [Entity(pid=-i - 1) for i in range(limit)]
    for h in holders:
        assert gate.acquire(h)
    waiters = [Entity(pid=i + 1) for i in range(n)]
    results: dict[int, bool] = {}
    order: list[int] = []
    threads = [_acquire_in_thread(gate, e, results, order, hold=0.01) for e in waiters]
    assert _wait_for(lambda: len(gate._waiting) == n)
    policy.calls = policy.ranked = 0
    policy.granted.clear()
    for h in holders:
        gate.release(h)
    for t in threads:
        t.join(30)
    assert policy.granted == list(range(1, n + 1))  # granted in FIFO order
    assert sorted(order) == list(range(1, n + 1))
    # a gate that wakes only the waiters it can admit ranks O(1) times per grant
    assert policy.calls <= 4 * n, (policy.calls, policy.ranked)


# --- policies by name (through the plugin registry, built-ins included) ----------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [("fifo", FIFO), ("rr", RoundRobin), ("priority", PriorityAging), ("fair", FairShare)],
)
def test_each_policy_by_name(name: str, cls: type) -> None:
    policy = sched_policy(name)
    assert isinstance(policy, cls)
    assert policy.name == name


def test_an_unknown_policy_name_is_refused() -> None:
    with pytest.raises(LlmosError, match="unknown scheduling policy 'lottery'"):
        sched_policy("lottery")
