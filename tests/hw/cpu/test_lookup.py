"""Prompt lookup on its own: which drafts it proposes and how the draft length adapts."""

from __future__ import annotations

from llmos import params
from llmos.hw.cpu.lookup import Lookup


def test_the_tail_is_matched_to_its_latest_earlier_occurrence() -> None:
    lookup = Lookup([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3])
    lookup.k = 8  # a sequence whose drafts have held (a new one starts at SPEC_DRAFT_START)
    # the tail (1, 2, 3) last occurred before 7, 8: that is the draft
    assert lookup.draft(2) == [7, 8]
    lookup.extend([7])
    assert lookup.draft(3) == [8, 1, 2]  # (1, 2, 3, 7), the longest match, is followed by 8, 1, 2


def test_no_match_no_draft_and_the_tail_never_matches_itself() -> None:
    assert Lookup([1, 2, 3, 4]).draft(8) == []
    assert Lookup([5, 5]).draft(8) == []  # a 1-gram is too short to draft from
    short = [1, 2, 9] * 2  # (1, 2) recurs, then 9: a 2-gram match
    assert Lookup(short[:-1]).draft(8) == ([] if params.SPEC_NGRAM_MIN > 2 else [9])


def test_the_draft_length_grows_while_drafts_hold_and_backs_off_after_a_miss() -> None:
    lookup = Lookup(list(range(40)) + list(range(5)))
    start = lookup.k
    assert start == params.SPEC_DRAFT_START
    lookup.feedback(start, start)
    assert lookup.k == 2 * start
    while lookup.k < 8:  # drafts accepted whole: the length doubles
        lookup.feedback(lookup.k, lookup.k)
    drafted, accepted = lookup.drafted, lookup.accepted
    lookup.feedback(lookup.k, 3)  # partly accepted: the next draft is what held, plus one
    assert lookup.k == 4
    lookup.feedback(4, 0)  # rejected at once: no drafts for a while
    assert [lookup.draft(8) for _ in range(params.SPEC_BACKOFF_MIN)] == [[]] * 4
    assert lookup.draft(8) != []
    assert lookup.k == min(params.SPEC_DRAFT_START, params.SPEC_DRAFT_MAX)
    lookup.feedback(2, 0)  # again: the back-off doubles
    assert lookup.wait == 2 * params.SPEC_BACKOFF_MIN
    assert lookup.drafted == drafted + 8 + 4 + 2 and lookup.accepted == accepted + 3
