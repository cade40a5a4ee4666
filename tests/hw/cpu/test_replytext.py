"""A reply's text as tokens arrive: characters split across tokens, stop strings spanning
tokens, and the tail held back while it could still become one (no model needed)."""

from __future__ import annotations

from llmos.hw.cpu.replytext import ReplyText


def test_a_character_split_between_tokens_is_emitted_once_whole() -> None:
    reply = ReplyText([])
    euro = "€".encode()
    assert not reply.add(b"price " + euro[:1])
    assert reply.take(final=False) == "price "
    assert not reply.add(euro[1:])
    assert reply.take(final=False) == "€"


def test_a_stop_string_across_tokens_ends_the_reply_before_it() -> None:
    reply = ReplyText(["END"])
    emitted = []
    for piece in (b"one two E", b"N", b"D three"):
        stopped = reply.add(piece)
        emitted.append(reply.take(final=stopped))
        if stopped:
            break
    assert stopped
    assert "".join(emitted) == "one two "
    assert emitted[0] == "one two "  # "E" waits: it may begin "END"


def test_a_held_tail_that_does_not_become_a_stop_string_is_emitted() -> None:
    reply = ReplyText(["END"])
    assert not reply.add(b"the E")
    assert reply.take(final=False) == "the "
    assert not reply.add(b"ast")
    assert reply.take(final=False) == "East"


def test_final_emits_everything_left_and_held_text_comes_first() -> None:
    reply = ReplyText(["END"], held="earlier ")
    assert not reply.add(b"EN")
    assert reply.take(final=False) == "earlier "
    assert reply.take(final=True) == "EN"
    assert not reply.add("é".encode()[:1])
    assert reply.take(final=True) == "\ufffd"  # an unfinished character at the very end
