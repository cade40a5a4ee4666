"""Context accounting and paging: segments counted by the real tokenizer, each paging policy,
page-out/page-in round trips, pinned overflow, a full disk during a page-out, huge inputs, and
how a page-out meets the embedded CPU's KV (only the changed suffix is prefilled again)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmos import params
from llmos.errors import ContextOverflowError, MemoryStoreError
from llmos.hw.cpu.base import GenRequest, collect
from llmos.hw.cpu.llama import EmbeddedCPU
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel.mm.context import Context
from llmos.kernel.mm.paging import LRU, Oldest, Pager, Summarize, cpu_summarizer
from llmos.store.memory import MemoryStore
from tests.conftest import RunCli

SYSTEM = "You answer questions about the notes the user gave you."


def notes(n: int, words: int = 40) -> list[str]:
    return [
        f"Note {i}: " + " ".join(f"w{i}x{j}" for j in range(words)) + f" The code of note {i} is "
        f"K{i * 7919 % 10007}."
        for i in range(n)
    ]


def conversation(n: int) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": SYSTEM}]
    for i, note in enumerate(notes(n)):
        msgs.append({"role": "user", "content": note})
        msgs.append({"role": "assistant", "content": f"Noted {i}."})
    msgs.append({"role": "user", "content": "What is the code of note 3?"})
    return msgs


@pytest.fixture
def store(tmp_path: Path) -> MemoryStore:
    s = MemoryStore.open(tmp_path / "memory.db")
    yield s
    s.close()


def pager(store: MemoryStore, policy: object, reserve: int = 32) -> Pager:
    return Pager(
        store=lambda: store, owner="alice", process="proc-1", policy=policy, reserve=reserve
    )


def reassemble(ctx: Context, store: MemoryStore) -> list[dict[str, object]]:
    """The context's messages with every paged-out segment's text read back from its page."""
    out: list[dict[str, object]] = []
    last_msg = None
    for seg in ctx.segments:
        if seg.resident:
            text = seg.text
        else:
            page = store.page("alice", seg.page or 0)
            assert page is not None
            text = str(page["text"])
        if seg.msg != last_msg:
            out.append({**seg.fields, "role": seg.role, "content": ""})
            last_msg = seg.msg
        out[-1]["content"] = str(out[-1]["content"]) + text
    return out


# --- policies and round trips ----------------------------------------------------------------
@pytest.mark.parametrize("policy", [Oldest(), LRU()], ids=["oldest", "lru"])
def test_page_out_fits_and_round_trips(store: MemoryStore, policy: object) -> None:
    cpu = ScriptedCPU()
    msgs = conversation(30)
    ctx = Context.from_messages(msgs, 600, cpu)
    p = pager(store, policy)
    p.attach(ctx)
    ctx.fit()
    assert ctx.used <= 600 - 32
    assert ctx.used <= int((600 - 32) * params.PAGE_LOW_WATER) + 40  # hysteresis
    assert p.pages_out > 0
    rendered = ctx.messages()
    assert rendered[0]["content"] == SYSTEM  # pinned
    assert rendered[-1]["content"] == msgs[-1]["content"]  # pinned
    assert any("[paged out: p" in str(m["content"]) for m in rendered)
    assert len(rendered) < len(msgs)  # a run of whole messages paged out is one stub
    # Nothing lost: the pages reassemble the original history exactly.
    assert reassemble(ctx, store) == msgs


def test_oldest_pages_out_the_oldest_first(store: MemoryStore) -> None:
    ctx = Context.from_messages(conversation(30), 600, ScriptedCPU())
    pager(store, Oldest()).attach(ctx)
    ctx.fit()
    paged = [s.id for s in ctx.paged()]
    resident = [s.id for s in ctx.segments if s.resident and not s.pinned]
    assert paged and resident and max(paged) < min(resident)


def test_lru_keeps_what_was_referenced(store: MemoryStore) -> None:
    ctx = Context.from_messages(conversation(30), 600, ScriptedCPU())
    p = pager(store, LRU())
    p.attach(ctx)
    ctx.step = 5
    ctx.touch("I see that " + " ".join(f"w2x{j}" for j in range(8)))  # quotes note 2
    ctx.fit()
    note2 = next(s for s in ctx.segments if s.text.startswith("Note 2:"))
    assert note2.resident
    assert not next(s for s in ctx.segments if s.id == 3).resident  # note 1 was not quoted
    # With oldest-first, the same note would have gone.
    ctx2 = Context.from_messages(conversation(30), 600, ScriptedCPU())
    pager(store, Oldest()).attach(ctx2)
    ctx2.fit()
    assert all(not s.resident for s in ctx2.segments if s.text.startswith("Note 2:"))


def test_summarize_writes_a_model_summary_into_the_stub(store: MemoryStore) -> None:
    summarizer_cpu = ScriptedCPU(["Notes zero to twenty list codes."] * params.SUMMARY_MAX_CALLS)
    ctx = Context.from_messages(conversation(30), 600, ScriptedCPU())
    p = pager(store, Summarize(cpu_summarizer(summarizer_cpu)))
    p.attach(ctx)
    ctx.fit()
    text = "\n".join(str(m["content"]) for m in ctx.messages())
    assert "Notes zero to twenty list codes." in text
    assert summarizer_cpu.requests, "the summarizer was asked"
    first = next(s for s in ctx.paged())
    page = store.page("alice", first.page or 0)
    assert page is not None and page["summary"] == "Notes zero to twenty list codes."
    assert reassemble(ctx, store) == conversation(30)


def test_pinned_text_that_cannot_fit_is_a_clear_overflow(store: MemoryStore) -> None:
    msgs = [{"role": "system", "content": "word " * 900}, {"role": "user", "content": "hi"}]
    ctx = Context.from_messages(msgs, 500, ScriptedCPU())
    pager(store, Oldest()).attach(ctx)
    with pytest.raises(ContextOverflowError, match="program's text and latest message"):
        ctx.fit()


def test_disk_full_during_page_out_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    store = MemoryStore.open(path)
    used = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {used + 2}")  # a disk with 8 KiB left
    msgs = conversation(60)
    ctx = Context.from_messages(msgs, 600, ScriptedCPU())
    pager(store, Oldest()).attach(ctx)
    before = ctx.messages()
    with pytest.raises(MemoryStoreError, match="disk is full"):
        ctx.fit()
    assert ctx.messages() == before and not ctx.paged()
    assert store.db.execute("SELECT count(*) FROM pages").fetchone()[0] == 0
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()


def test_a_huge_input_pages_instead_of_truncating(
    store: MemoryStore, embedded: EmbeddedCPU
) -> None:
    line = "The quick brown fox jumps over the lazy dog near the river bank. "
    big = "".join(f"{line}[{i}]\n" for i in range(80_000))  # about 5.4 MB
    big += "The secret word is PAPAYA."
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": big}]
    ctx = Context.from_messages(msgs, 2048, embedded)
    p = pager(store, Oldest(), reserve=128)
    p.attach(ctx)
    ctx.fit()
    assert ctx.used <= 2048 - 128
    assert ctx.used == embedded.count_messages(ctx.messages())
    assert "PAPAYA" in str(ctx.messages()[1]["content"])  # the end (pinned) stays in view
    assert p.pages_out > 2000
    # Untouched segments were never tokenized: only what stayed was counted.
    assert sum(1 for s in ctx.segments if s.tokens is not None) < 50
    assert reassemble(ctx, store)[1]["content"] == big
    hits = store.search_pages("alice", "proc-1", "fox jumps [79000]", 3)
    assert hits and hits[0].ref.startswith("p")


# --- the two layers: a page-out edits a resident sequence's KV ------------------------------
def test_page_out_reprefills_only_the_changed_suffix(
    store: MemoryStore, embedded: EmbeddedCPU
) -> None:
    msgs = conversation(8)  # within params.PREFIX_CACHE_TOKENS, so its prompt KV is kept
    ctx = Context.from_messages(msgs, 4096, embedded)
    p = pager(store, LRU(), reserve=16)
    p.attach(ctx)
    ctx.fit()
    assert not ctx.paged()
    collect(embedded.generate(GenRequest(messages=ctx.messages(), max_tokens=1)))
    first = embedded.prompt_tokens(ctx.messages())
    # Page out one late segment only (everything before it is unchanged).
    late = [s for s in ctx.segments if s.kind == "input" and not s.pinned][-1]
    p._page_out(ctx, [late])
    assert [s.id for s in ctx.paged()] == [late.id]
    second = embedded.prompt_tokens(ctx.messages())
    common = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    shared_before = embedded.prefix_shared_tokens
    collect(embedded.generate(GenRequest(messages=ctx.messages(), max_tokens=1)))
    reused = embedded.prefix_shared_tokens - shared_before
    assert reused >= common - 1  # the KV up to the page-out was kept
    assert len(second) - reused <= len(second) - common + 1  # only the suffix was prefilled
    assert common > len(second) // 2


def test_store_file_is_not_touched_by_a_failed_open(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    path.write_bytes(b"this is not a database" * 100)
    before = path.read_bytes()
    with pytest.raises(MemoryStoreError, match="is corrupt"):
        MemoryStore.open(path)
    assert path.read_bytes() == before


SUMMARIZE_2K = """---
name: summarize2k
config:
  maxOutputTokens: 24
