"""The engine at its own level: sequences, slots, KV save/restore and prefix sharing, on the
real embedded model (SmolLM2-135M).

One sequence runs at a time, so every batch holds one sequence and greedy decoding is
bit-identical with or without a preemption in the middle: a restored (or re-prefilled)
sequence must continue with exactly the tokens it would have produced uninterrupted.

The engine is driven directly (the CPU's engine thread never starts: nothing calls
`generate`). Every test leaves all slots free (checked by the `engine` fixture).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp as ll
import pytest

from llmos.errors import ContextOverflowError
from llmos.hw.cpu.engine import Engine, EngineFull, Sequence
from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path
from llmos.hw.cpu.sampler import Sampler

pytestmark = pytest.mark.slow

N_CTX = 4096
TOTAL = 24  # tokens generated per reference run
CUT = 8  # tokens generated before a preemption


@pytest.fixture(scope="module")
def cpu() -> Iterator[EmbeddedCPU]:
    # One thread: on a loaded 2-core machine llama.cpp's spinning worker threads make two
    # threads far slower than one.
    cpu = EmbeddedCPU(embedded_model_path(), n_ctx=N_CTX, n_threads=1)
    try:
        yield cpu
    finally:
        cpu.close()


@pytest.fixture
def engine(cpu: EmbeddedCPU) -> Iterator[Engine]:
    eng = cpu.engine
    assert eng.free_slots == eng.n_seq_max
    yield eng
    assert eng.free_slots == eng.n_seq_max, "a test left a sequence resident"


def prompt_for(cpu: EmbeddedCPU, text: str) -> list[int]:
    return cpu.prompt_tokens([{"role": "user", "content": text}])


@pytest.fixture(scope="module")
def prompt(cpu: EmbeddedCPU) -> list[int]:
    return prompt_for(cpu, "Write a long story about a dragon who learns to read.")


def run_to(engine: Engine, seq: Sequence, out: list[int], n: int) -> list[int]:
    """Step `seq` alone until `out` holds `n` sampled tokens (EOG tokens included)."""
    while len(out) < n:
        sampled = engine.step([seq])
        if seq in sampled:
            out.extend(sampled[seq])
    return out


def generate(engine: Engine, prompt: list[int], n: int = TOTAL) -> list[int]:
    seq = engine.new_sequence(prompt)
    try:
        engine.admit(seq)
        return run_to(engine, seq, [], n)
    finally:
        engine.finish(seq)


@pytest.fixture(scope="module")
def reference(cpu: EmbeddedCPU, prompt: list[int]) -> list[int]:
    out = generate(cpu.engine, prompt)
    assert not any(cpu.engine.is_eog(t) for t in out), "the reference must not stop early"
    assert generate(cpu.engine, prompt) == out  # greedy decoding is deterministic
    return out


def started(engine: Engine, prompt: list[int]) -> tuple[Sequence, list[int]]:
    seq = engine.new_sequence(prompt)
    engine.admit(seq)
    return seq, run_to(engine, seq, [], CUT)


# --- the greedy sampler ------------------------------------------------------------------------


class BothSamplers:
    """The engine's greedy sampler and llama.cpp's chain with the same settings, asked for
    every token of one sequence: they must agree each time."""

    def __init__(self, engine: Engine, **settings: object) -> None:
        common = {
            "temperature": 0.0,
            "top_k": 40,
            "top_p": 0.95,
            "seed": 1,
            "n_vocab": engine.n_vocab,
            **settings,
        }
        self.fast = Sampler(engine.vocab, **common)  # type: ignore[arg-type]
        self.chain = Sampler(engine.vocab, chain=True, **common)  # type: ignore[arg-type]
        assert self.fast.greedy and not self.chain.greedy
        self.ptr = self.chain.ptr

    def sample(self, ctx: ll.llama_context_p, index: int) -> int:
        fast, chain = self.fast.sample(ctx, index), self.chain.sample(ctx, index)
        assert fast == chain
        return fast

    def accept(self, tokens: list[int]) -> None:
        self.fast.accept(tokens)
        self.chain.accept(tokens)

    def free(self) -> None:
        self.fast.free()
        self.chain.free()


@pytest.mark.parametrize(
    ("ignore_eos", "penalty", "last_n"),
    [(False, 1.0, 64), (True, 1.0, 64), (False, 1.1, 64), (True, 1.3, 4), (False, 0.8, 16)],
)
def test_greedy_sampler_picks_what_the_llama_cpp_chain_picks(
    cpu: EmbeddedCPU, engine: Engine, ignore_eos: bool, penalty: float, last_n: int
) -> None:
    # A reply that repeats itself (the penalty changes its logits), long enough for the
    # penalty's window to slide; primed history as a continued reply has.
    prompt = prompt_for(cpu, "Say 'yes yes yes' twenty times, then stop.")
    seq = engine.new_sequence(prompt)
    seq.sampler.free()
    both = BothSamplers(
        engine,
        repeat_penalty=penalty,
        repeat_last_n=last_n,
        banned=engine.eog_tokens() if ignore_eos else None,
    )
    both.accept(prompt[-3:])
    seq.sampler = both  # type: ignore[assignment]
    try:
        engine.admit(seq)
        out = run_to(engine, seq, [], 80 if ignore_eos else 1)
        while not engine.is_eog(out[-1]) and len(out) < 80:
            out = run_to(engine, seq, out, len(out) + 1)
    finally:
        engine.finish(seq)
    assert len(out) > 1
    if penalty != 1.0:  # the penalty was at work: without it the reply differs
        plain = engine.new_sequence(prompt, repeat_penalty=1.0, ignore_eos=ignore_eos)
        try:
            engine.admit(plain)
            assert run_to(engine, plain, [], len(out)) != out
        finally:
            engine.finish(plain)


# --- save / restore --------------------------------------------------------------------------


def test_ram_save_and_restore_continues_exactly(
    engine: Engine, prompt: list[int], reference: list[int]
) -> None:
    seq, out = started(engine, prompt)
    try:
        assert seq.n_past == len(prompt) + CUT - 1  # the last sampled token is still pending
        assert seq.pending == [out[-1]]
        size = engine.save(seq)
        assert size > 0 and seq.saved is not None and len(seq.saved) == size
        assert seq.slot is None and not seq.resident
        assert engine.free_slots == engine.n_seq_max
        engine.admit(seq)
        assert seq.saved is None
        assert seq.restore_failures == 0
        assert seq.n_past == len(prompt) + CUT - 1
        assert run_to(engine, seq, out, TOTAL) == reference
    finally:
        engine.finish(seq)


def test_disk_save_and_restore_continues_exactly(
    engine: Engine, prompt: list[int], reference: list[int], tmp_path: Path
) -> None:
    path = tmp_path / "seq.kv"
    seq, out = started(engine, prompt)
    try:
        size = engine.save(seq, to_path=path)
        assert seq.saved is None and seq.saved_path == path
        assert path.stat().st_size == size > 0
        assert not path.with_suffix(".tmp").exists()
        engine.admit(seq)
        assert not path.exists()  # the swap file is dropped once restored
        assert seq.saved_path is None
        assert seq.restore_failures == 0
        assert run_to(engine, seq, out, TOTAL) == reference
    finally:
        engine.finish(seq)


def test_restore_into_a_different_slot(
    engine: Engine, prompt: list[int], reference: list[int]
) -> None:
    seq, out = started(engine, prompt)
    squatter = engine.new_sequence([1, 2, 3])
    try:
        first_slot = seq.slot
        engine.save(seq)
        engine.admit(squatter)  # takes the slot seq had
        assert squatter.slot == first_slot
        engine.admit(seq)
        assert seq.slot is not None and seq.slot != first_slot
        assert seq.restore_failures == 0
        assert run_to(engine, seq, out, TOTAL) == reference
    finally:
        engine.finish(seq)
        engine.finish(squatter)


def test_two_preemptions_in_one_run(
    engine: Engine, prompt: list[int], reference: list[int], tmp_path: Path
) -> None:
    seq, out = started(engine, prompt)
    try:
        engine.save(seq)
        engine.admit(seq)
        run_to(engine, seq, out, CUT + 6)
        engine.save(seq, to_path=tmp_path / "again.kv")
        engine.admit(seq)
        assert seq.restore_failures == 0
        assert run_to(engine, seq, out, TOTAL) == reference
    finally:
        engine.finish(seq)


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "header":
        data[0:64] = b"\xff" * 64
    elif how == "truncated":
        data = data[: len(data) // 3]
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["header", "truncated", "empty", "missing"])
def test_a_damaged_or_missing_swap_file_falls_back_to_prefill(
    engine: Engine, prompt: list[int], reference: list[int], tmp_path: Path, how: str
) -> None:
    path = tmp_path / "seq.kv"
    seq, out = started(engine, prompt)
    try:
        engine.save(seq, to_path=path)
        if how == "missing":
            path.unlink()
        else:
            _damage(path, how)
        engine.admit(seq)
        assert seq.restore_failures == 1
        assert seq.n_past == 0  # everything is re-read from the tokens
        assert seq.pending == prompt + out
        assert seq.saved_path is None and not path.exists()
        assert run_to(engine, seq, out, TOTAL) == reference
    finally:
        engine.finish(seq)


def test_a_swap_file_with_corrupt_kv_data_is_detected(
    engine: Engine, prompt: list[int], reference: list[int], tmp_path: Path
) -> None:
    path = tmp_path / "seq.kv"
    seq, out = started(engine, prompt)
    try:
        engine.save(seq, to_path=path)
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid : mid + 64] = b"\xff" * 64  # f16 NaNs inside one layer's K/V data
        path.write_bytes(bytes(data))
        engine.admit(seq)
        cont = run_to(engine, seq, out, TOTAL)
        assert (seq.restore_failures, cont) == (1, reference)
    finally:
        engine.finish(seq)


def test_a_corrupt_ram_state_falls_back_to_prefill(
    engine: Engine, prompt: list[int], reference: list[int]
) -> None:
    seq, out = started(engine, prompt)
    try:
        engine.save(seq)
        assert seq.saved is not None
        seq.saved = b"\xff" * 64 + seq.saved[64:]
        engine.admit(seq)
        assert seq.restore_failures == 1
        assert run_to(engine, seq, out, TOTAL) == reference
    finally:
        engine.finish(seq)


def test_saving_a_sequence_that_has_not_run_saves_nothing(
    engine: Engine, prompt: list[int]
) -> None:
    seq = engine.new_sequence(prompt)
    try:
        assert engine.save(seq) == 0  # not resident
        engine.admit(seq)
        assert engine.save(seq) == 0  # resident but nothing in KV yet
        assert seq.saved is None and seq.slot is None
        engine.admit(seq)
        assert seq.n_past == 0 and seq.pending == prompt and seq.restore_failures == 0
    finally:
        engine.finish(seq)


# --- what greedy output depends on ------------------------------------------------------------


def test_greedy_output_depends_neither_on_cell_offset_nor_on_batching(
    cpu: EmbeddedCPU, engine: Engine, prompt: list[int], reference: list[int]
) -> None:
    # Another sequence's cells before this one's: the same tokens at another offset of the
    # unified cache (its cells still in position order) give the same output.
    other = engine.new_sequence(prompt_for(cpu, "Name three colours of the rainbow."))
    try:
        engine.admit(other)
        run_to(engine, other, [], 1)
        assert generate(engine, prompt) == reference
    finally:
        engine.finish(other)
    # The first CUT reply tokens fed in one prefill chunk rather than one step each, with the
    # repeat penalty's history primed: the same continuation (what a continued reply needs).
    seq = engine.new_sequence(prompt + reference[:CUT])
    try:
        seq.sampler.accept(reference[:CUT])
        engine.admit(seq)
        assert run_to(engine, seq, [], TOTAL - CUT) == reference[CUT:]
    finally:
        engine.finish(seq)


# --- prefix sharing --------------------------------------------------------------------------


def test_prefix_sharing_copies_the_common_prefix_and_matches(
    cpu: EmbeddedCPU, engine: Engine, prompt: list[int]
) -> None:
    other = prompt_for(cpu, "Write a short poem about the sea at night.")
    n_common = 0
    while prompt[n_common] == other[n_common]:
        n_common += 1
    assert n_common > 10  # the chat template's system prompt
    solo = generate(engine, other)

    src = engine.new_sequence(prompt)
    seq = engine.new_sequence(other)
    try:
        engine.admit(src)
        run_to(engine, src, [], 1)  # src's prompt is now in KV
        engine.admit(seq, share_from=src)
        assert seq.n_past == n_common
        assert seq.tokens == other[:n_common]
        assert seq.pending == other[n_common:]
        engine.finish(src)  # seq keeps the copied cells on its own
        assert run_to(engine, seq, [], TOTAL) == solo
    finally:
        engine.finish(src)
        engine.finish(seq)


def test_identical_prompt_shares_all_but_the_last_token(
    engine: Engine, prompt: list[int], reference: list[int]
) -> None:
    src = engine.new_sequence(prompt)
    seq = engine.new_sequence(prompt)
    try:
        engine.admit(src)
        run_to(engine, src, [], 3)
        engine.admit(seq, share_from=src)
        assert seq.n_past == len(prompt) - 1
        assert seq.pending == prompt[-1:]
        engine.release(src)
        assert run_to(engine, seq, [], TOTAL) == reference
    finally:
        engine.finish(src)
        engine.finish(seq)


def test_no_sharing_from_a_source_with_nothing_in_kv(engine: Engine, prompt: list[int]) -> None:
    src = engine.new_sequence(prompt)
    seq = engine.new_sequence(prompt)
    try:
        engine.admit(src)
        engine.admit(seq, share_from=src)
        assert seq.n_past == 0
        parked = engine.new_sequence(prompt)
        not_resident = engine.new_sequence(prompt)
        engine.admit(parked, share_from=not_resident)
        assert parked.n_past == 0
        engine.finish(parked)
        engine.finish(not_resident)
    finally:
        engine.finish(src)
        engine.finish(seq)


# --- limits and accounting -------------------------------------------------------------------


def test_a_prompt_as_long_as_the_context_is_refused(engine: Engine) -> None:
    with pytest.raises(ContextOverflowError, match=f"{N_CTX}-token context"):
        engine.new_sequence([1] * N_CTX)
    with pytest.raises(ContextOverflowError):
        engine.new_sequence([1] * (N_CTX + 100))
    with pytest.raises(ContextOverflowError, match="empty prompt"):
        engine.new_sequence([])
    seq = engine.new_sequence([1] * (N_CTX - 1))  # one token of room is allowed
    engine.finish(seq)


def test_engine_full_when_every_slot_is_taken(engine: Engine) -> None:
    seqs = [engine.new_sequence([1, 2]) for _ in range(engine.n_seq_max)]
    extra = engine.new_sequence([1, 2])
    try:
        for i, seq in enumerate(seqs):
            engine.admit(seq)
            assert engine.free_slots == engine.n_seq_max - i - 1
        assert sorted(s.slot for s in seqs) == list(range(engine.n_seq_max))  # type: ignore[type-var]
        with pytest.raises(EngineFull):
            engine.admit(extra)
        assert extra.slot is None
        engine.finish(seqs[5])
        assert engine.free_slots == 1
        engine.admit(extra)
        assert extra.slot == 5
        assert engine.free_slots == 0
    finally:
        for seq in [*seqs, extra]:
            engine.finish(seq)
    assert engine.free_slots == engine.n_seq_max


def test_finish_frees_slot_and_saved_state_once(
    engine: Engine, prompt: list[int], tmp_path: Path
) -> None:
    seq, _ = started(engine, prompt)
    assert engine.free_slots == engine.n_seq_max - 1
    slot = seq.slot
    assert slot is not None
    assert ll.llama_memory_seq_pos_max(engine.mem, slot) + 1 == seq.n_past
    path = tmp_path / "x.kv"
    engine.save(seq, to_path=path)
    assert ll.llama_memory_seq_pos_max(engine.mem, slot) == -1  # its KV cells are free
    engine.finish(seq)
    assert not path.exists()
    assert seq.slot is None and seq.saved_path is None and seq.sampler.ptr is None
    engine.finish(seq)  # a second finish is harmless
    engine.release(seq)
    assert engine.free_slots == engine.n_seq_max


def test_admitting_a_resident_sequence_is_a_no_op(engine: Engine, prompt: list[int]) -> None:
    seq = engine.new_sequence(prompt)
    try:
        engine.admit(seq)
        slot = seq.slot
        engine.admit(seq)
        assert seq.slot == slot
        assert engine.free_slots == engine.n_seq_max - 1
    finally:
        engine.finish(seq)


LETTER = (
    "Repeat the following letter exactly, word for word:\n\n"
    "Dear Ms. Alvarez,\nThank you for your order #48213 of 17 copies of 'The Quiet Harbor' at "
    "23.45 each, shipped to 12 Rue de la Paix, Paris. Our accounts team, led by Jonathan "
    "Whitaker, will send the invoice by Friday.\n"
)


def test_prompt_lookup_drafts_give_the_same_tokens_in_fewer_steps(
    cpu: EmbeddedCPU, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Speculative decoding by prompt lookup: a program that copies its input gets the very
    tokens greedy decoding gives, several per step, and the KV of rejected drafts is gone."""
    # the draft lengths follow measured step times; fixed here, so the step count is too
    monkeypatch.setattr(engine.cost, "ratio", lambda batch, extra: 1 + 0.1 * extra)
    tokens = prompt_for(cpu, LETTER)
    runs = {}
    for speculate in (False, True):
        seq = engine.new_sequence(tokens, temperature=0.0, speculate=speculate)
        engine.admit(seq)
        out: list[int] = []
        steps = 0
        while len(out) < 60:
            seq.draft_limit = 60 - len(out) - 1
            got = engine.step([seq]).get(seq)
            steps += 1
            out.extend(got or [])
            assert seq.slot is not None
            assert int(ll.llama_memory_seq_pos_max(engine.mem, seq.slot)) + 1 == seq.n_past
        runs[speculate] = (out[:60], steps, seq.lookup)
        engine.finish(seq)
    (plain, plain_steps, _), (drafted, drafted_steps, lookup) = runs[False], runs[True]
    assert drafted == plain
    assert lookup is not None and lookup.accepted > 20
    assert drafted_steps < plain_steps / 2


def test_no_drafts_for_sampled_or_constrained_replies(engine: Engine, prompt: list[int]) -> None:
    sampled = engine.new_sequence(prompt, temperature=0.7, speculate=True)
    constrained = engine.new_sequence(
        prompt, temperature=0.0, grammar='root ::= "yes" | "no"', speculate=True
    )
    assert sampled.lookup is None and constrained.lookup is None
    for seq in (sampled, constrained):
        engine.finish(seq)
