"""The Gate: at most so many requests in flight on a CPU that does not batch (a remote server).

Waiters are admitted in the kernel's policy order (`Policy.rank`), and a killed waiter leaves
at once. Each waiter sleeps on its own event; a release ranks the waiters once and wakes only
those it admits, so a release costs one ranking, not a thundering herd.

Invariants: at most `limit` entities hold the gate; a stopped entity is never admitted.

What this module does not do: batch, preempt or save KV (a remote request, once admitted,
runs to its end), or keep the process table.
"""

from __future__ import annotations

import threading
import time

from llmos.kernel.sched.policy import Entity, Policy


class Gate:
    """At most `limit` requests in flight on a CPU that does not batch (a remote server),
    granted in the policy's order. Each waiter sleeps on its own event; a release ranks the
    waiters once and wakes only those it admits."""

    def __init__(self, limit: int, policy: Policy) -> None:
        self.limit = limit
        self.policy = policy
        self._lock = threading.Lock()
        self._waiting: dict[Entity, threading.Event] = {}
        self._holders: set[Entity] = set()

    def acquire(self, entity: Entity, timeout: float | None = None) -> bool:
        """True once admitted; False if the entity is killed or the timeout passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        event = threading.Event()
        with self._lock:
            self._waiting[entity] = event
            self._dispatch()
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if event.wait(timeout=left):
                with self._lock:
                    if entity in self._holders:
                        return True
                    event.clear()
            with self._lock:
                if entity in self._holders:
                    return True
                if entity.killed or (deadline is not None and time.monotonic() >= deadline):
                    self._waiting.pop(entity, None)
                    self._dispatch()
                    return False

    def _dispatch(self) -> None:
        """Admit the best waiters into free places (lock held)."""
        for e in [e for e in self._waiting if e.killed]:
            self._waiting[e].set()  # let it see the kill and leave
        free = self.limit - len(self._holders)
        if free <= 0 or not self._waiting:
            return
        runnable = [e for e in self._waiting if not e.stopped and not e.killed]
        for e in self.policy.rank(runnable, self._holders)[:free]:
            self._holders.add(e)
            self.policy.placed([e], set())
            self._waiting.pop(e).set()

    def release(self, entity: Entity) -> None:
        with self._lock:
            self._holders.discard(entity)
            self._dispatch()

    def wake(self) -> None:
        """Re-check waiters (a kill, stop or continue happened)."""
        with self._lock:
            self._dispatch()

    @property
    def in_flight(self) -> int:
        return len(self._holders)
