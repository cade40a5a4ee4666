"""KV transfer between two embedded CPUs of one model in a pool: `migrate` moves a running
reply's KV (nothing recomputed; greedy output as if uninterrupted), a failed CPU's reply
resumes from its last KV checkpoint (only the tokens after it recomputed), and a state of
another model or another prompt is never loaded (the reply re-prefills from its text).

Real engines on the shipped model; the only double is `FaultyCPU` (llmos.hw.cpu.faulty),
which breaks a member's stream off at a chosen point, as a server that goes away does."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest

from llmos import params
from llmos.hw.cpu.base import CPU, GenRequest, Handoff, KVState
from llmos.hw.cpu.faulty import FaultyCPU
from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path
from llmos.kernel.pool import MemberSpec, PoolCPU, PoolSpec
from llmos.kernel.sched.policy import Entity

pytestmark = pytest.mark.slow

N_CTX = 2048
MAX_TOKENS = 80


@pytest.fixture
def pair() -> Iterator[tuple[EmbeddedCPU, EmbeddedCPU]]:
    """Two fresh engines: greedy replies compare equal only between engines whose caches hold
    the same prefixes (a prefix shared from the cache was computed in another batch shape, and
    llama.cpp's numbers depend on it)."""
    e1 = EmbeddedCPU(embedded_model_path(), name="e1", n_ctx=N_CTX)
    e2 = EmbeddedCPU(embedded_model_path(), name="e2", n_ctx=N_CTX)
    try:
        yield e1, e2
    finally:
        e1.close()
        e2.close()


def request(text: str, entity: Entity | None = None) -> GenRequest:
    return GenRequest(
        messages=[{"role": "user", "content": text}],
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        entity=entity,
    )


def pool_of(members: dict[str, CPU], *, kv_transfer: bool = True) -> PoolCPU:
    spec = PoolSpec("p", tuple(MemberSpec(n, n) for n in members))
    return PoolCPU(spec, members.__getitem__, kv_transfer=kv_transfer)


def uninterrupted(cpu: CPU, text: str) -> str:
    return "".join(c.text for c in cpu.generate(request(text)))


def test_migrate_moves_the_kv_and_the_reply_goes_on_as_if_uninterrupted(
    pair: tuple[EmbeddedCPU, EmbeddedCPU],
) -> None:
    e1, e2 = pair
    prompt = "Write a long story about a dragon who lives in a castle."
    # the reference runs where the source will not find its prompt cached: a shared prefix
    # computes the prompt's last token in another batch shape, and greedy may then differ
    want = uninterrupted(e2, prompt)
    pool = pool_of({"e1": e1, "e2": e2})
    before = e2.stats()
    got, last = "", None
    for chunk in pool.generate(request(prompt, Entity(pid=9, owner="alice"))):
        got += chunk.text
        if len(got) > 40 and 9 not in pool.pins:
            pool.migrate(9, "e2")
        if chunk.done:
            last = chunk
    after = e2.stats()
    assert got == want  # greedy: the same reply, token for token
    assert last is not None and last.finish_reason in {"stop", "length"}
    assert after["kv_imports"] == before["kv_imports"] + 1
    assert after["prefill_tokens"] == before["prefill_tokens"]  # nothing recomputed
    stats = pool.stats()
    assert stats["migrations"] == 1 and stats["kv_resumes"] == 1
    used = {u["cpu"]: u for u in stats["usage"] if u["user"] == "alice"}
    assert set(used) == {"e1", "e2"}
    # every generated token is metered once, on the CPU that generated it
    total = used["e1"]["generated_tokens"] + used["e2"]["generated_tokens"]
    assert total == last.completion_tokens


@pytest.mark.parametrize("kv_transfer", [True, False], ids=["kv", "re-prefill"])
def test_a_failed_cpu_s_reply_resumes_from_its_last_checkpoint(
    pair: tuple[EmbeddedCPU, EmbeddedCPU], kv_transfer: bool
) -> None:
    e1, e2 = pair
    prompt = f"Tell me about the history of bridges ({'kv' if kv_transfer else 'text'})."
    # the reference on the target only where it is compared: a re-prefill there would find
    # the prompt cached
    want = uninterrupted(e2, prompt) if kv_transfer else ""
    dying = FaultyCPU(e1, after=params.POOL_KV_CHECKPOINT_TOKENS + 8)
    pool = pool_of({"a": dying, "b": e2}, kv_transfer=kv_transfer)
    n_prompt = e2.count_messages(request(prompt).messages)
    before = e2.stats()
    got, seen_at_death = "", ""
    for chunk in pool.generate(request(prompt, Entity(pid=11))):
        got += chunk.text
        if dying.died and not seen_at_death:
            seen_at_death = got
    after = e2.stats()
    recomputed = after["prefill_tokens"] - before["prefill_tokens"]
    assert dying.died and pool.stats()["failovers"] == 1
    assert got.startswith(seen_at_death) and len(got) > len(seen_at_death)  # nothing lost
    if kv_transfer:
        assert got == want
        assert after["kv_imports"] == before["kv_imports"] + 1
        # only the tokens after the last checkpoint are computed again, not the prompt
        assert 0 < recomputed < n_prompt
    else:
        assert after["kv_imports"] == before["kv_imports"]
        assert recomputed >= n_prompt  # the context and the reply so far


def test_a_state_of_another_model_or_prompt_is_never_loaded(
    pair: tuple[EmbeddedCPU, EmbeddedCPU],
) -> None:
    e1, e2 = pair
    prompt = "List the colours of the rainbow, one per line."
    handoff, sent = Handoff(), ""
    first = request(prompt)
    first.handoff = handoff
    for chunk in e1.generate(first):
        sent += chunk.text
        if len(sent) > 20:
            handoff.request_move()
    state = handoff.state()
    assert state is not None and state.n_kv > 0 and state.model == e2.kv_model

    def continued(resume: KVState | None, prefix: str) -> str:
        sub = request(prompt)
        sub.resume, sub.prefix = resume, prefix
        return "".join(c.text for c in e2.generate(sub))

    by_text = continued(None, sent)  # a re-prefill from the text
    n = state.n_prompt
    foreign = [
        (dataclasses.replace(state, model="sha256:" + "0" * 64), sent),  # another model
        # another prompt
        (dataclasses.replace(state, tokens=(state.tokens[0] + 1, *state.tokens[1:])), sent),
        (state, sent[:-3] + "zzz"),  # another reply than the caller received
        (dataclasses.replace(state, n_kv=len(state.tokens)), sent),  # KV past its tokens
        (dataclasses.replace(state, tokens=state.tokens[: n - 1]), sent),  # a cut state
    ]
    for bad, prefix in foreign:
        before = e2.stats()
        text = continued(bad, prefix)
        assert e2.stats()["kv_imports"] == before["kv_imports"], (bad.model, bad.n_kv, prefix)
        if prefix == sent:
            assert text == by_text
    # the genuine state loads, and recomputes nothing
    before = e2.stats()
    assert continued(state, sent)
    assert e2.stats()["kv_imports"] == before["kv_imports"] + 1
    assert e2.stats()["prefill_tokens"] == before["prefill_tokens"]


def test_a_member_of_another_model_gets_a_moved_reply_by_re_prefill(
    pair: tuple[EmbeddedCPU, EmbeddedCPU],
) -> None:
    e1, e2 = pair
    pool = pool_of({"e1": e1, "e2": e2})
    pool.members["e2"].kv_model = "sha256:another"  # as a pool of two GGUFs would have it
    before = e2.stats()
    got = ""
    for chunk in pool.generate(request("Describe a quiet morning by a lake.", Entity(pid=12))):
        got += chunk.text
        if len(got) > 30 and 12 not in pool.pins:
            pool.migrate(12, "e2")
    after = e2.stats()
    assert pool.stats()["migrations"] == 1 and pool.stats()["kv_resumes"] == 0
    assert after["kv_imports"] == before["kv_imports"] and after["kv_exports"] == 0
    assert after["prefill_tokens"] > before["prefill_tokens"]


def test_a_parked_reply_leaves_a_checkpoint_and_moves_while_stopped(
    pair: tuple[EmbeddedCPU, EmbeddedCPU],
) -> None:
    e1, e2 = pair
    prompt = "Explain how a lighthouse works, step by step."
    want = uninterrupted(e2, prompt)
    handoff = Handoff(every=10_000)  # no periodic checkpoint: only the one the park leaves
    entity = Entity(pid=13)
    first = request(prompt, entity)
    first.handoff = handoff
    stream = e1.generate(first)
    sent = ""
    for chunk in stream:
        sent += chunk.text
        if len(sent) > 30:
            break
    entity.stopped = True
    if entity.on_change is not None:
        entity.on_change()
    deadline = time.monotonic() + 30
    while entity.swapped != "ram" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert entity.swapped == "ram"  # parked: its KV saved to RAM, and to the handoff
    parked = handoff.state()
    assert parked is not None and parked.kv and parked.n_kv == len(parked.tokens) - 1
    handoff.request_move()  # moved while stopped: the engine hands it over all the same
    rest = list(stream)
    assert rest[-1].finish_reason == "moved" and e1.stats()["kv_exports"] >= 1
    sent += "".join(c.text for c in rest)
    state = handoff.state()
    assert state is not None and state.tokens[: len(parked.tokens)] == parked.tokens
    entity.stopped = False
    follow = request(prompt, entity)
    follow.resume, follow.prefix = state, sent
    before = e2.stats()
    got = sent + "".join(c.text for c in e2.generate(follow))
    assert got == want
    assert e2.stats()["kv_imports"] == before["kv_imports"] + 1
    assert e2.stats()["prefill_tokens"] == before["prefill_tokens"]
