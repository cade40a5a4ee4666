"""Metering: what each owner's processes use, kept across restarts, and the per-day quota.

Every process is metered by its entity's counters (`llmos.kernel.sched.policy.Entity`): prompt
tokens, generated tokens and CPU-seconds (time resident on a CPU: holding a KV slot of the
embedded CPU, or an in-flight place of a remote one). When a process exits, `Meter.record` adds
them, with one process, to its owner's row for the day in the usage ledger
(`llmos.store.usage`, in the log database), so usage survives a restart. Until then its
counters are live: `usage` and `check` add them to today's row.

A process on a pool of CPUs also carries its use of each CPU of the pool (`entity.cpus`,
charged by `llmos.kernel.pool`): `record` adds it to the ledger's per-CPU rows in the same
transaction, and `cpu_usage` reads them with live processes' added, like `usage`.

`check(owner, quota)` refuses a spawn (QuotaError, with `retry_after_s` = seconds to the next
UTC midnight) when the owner has used `quota.tokens_per_day` tokens today (ledger plus live
processes). The live-process quota (`quota.max_processes`) is the process table's, checked
under its lock when the process is created.

Invariants:
- A process's usage is counted exactly once: live until `record` puts it in the ledger and
  marks it `metered`, under the meter's lock, which every read of live counters also takes.
- `totals()` (this kernel's life: exited and live processes) only grows, so Prometheus
  counters built on it never go backwards.
- A failure to write the ledger never takes a process's exit down with it: it is logged, and
  the process is still counted in this kernel's totals.

What this module does not do: price usage (the API applies the configured prices), cut a
running process off at the daily quota (its token budget bounds it; the next spawn is
refused), or meter devices' own work (a syscall's time is not CPU time here).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from llmos.errors import QuotaError
from llmos.kernel.proc import Process, ProcessTable
from llmos.store.usage import CpuRow, CpuUsage, Ledger, Usage, day_of, seconds_to_next_day

if TYPE_CHECKING:
    from llmos.kernel.security.policy import Quota

log = logging.getLogger("llmos.meter")

Row = tuple[str, str, Usage]  # owner, day, usage


def usage_of(proc: Process) -> Usage:
    """What one process has used so far (itself, not its children: they are metered too)."""
    e = proc.entity
    return Usage(e.prompt_tokens, e.generated, e.cpu_seconds, 1)


class Meter:
    """The usage of one kernel's processes. Thread-safe."""

    def __init__(self, table: ProcessTable, ledger: Callable[[], Ledger]) -> None:
        self._table = table
        self._ledger = ledger
        self._lock = threading.Lock()
        self._totals: dict[str, Usage] = {}  # exited processes, this kernel's life
        self.on_exit: list[Callable[[Process], None]] = []  # e.g. metrics (time to first token)

    def record(self, proc: Process) -> None:
        """Put an exiting process's usage in the ledger (once); then tell the hooks."""
        if proc.metered:
            return
        used = usage_of(proc)
        with self._lock:
            try:
                cpus = {cpu: dataclasses.replace(u) for cpu, u in proc.entity.cpus.items()}
                self._ledger().add(proc.owner, day_of(time.time()), used, cpus)
            except Exception as exc:  # the exit goes on; the kernel's totals still count it
                log.warning("usage of pid %s not recorded: %s", proc.pid, exc)
            self._totals.setdefault(proc.owner, Usage()).add(used)
            proc.metered = True
        for hook in list(self.on_exit):
            try:
                hook(proc)
            except Exception as exc:
                log.warning("exit hook failed for pid %s: %s", proc.pid, exc)

    def _live(self, owner: str | None = None) -> dict[str, Usage]:
        """Live (not yet metered) processes' usage by owner; the caller holds the lock."""
        out: dict[str, Usage] = {}
        for proc in self._table.all(include_exited=False):
            if proc.metered or (owner is not None and proc.owner != owner):
                continue
            out.setdefault(proc.owner, Usage()).add(usage_of(proc))
        return out

    def totals(self) -> dict[str, Usage]:
        """Each owner's usage during this kernel's life (exited and live processes)."""
        with self._lock:
            out = {
                o: Usage(u.prompt_tokens, u.generated_tokens, u.cpu_s, u.processes)
                for o, u in self._totals.items()
            }
            for owner, live in self._live().items():
                out.setdefault(owner, Usage()).add(live)
        return out

    def usage(
        self, owner: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[Row]:
        """Rows of the ledger (only `owner`'s when given; days `since`..`until`), with live
        processes' counters added to today's rows."""
        today = day_of(time.time())
        with self._lock:
            rows = self._ledger().rows(owner, since, until)
            live = self._live(owner)
        if (since is None or since <= today) and (until is None or until >= today):
            index = {(o, d): u for o, d, u in rows}
            for who, used in live.items():
                row = index.get((who, today))
                if row is None:
                    rows.append((who, today, used))
                else:
                    row.add(used)
            rows.sort(key=lambda r: (r[0], r[1]))
        return rows

    def cpu_usage(
        self, owner: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[CpuRow]:
        """The ledger's per-CPU rows of pool CPUs (filtered like `usage`), with live
        processes' use added to today's rows."""
        today = day_of(time.time())
        with self._lock:
            rows = self._ledger().cpu_rows(owner, since, until)
            live: dict[tuple[str, str], CpuUsage] = {}
            for proc in self._table.all(include_exited=False):
                if proc.metered or (owner is not None and proc.owner != owner):
                    continue
                for cpu, used in list(proc.entity.cpus.items()):
                    live.setdefault((proc.owner, cpu), CpuUsage()).add(used)
        if live and (since is None or since <= today) and (until is None or until >= today):
            index = {(o, d, c): u for o, d, c, u in rows}
            for (who, cpu), used in live.items():
                row = index.get((who, today, cpu))
                if row is None:
                    rows.append((who, today, cpu, used))
                else:
                    row.add(used)
            rows.sort(key=lambda r: (r[0], r[1], r[2]))
        return rows

    def today(self, owner: str) -> Usage:
        """`owner`'s usage today (UTC), live processes included."""
        found = self.usage(owner, since=day_of(time.time()))
        return found[0][2] if found else Usage()

    def check(self, owner: str, quota: Quota) -> None:
        """QuotaError if `owner` has used their tokens for today (see the module's note)."""
        limit = quota.tokens_per_day
        if limit is None:
            return
        used = self.today(owner).tokens
        if used >= limit:
            wait = seconds_to_next_day(time.time())
            raise QuotaError(
                f"{owner} used {used} tokens today (quota.tokens_per_day {limit}); "
                f"the quota resets at 00:00 UTC, in {int(wait)} s",
                wait,
            )
