"""Prompt lookup on its own: which drafts it proposes and how the draft length adapts."""

from __future__ import annotations

from llmos import params
from llmos.hw.cpu.lookup import Lookup


def test_the_tail_is_matched_to_its_latest_earlier_occurrence() -> None:
    lookup = Lookup([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3])
    # the tail (1, 2, 3) last occurred before 7, 8: that is the draft
    assert lookup.draft(2) == [7, 8]
    lookup.extend([7])
    assert lookup.draft(3) == [8, 1]  # (2, 3, 7) is followed by 8, 1 (k starts small)


def test_no_match_no_draft_and_the_tail_never_matches_itself() -> None:
    assert Lookup([1, 2, 3, 4]).draft(8) == []
    assert Lookup([5, 5]).draft(8) == []  # a 1-gram is too short to draft from


def test_the_draft_length_grows_while_drafts_hold_and_backs_off_after_a_miss() -> None:
    lookup = Lookup(list(range(40)) + list(range(5)))
    start = lookup.k
    lookup.feedback(start, start)
    assert lookup.k == 2 * start
    lookup.feedback(lookup.k, 3)  # partly accepted: the next draft is what held, plus one
    assert lookup.k == 4
    lookup.feedback(4, 0)  # rejected at once: no drafts for a while
    assert [lookup.draft(8) for _ in range(params.SPEC_BACKOFF_MIN)] == [[]] * 4
    assert lookup.draft(8) != []
    lookup.feedback(2, 0)  # again: the back-off doubles
    assert lookup.wait == 2 * params.SPEC_BACKOFF_MIN
    assert lookup.drafted == start + 4 + 4 + 2 and lookup.accepted == start + 3
