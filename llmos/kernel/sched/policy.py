"""The scheduler: which processes get the CPU's sequence slots for the next engine step.

A policy answers one question: "of these runnable entities, which may be resident now, given
this many slots?" A CPU that batches (the embedded CPU) has it asked every step by its
dispatcher (`llmos.kernel.sched.dispatch`), which preempts the entities not chosen and brings
in the chosen ones. Remote CPUs, which do not batch, use a `Gate` (`llmos.kernel.sched.gate`):
a limit on in-flight requests, handed out in the policy's order.

An `Entity` is the scheduling face of a process: owner, priority, arrival order, counters,
and the flags a kernel sets (stopped, killed). The kernel shares one Entity with the CPU, so a
renice or stop takes effect at the next step without a message.

Policies (all pure functions of the entities' counters, so they are tested without a model):
- `fifo`: arrival order; the first `slots` arrivals run to completion.
- `rr`: round-robin with a token quantum: a process that has decoded `quantum` tokens since it
  was last placed goes to the back of the queue.
- `priority`: highest effective priority first, where waiting raises effective priority by
  `aging` levels per second, so nothing starves.
- `fair`: fair share across owners: each owner gets the same number of slots per step (as many
  as the smallest backlogged owner can use), owners with the fewest tokens so far first; inside
  an owner, round-robin. A user running 7 processes gets the same tokens as a user running 1.

Budgets: `Entity.charge` counts every token against the process's budget, every ancestor's
(a child's tokens are charged to its parent, recursively: `Entity.parent`) and its owner's
account; a process over any of them is told to stop (the CPU ends it with reason "budget").
A prompt that would take any of them past its budget is not charged at all (the entity is
marked exhausted instead, and stops); generated tokens are counted as they come, so a CPU that
reports them in pieces (a remote server's streamed chunk) can pass a budget by at most its last
piece, and the embedded CPU, which charges one token at a time, never does.

What this module does not do: save or restore KV (the engine does), or keep the process table
(see `llmos.kernel.proc`).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llmos import params

_arrivals = itertools.count()
_charging = threading.Lock()  # one charge at a time walks the ancestors and the account


@dataclass
class Account:
    """One owner's usage, shared by all that owner's entities."""

    owner: str
    budget: int | None = None  # most tokens this owner may use; None is unlimited
    tokens: int = 0

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.tokens >= self.budget


@dataclass(eq=False)
class Entity:
    """What the scheduler knows of one process."""

    pid: int = 0
    owner: str = "default"
    priority: int = params.DEFAULT_PRIORITY
    budget: int | None = None  # most tokens (prompt + generated); None is unlimited
    account: Account | None = None
    parent: Entity | None = None  # the parent process's entity: charged for this one's tokens
    descendants: int = 0  # tokens charged to this entity by its descendants
    exhausted: bool = False  # a prompt was refused: it would have passed a budget
    arrival: int = field(default_factory=lambda: next(_arrivals))
    rr_key: int = 0  # round-robin position; bumped when a quantum is used up
    prompt_tokens: int = 0
    generated: int = 0
    quantum_used: int = 0
    boost: float = 0.0  # seconds waited before placement (priority aging)
    waiting_since: float = field(default_factory=time.monotonic)
    stopped: bool = False
    killed: bool = False
    context_used: int = 0  # tokens in the context window now (set by CPUs that know)
    resident: bool = False  # has a KV slot on its CPU now (set by the CPU)
    swapped: str | None = None  # "ram" or "disk" while its KV is parked (set by the CPU)
    done: bool = False  # its generation has ended (set by the CPU); the kernel still finishes
    prefill: tuple[int, int] | None = None  # (computed, total) prompt tokens (set by the CPU)
    progress: str | None = None  # long work before its first token (set by the kernel's loop)
    on_change: Callable[[], None] | None = None  # wakes the CPU's loop
    cpu_s: float = 0.0  # seconds it was resident before its current residency (see below)
    resident_since: float | None = None  # monotonic time it became resident, while it is

    def __post_init__(self) -> None:
        self.rr_key = self.arrival
        if self.resident and self.resident_since is None:
            self.__dict__["resident_since"] = time.monotonic()

    def __setattr__(self, name: str, value: object) -> None:
        """Time resident on a CPU is metered where residency changes: whoever flips
        `resident` (the CPU, the gate's holder) accrues it, with no bookkeeping of its own."""
        if name == "resident":
            was = self.__dict__.get("resident", False)
            if value and not was:
                self.__dict__["resident_since"] = time.monotonic()
            elif was and not value:
                since = self.__dict__.get("resident_since")
                if since is not None:
                    self.__dict__["cpu_s"] = self.__dict__.get("cpu_s", 0.0) + (
                        time.monotonic() - since
                    )
                self.__dict__["resident_since"] = None
        object.__setattr__(self, name, value)

    @property
    def cpu_seconds(self) -> float:
        """Seconds resident on a CPU so far (holding a KV slot, or a remote CPU's place)."""
        since = self.resident_since
        return self.cpu_s + (time.monotonic() - since if since is not None else 0.0)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generated

    @property
    def spent(self) -> int:
        """Its own tokens and its descendants': what its budget is charged."""
        return self.tokens + self.descendants

    @property
    def over_budget(self) -> bool:
        return self.exhausted or self._passes(0)

    def _passes(self, more: int) -> bool:
        """Whether `more` tokens would take this entity, an ancestor or the owner's account
        to (or past) its budget (0: whether one of them is there already)."""
        entity: Entity | None = self
        while entity is not None:
            if entity.budget is not None and entity.spent + more >= entity.budget + min(more, 1):
                return True
            entity = entity.parent
        acct = self.account
        return (
            acct is not None
            and acct.budget is not None
            and (acct.tokens + more >= acct.budget + min(more, 1))
        )

    def charge(self, prompt: int = 0, generated: int = 0) -> bool:
        """Count tokens (to this entity, its ancestors and its owner's account); False when
        it or an ancestor or its owner is now over budget. A prompt that would pass a budget
        is not counted: the entity is exhausted instead."""
        with _charging:
            if prompt and self._passes(prompt):
                self.exhausted = True
                return False
            self.prompt_tokens += prompt
            self.generated += generated
            self.quantum_used += generated
            ancestor = self.parent
            while ancestor is not None:
                ancestor.descendants += prompt + generated
                ancestor = ancestor.parent
            if self.account is not None:
                self.account.tokens += prompt + generated
        return not self.over_budget

    def poke(self) -> None:
        if self.on_change is not None:
            self.on_change()


class Policy:
    """Chooses the entities to be resident for the next step, most deserving first."""

    name = "policy"

    def select(self, entities: list[Entity], slots: int, resident: set[Entity]) -> list[Entity]:
        chosen = self.rank(entities, resident)[:slots]
        self.placed(chosen, resident)
        return chosen

    def rank(self, entities: list[Entity], resident: set[Entity]) -> list[Entity]:
        raise NotImplementedError

    def placed(self, chosen: list[Entity], resident: set[Entity]) -> None:
        """Bookkeeping after a selection: newly placed entities start a quantum (keeping the
        age they had waited as a boost); preempted ones start waiting now."""
        now = time.monotonic()
        chosen_set = set(chosen)
        for e in chosen:
            if e not in resident:
                e.boost = now - e.waiting_since
                e.quantum_used = 0
        for e in resident - chosen_set:
            e.waiting_since = now


class FIFO(Policy):
    name = "fifo"

    def rank(self, entities: list[Entity], resident: set[Entity]) -> list[Entity]:
        return sorted(entities, key=lambda e: e.arrival)


class RoundRobin(Policy):
    name = "rr"

    def __init__(self, quantum: int = params.SCHED_QUANTUM_TOKENS) -> None:
        self.quantum = quantum
        self._clock = itertools.count(1 << 40)

    def rank(self, entities: list[Entity], resident: set[Entity]) -> list[Entity]:
        for e in entities:
            if e.quantum_used >= self.quantum:
                e.quantum_used = 0
                e.rr_key = next(self._clock)  # to the back of the queue
        return sorted(entities, key=lambda e: e.rr_key)


class PriorityAging(Policy):
    """Effective priority = priority + `aging` x seconds waited, so a waiting process always
    overtakes in bounded time (no starvation). A resident that has not yet used its quantum of
    tokens is sticky: a waiter displaces it only if the waiter's base priority beats the
    resident's effective priority at placement (its priority plus the age it had waited), never
    by aging alone, so equal processes trade places once per quantum, not every step, and a
    process placed by aging keeps its slot for a quantum."""

    name = "priority"

    def __init__(
        self,
        aging: float = params.SCHED_AGING_PER_S,
        quantum: int = params.SCHED_QUANTUM_TOKENS,
    ) -> None:
        self.aging = aging
        self.quantum = quantum

    def effective(self, e: Entity, now: float, resident: set[Entity]) -> float:
        if e in resident:
            return e.priority + self.aging * (e.boost if e.quantum_used < self.quantum else 0.0)
        return e.priority + self.aging * (now - e.waiting_since)

    def rank(self, entities: list[Entity], resident: set[Entity]) -> list[Entity]:
        now = time.monotonic()
        sticky = sorted(
            (e for e in entities if e in resident and e.quantum_used < self.quantum),
            key=lambda e: (-self.effective(e, now, resident), e.arrival),
        )
        sticky_set = set(sticky)
        others = sorted(
            (e for e in entities if e not in sticky_set),
            key=lambda e: (-self.effective(e, now, resident), e not in resident, e.arrival),
        )
        order: list[Entity] = []
        i = j = 0
        while i < len(sticky) or j < len(others):
            if j < len(others) and (
                i == len(sticky) or others[j].priority > self.effective(sticky[i], now, resident)
            ):
                order.append(others[j])
                j += 1
            else:
                order.append(sticky[i])
                i += 1
        return order


class FairShare(Policy):
    name = "fair"

    def __init__(self) -> None:
        self._rr = RoundRobin()

    def select(self, entities: list[Entity], slots: int, resident: set[Entity]) -> list[Entity]:
        by_owner: dict[str, list[Entity]] = {}
        for e in self._rr.rank(entities, resident):
            by_owner.setdefault(e.owner, []).append(e)
        if not by_owner:
            return []
        per_owner = max(1, min(slots // len(by_owner), min(len(v) for v in by_owner.values())))
        owners = sorted(by_owner, key=lambda o: (_owner_tokens(by_owner[o]), o))
        chosen: list[Entity] = []
        for owner in owners:
            take = min(per_owner, slots - len(chosen))
            if take <= 0:
                break
            chosen.extend(by_owner[owner][:take])
        return chosen

    def rank(self, entities: list[Entity], resident: set[Entity]) -> list[Entity]:
        return self.select(entities, len(entities), resident)


def _owner_tokens(entities: list[Entity]) -> int:
    account = entities[0].account
    return account.tokens if account is not None else sum(e.generated for e in entities)


POLICIES: dict[str, Callable[[], Policy]] = {
    "fifo": FIFO,
    "rr": RoundRobin,
    "priority": PriorityAging,
    "fair": FairShare,
}
