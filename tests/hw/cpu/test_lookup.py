"""Prompt lookup on its own: which drafts it proposes, how long, and what a step costs."""

from __future__ import annotations

import pytest

from llmos import params
from llmos.hw.cpu.lookup import Lookup, StepCost, expected_gain


def line(fixed: float, per_token: float, sizes: range = range(1, 20)) -> StepCost:
    """A step cost measured on steps of `sizes` tokens costing fixed + per_token * n."""
    cost = StepCost()
    for n in sizes:
        cost.observe(n, fixed + per_token * n)
    return cost


CHEAP = line(0.010, 0.0001)  # a batch token nearly free: a wide machine (a GPU)
CPU = line(0.008, 0.010)  # a batch token most of a step: the 2-core test machine


def test_the_tail_is_matched_to_its_latest_earlier_occurrence() -> None:
    lookup = Lookup([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3])
    # the tail (1, 2, 3) last occurred before 7, 8: that is the draft
    assert lookup.draft(2, CHEAP) == [7, 8]
    lookup.extend([7])
    # (1, 2, 3, 7), the longest match, is followed by 8, 1, 2
    assert lookup.draft(3, CHEAP) == [8, 1, 2]


def test_no_match_no_draft_and_the_tail_never_matches_itself() -> None:
    assert Lookup([1, 2, 3, 4]).draft(8, CHEAP) == []
    assert Lookup([5, 5]).draft(8, CHEAP) == []  # a 1-gram is too short to draft from
    short = [1, 2, 9] * 2  # (1, 2) recurs, then 9: a 2-gram match
    assert Lookup(short[:-1]).draft(8, CHEAP) == ([] if params.SPEC_NGRAM_MIN > 2 else [9])


def test_the_expected_gain_weighs_the_hit_rate_against_what_batch_tokens_cost() -> None:
    # a certain draft on free batch tokens: k more tokens for nothing
    assert expected_gain(1.0, 4, 1.0, 1) == pytest.approx(1 + 0.999 * (1 - 0.999**4) / 0.001)
    # every batch token as dear as a step: drafting can only lose
    assert expected_gain(0.99, 8, 9.0, 1) < 1
    # on the CPU, a 95% hit rate pays most at a few tokens, not at sixteen
    gains = {k: expected_gain(0.95, k, CPU.ratio(1, k), 1) for k in (1, 4, 16)}
    assert gains[4] > gains[16] > 1 and gains[4] > gains[1]
    # the same draft is worth less in a full batch (it adds a smaller share of the tokens)
    assert expected_gain(0.95, 4, CPU.ratio(8, 4), 8) < gains[4]


def test_draft_length_follows_the_hit_rate_and_the_cost() -> None:
    copied = list(range(100, 140))
    lookup = Lookup(copied + copied[:5])  # the tail recurs: up to 35 tokens could follow
    lookup.p = 0.999
    assert len(lookup.draft(16, CHEAP)) == 16  # near-free tokens, near-certain hits: the most
    assert len(lookup.draft(40, CHEAP)) == params.SPEC_DRAFT_MAX
    lookup.p = 0.95
    assert 2 <= len(lookup.draft(16, CPU)) <= 8  # dear tokens: a few
    assert lookup.draft(0, CHEAP) == []


def test_hits_raise_the_rate_and_a_miss_lowers_it() -> None:
    lookup = Lookup([1, 2, 3])
    p = lookup.p
    assert p == params.SPEC_ACCEPT_PRIOR
    lookup.feedback(4, 4)
    assert lookup.p > p
    high = lookup.p
    lookup.feedback(4, 1)  # one hit, then a miss
    d, prior, strength = (
        params.SPEC_ACCEPT_DECAY,
        params.SPEC_ACCEPT_PRIOR,
        params.SPEC_ACCEPT_STRENGTH,
    )
    hits = sum(d**i for i in range(6))  # five hits, each then weighed less by every later token
    misses = 1.0
    hits -= 1.0  # ...the newest of the six weights is the miss's
    assert lookup.p == pytest.approx((hits + prior * strength) / (hits + misses + strength))
    assert lookup.p < high
    assert (lookup.drafted, lookup.accepted) == (8, 5)


def test_one_miss_after_a_long_copy_keeps_drafting_but_misses_in_a_row_stop_it() -> None:
    lookup = Lookup([1, 2, 3])
    lookup.feedback(40, 40)  # a span copied whole
    lookup.feedback(8, 3)  # it ends: one miss
    assert lookup.p > 0.9
    copied = Lookup(list(range(100, 140)) + list(range(100, 105)))
    copied.hits, copied.misses, copied.p = lookup.hits, lookup.misses, lookup.p
    assert len(copied.draft(16, CPU)) > 1  # still worth drafting on the CPU's costs
    misses = 0
    while len(copied.draft(16, CPU)) > 1:  # the sequence stopped copying: drafts fail at once
        copied.feedback(2, 0)
        misses += 1
    assert 2 <= misses <= 6  # one miss is not enough to stop, a few in a row are


def test_a_sequence_whose_drafts_fail_waits_then_probes_with_one_token() -> None:
    lookup = Lookup(list(range(40)) + list(range(5)))
    lookup.p = 0.2  # its drafts have failed: no length pays on the CPU
    waits = params.SPEC_BACKOFF_MIN
    probe = lookup.draft(8, CPU)
    assert probe == [5]  # the first time, a probe of one token
    assert [lookup.draft(8, CPU) for _ in range(waits)] == [[]] * waits
    assert lookup.draft(8, CPU) == [5]  # the wait is over: another probe
    lookup.feedback(1, 0)  # it failed: the next wait is twice as long
    assert lookup.wait == 2 * waits
    lookup.feedback(1, 1)  # a probe that held: judged again at the next step
    assert lookup.wait == 0 and lookup.backoff == params.SPEC_BACKOFF_MIN


def test_step_cost_is_what_each_size_took_and_a_line_between() -> None:
    cost = StepCost()
    prior = params.SPEC_COST_PRIOR_PER_TOKEN
    assert cost.ratio(1, 4) == pytest.approx(1 + 4 * prior)  # nothing seen yet: the prior
    for _ in range(5):
        cost.observe(1, 0.018)
    assert cost.ratio(1, 4) == pytest.approx(1 + 4 * prior)  # one size: the prior's shape
    for n in (2, 4, 8, 16, 1, 1):
        cost.observe(n, 0.008 + 0.010 * n)  # 8 ms fixed, 10 ms a token
    assert cost.ratio(1, 5) == pytest.approx(0.068 / 0.018)  # 6 tokens: never seen, the line
    cost.observe(400, 1.0)  # a prefill chunk: other kernels, not fitted
    cost.observe(0, 0.5)
    assert cost.ratio(1, 5) == pytest.approx(0.068 / 0.018)
    # a size seen costs what it took, line or not: two tokens as dear as two steps
    for _ in range(50):
        cost.observe(2, 0.036)
    assert cost.ratio(1, 1) == pytest.approx(2.0, rel=0.01)
    assert cost.ratio(2, 0) == 1.0
