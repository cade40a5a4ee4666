"""The dispatcher of a batching CPU, without a model.

A job is faked as an entity (the kernel's `Entity`) and a sequence view (resident, prefilling,
tokens in KV): `plan` is what the engine thread asks before a step, `pick` what it asks after
placing the plan's jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmos import params
from llmos.hw.cpu.base import ArrivalOrder, Unscheduled
from llmos.kernel.sched.dispatch import PolicyDispatcher
from llmos.kernel.sched.policy import FIFO, Entity, PriorityAging


@dataclass
class FakeSeq:
    resident: bool = False
    prefilling: bool = False
    n_past: int = 0


@dataclass(eq=False)
class FakeJob:
    entity: Entity = field(default_factory=Entity)
    seq: FakeSeq = field(default_factory=FakeSeq)


def jobs(n: int) -> list[FakeJob]:
    return [FakeJob() for _ in range(n)]


def test_the_policy_chooses_residents_in_its_order_and_the_others_are_preempted() -> None:
    a, b, c = jobs(3)
    c.seq.resident = True
    plan = PolicyDispatcher(FIFO(), max_resident=2).plan([c, b, a], slots=16, swap_ram=0)
    assert plan.resident == [a, b]  # admitted in arrival order, not list order
    assert plan.preempt == [(c, "ram")]


def test_residents_that_stay_chosen_are_not_preempted() -> None:
    a, b = jobs(2)
    a.seq.resident = b.seq.resident = True
    plan = PolicyDispatcher(FIFO(), max_resident=2).plan([a, b], slots=16, swap_ram=0)
    assert plan.resident == [a, b] and plan.preempt == []


def test_stopped_jobs_are_never_chosen_and_give_their_slot_back() -> None:
    a, b, c = jobs(3)
    a.seq.resident = True
    a.entity.stopped = True
    plan = PolicyDispatcher(FIFO(), max_resident=1).plan([a, b, c], slots=16, swap_ram=0)
    assert plan.resident == [b]
    assert plan.preempt == [(a, "ram")]


def test_residency_is_bounded_by_the_cpus_slots_and_by_max_resident() -> None:
    many = jobs(5)
    assert len(PolicyDispatcher(FIFO(), max_resident=4).plan(many, 3, 0).resident) == 3
    assert len(PolicyDispatcher(FIFO(), max_resident=2).plan(many, 16, 0).resident) == 2
    assert len(PolicyDispatcher(FIFO(), max_resident=0).plan(many, 16, 0).resident) == 1


def test_a_higher_priority_arrival_displaces_a_resident() -> None:
    low, high = jobs(2)
    low.entity.priority = params.MIN_PRIORITY
    low.seq.resident = True
    high.entity.priority = params.MAX_PRIORITY
    plan = PolicyDispatcher(PriorityAging(), max_resident=1).plan([low, high], 16, 0)
    assert plan.resident == [high]
    assert plan.preempt == [(low, "ram")]


def test_preempted_kv_goes_to_ram_up_to_the_limit_then_to_disk() -> None:
    dispatcher = PolicyDispatcher(FIFO(), max_resident=1, swap_ram_max=1000, kv_bytes_per_token=10)
    runner, fits, spills = jobs(3)
    for job in (fits, spills):
        job.seq.resident = True
    runner.entity.arrival = -1  # first in FIFO order: the only one chosen
    fits.seq.n_past = 10  # 100 bytes: 900 + 100 is at the limit, not over it
    spills.seq.n_past = 1  # 10 bytes: over the limit once `fits` is counted
    plan = dispatcher.plan([runner, fits, spills], slots=16, swap_ram=900)
    assert plan.resident == [runner]
    assert plan.preempt == [(fits, "ram"), (spills, "disk")]


def test_a_state_larger_than_the_ram_left_goes_to_disk_alone() -> None:
    dispatcher = PolicyDispatcher(FIFO(), max_resident=1, swap_ram_max=1000, kv_bytes_per_token=10)
    runner, big, small = jobs(3)
    runner.entity.arrival = -1
    big.seq.resident = small.seq.resident = True
    big.seq.n_past, small.seq.n_past = 200, 5
    plan = dispatcher.plan([runner, big, small], slots=16, swap_ram=0)
    assert plan.preempt == [(big, "disk"), (small, "ram")]


def test_the_default_swap_limits_come_from_params() -> None:
    dispatcher = PolicyDispatcher(FIFO())
    assert dispatcher.swap_ram_max == params.SWAP_RAM_BYTES
    assert dispatcher.kv_bytes_per_token == params.KV_BYTES_PER_TOKEN_ESTIMATE
    assert dispatcher.max_resident == params.MAX_RESIDENT


def test_a_higher_priority_prefill_steps_alone() -> None:
    decode, prompt = jobs(2)
    prompt.seq.prefilling = True
    prompt.entity.priority = decode.entity.priority + 1
    assert PolicyDispatcher(FIFO()).pick([decode, prompt]) == [prompt]


def test_a_prefill_of_equal_or_lower_priority_steps_with_the_batch() -> None:
    decode, prompt = jobs(2)
    prompt.seq.prefilling = True
    dispatcher = PolicyDispatcher(FIFO())
    assert dispatcher.pick([decode, prompt]) == [decode, prompt]
    prompt.entity.priority = decode.entity.priority - 1
    assert dispatcher.pick([decode, prompt]) == [decode, prompt]


def test_the_urgent_rule_compares_with_the_highest_decoding_priority() -> None:
    low, high, prompt = jobs(3)
    prompt.seq.prefilling = True
    low.entity.priority, high.entity.priority, prompt.entity.priority = 0, 5, 3
    assert PolicyDispatcher(FIFO()).pick([low, high, prompt]) == [low, high, prompt]
    prompt.entity.priority = 6
    assert PolicyDispatcher(FIFO()).pick([low, high, prompt]) == [prompt]


def test_only_prefills_all_step() -> None:
    a, b = jobs(2)
    a.seq.prefilling = b.seq.prefilling = True
    b.entity.priority = a.entity.priority + 3
    assert PolicyDispatcher(FIFO()).pick([a, b]) == [a, b]


def test_a_request_without_a_process_gets_an_entity_the_policy_can_rank() -> None:
    assert isinstance(PolicyDispatcher(FIFO()).new_view(), Entity)


# --- the hardware's default, for a CPU no kernel configures -----------------------------------


def test_arrival_order_fills_the_slots_in_list_order_and_parks_the_rest_in_ram() -> None:
    a, b, c = jobs(3)
    c.seq.resident = True
    a.entity.stopped = True
    plan = ArrivalOrder().plan([a, b, c], slots=1, swap_ram=0)
    assert plan.resident == [b]
    assert plan.preempt == [(c, "ram")]
    prompt = FakeJob(seq=FakeSeq(prefilling=True))
    prompt.entity.priority = b.entity.priority + 1
    assert ArrivalOrder().pick([b, prompt]) == [b, prompt]


def test_the_default_view_never_stops_and_has_no_budget() -> None:
    view = ArrivalOrder().new_view()
    assert isinstance(view, Unscheduled)
    assert view.charge(prompt=10**9, generated=10**9) and not view.over_budget
    assert not (view.stopped or view.killed)
