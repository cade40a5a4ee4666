"""A process's context on its own: typed, token-counted segments that rejoin into the
original messages, pinned ends, tool calls kept with their results, LRU references."""

from __future__ import annotations

from llmos.hw.cpu.llama import EmbeddedCPU
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel.mm.context import Context, split_text


def conversation(n: int) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "You are a helpful assistant."}]
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        words = " ".join(f"w{i}x{j}" for j in range(20))  # no run of words shared by two
        msgs.append({"role": role, "content": f"message {i} {words}"})
    return msgs


def test_segments_are_counted_by_the_real_tokenizer(embedded: EmbeddedCPU) -> None:
    msgs = conversation(4)
    msgs[1]["content"] = "long " * 1500  # split into several segments
    ctx = Context.from_messages(msgs, 2048, embedded)
    assert len(ctx.segments) > len(msgs)
    for seg in ctx.segments:
        assert ctx.count(seg) == len(embedded.tokenize(seg.text))
        assert seg.provenance["message"] >= 0
    assert ctx.measure() == embedded.count_messages(msgs)
    assert ctx.messages() == msgs  # segments rejoin into the original messages
    kinds = ctx.accounting()["by_kind"]
    assert set(kinds) == {"program", "input", "turn"}
    assert ctx.segments[0].pinned and ctx.segments[-1].pinned


def test_split_text_cuts_at_spaces_and_rejoins() -> None:
    text = ("word " * 3000) + "x" * 5000
    pieces = split_text(text, 1000)
    assert "".join(pieces) == text
    assert all(len(p) <= 1000 for p in pieces)
    assert pieces[0].endswith(" ")


def test_appended_segments_are_labelled_and_tool_calls_ride_on_their_message() -> None:
    ctx = Context.from_messages(conversation(2), 4096, ScriptedCPU())
    call = [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{}"}}]
    ctx.append("assistant", "", "turn", {"step": 1}, tool_calls=call)
    ctx.append("tool", "42", "syscall", {"step": 1, "device": "calc"}, tool_call_id="c1")
    rendered = ctx.messages()
    assert rendered[-2]["tool_calls"] == call
    assert rendered[-1] == {"role": "tool", "content": "42", "tool_call_id": "c1"}
    assert ctx.segments[-1].kind == "syscall" and ctx.segments[-1].provenance["device"] == "calc"
    assert ctx.accounting()["by_kind"]["syscall"]["segments"] == 1


def test_a_quoted_segment_is_referenced_for_lru() -> None:
    ctx = Context.from_messages(conversation(4), 4096, ScriptedCPU())
    ctx.step = 7
    quoted = ctx.segments[2]
    ctx.touch(" ".join(quoted.text.split()[:8]))
    assert quoted.last_ref == 7
    assert all(s.last_ref == 0 for s in ctx.segments if s is not quoted and not s.pinned)