input:
  schema:
    input: string
llmos.max_steps: 1
llmos.context: 2048
---
{{role "system"}}
You write short summaries.
{{role "user"}}
Summarize this text:

{{input}}
"""


def test_a_50_mb_input_to_a_2k_context_pages(run_cli: RunCli, tmp_path: Path) -> None:
    """The whole path: `llmos run` on the embedded model with 50 MB on stdin."""
    program = tmp_path / "summarize2k.prompt"
    program.write_text(SUMMARIZE_2K)
    line = "Kernels page memory between RAM and disk when the working set grows. "
    data = ("".join(f"{line}[{i}]\n" for i in range(700_000)))[: 50 * 1024 * 1024]
    data += "\nThe last line says: the answer is OCELOT."
    result = run_cli("run", program, "--json", input=data, timeout=600)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["context"]["used"] <= 2048 and out["context"]["limit"] == 2048
    assert out["context"]["paged"] > 20_000
    assert "were paged out to the swap store" in result.stderr  # said, not silent
    logs = json.loads(run_cli("logs", out["run_id"], "--json").stdout)
    first = logs["context"]["pages"][0]
    page = run_cli("memory", "page", f"p{first}")
    assert page.returncode == 0 and page.stdout.startswith("Summarize this text:")


def test_disk_full_stops_the_process_with_a_clear_status(home: Path, tmp_path: Path) -> None:
    from llmos.kernel import boot
    from llmos.kernel.core import Kernel

    program = tmp_path / "small.prompt"
    program.write_text(
        "---\nname: small\nllmos.context: 300\nconfig:\n  maxOutputTokens: 16\n"
        "input:\n  schema:\n    input: string\n---\n"
        '{{role "system"}}\nRead.\n{{role "user"}}\n{{input}}\n'
    )
    system = boot.boot()
    used = system.memory.db.execute("PRAGMA page_count").fetchone()[0]
    system.memory.db.execute(f"PRAGMA max_page_count = {used + 2}")  # the disk is all but full
    kernel = Kernel(system)
    cpu = ScriptedCPU(["never reached"])
    text = "\n".join(notes(200))
    proc = kernel.spawn(str(program), {"input": text}, owner="alice", cpu=cpu)
    proc.wait(30)
    assert proc.exit_status == "failed"
    assert "disk is full" in str(proc.error) and "nothing was written" in str(proc.error)
    assert cpu.requests == []  # it stopped before the step that would not fit
    assert system.memory.db.execute("SELECT count(*) FROM pages").fetchone()[0] == 0
    run = system.log.get_run(proc.run_id or "")
    assert run is not None and run.status == "failed" and run.error_kind == "memory"
    kernel.shutdown()
    system.close()
