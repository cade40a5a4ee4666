"""The dispatcher: how a batching CPU's slots are used, step by step, under the kernel's policy.

A CPU that batches (the embedded CPU) asks its dispatcher twice per engine step (see
`llmos.hw.cpu.base.Dispatcher`): `plan`, for which of its live jobs hold a KV slot and which
are preempted, and `pick`, for which of the placed jobs step now.

- Residency: the policy chooses among the jobs whose processes are not stopped, at most
  `max_resident` of them (and never more than the CPU's slots). A resident job not chosen is
  preempted.
- Where preempted KV goes: RAM while the parked states in RAM stay within `swap_ram_max`
  bytes, else a disk file (the CPU keeps it in RAM when it has no swap directory or the disk
  fails). The size of a state is estimated before saving it, at `kv_bytes_per_token` a token.
- Urgent prefill: a prompt of higher priority than every decoding job is prefilled in a step
  of its own (in full-size chunks), so an interactive arrival's first token is not held behind
  a batch of lower-priority decodes; everyone else waits one step.

Invariants: pure decisions over the jobs' views, the policy and the limits: nothing here
touches the engine, a KV state or a file, so it is tested without a model. It runs on the
engine thread every step, so it stays as lean as the loop it serves.

What this module does not do: save, restore or step sequences (the CPU does), or end jobs
(killed, cancelled, over budget: the CPU does, from the same views).
"""

from __future__ import annotations

from llmos import params
from llmos.hw.cpu.base import J, Plan, Where
from llmos.kernel.sched.policy import Entity, Policy


class PolicyDispatcher:
    """A `Dispatcher` applying the kernel's `policy`. See the module note."""

    def __init__(
        self,
        policy: Policy,
        max_resident: int = params.MAX_RESIDENT,
        *,
        swap_ram_max: int = params.SWAP_RAM_BYTES,
        kv_bytes_per_token: int = params.KV_BYTES_PER_TOKEN_ESTIMATE,
    ) -> None:
        self.policy = policy
        self.max_resident = max(1, max_resident)
        self.swap_ram_max = swap_ram_max
        self.kv_bytes_per_token = kv_bytes_per_token

    def new_view(self) -> Entity:
        return Entity()

    def plan(self, jobs: list[J], slots: int, swap_ram: int) -> Plan[J]:
        # Every view here is an Entity: the kernel's requests carry one, and `new_view` makes
        # one for a request that names no process.
        by_entity: dict[Entity, J] = {j.entity: j for j in jobs if not j.entity.stopped}  # type: ignore[misc]
        resident: set[Entity] = {j.entity for j in jobs if j.seq.resident}  # type: ignore[misc]
        slots = min(self.max_resident, slots)
        chosen = [by_entity[e] for e in self.policy.select(list(by_entity), slots, resident)]
        chosen_set = set(chosen)
        preempt: list[tuple[J, Where]] = []
        for j in jobs:
            if j.seq.resident and j not in chosen_set:
                kv = j.seq.n_past * self.kv_bytes_per_token
                if swap_ram + kv > self.swap_ram_max:
                    preempt.append((j, "disk"))
                else:
                    preempt.append((j, "ram"))
                    swap_ram += kv
        return Plan(chosen, preempt)

    def pick(self, placed: list[J]) -> list[J]:
        decoding = [j for j in placed if not j.seq.prefilling]
        if not decoding:
            return placed
        top = max(j.entity.priority for j in decoding)
        urgent = [j for j in placed if j.seq.prefilling and j.entity.priority > top]
        return urgent or placed
