"""Context switch: preempting and resuming a process with a 2,048-token context.

One sequence prefills CONTEXT tokens on the engine (same settings as llmos). Then, REPEATS
times each: save its KV to RAM and restore it (`Engine.save` / `Engine.admit`), save it to a
disk file and restore it, and, for comparison, drop it and re-prefill the CONTEXT tokens (what
a context switch costs without KV swapping). After every restore the next greedy token must be
the same as before the switch (the state came back intact). Medians in ms.

Goal: a switch through RAM (save + restore) >= 50x faster than re-prefilling.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import llmos.hw.cpu  # noqa: F401  (first: it sets how llama.cpp's OpenMP threads wait)

# isort: split
import llama_cpp as ll

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, median, n_threads, quick, table

from llmos.hw.cpu.engine import Engine, Sequence
from llmos.hw.cpu.llama import embedded_model_path

QUICK = quick()
CONTEXT = 256 if QUICK else 2048
REPEATS = 2 if QUICK else 5
GOAL = 50.0
TEXT = (
    "The keeper climbed the spiral stairs each evening, trimmed the wick, wound the clockwork "
    "that turned the lens, and wrote the weather in a book that nobody read. "
)


def prefill(engine: Engine, seq: Sequence) -> tuple[float, int]:
    """Feed all pending tokens; seconds taken and the sampled next token."""
    t0 = time.perf_counter()
    while True:
        out = engine.step([seq])
        if seq in out:
            return time.perf_counter() - t0, out[seq][-1]


def next_token(engine: Engine, seq: Sequence) -> int:
    """The greedy token after the pending one, without changing `seq` for good."""
    (probe,) = engine.step([seq])[seq]
    # Undo the probe: forget the fed token in KV, and the sampled one.
    fed = seq.tokens.pop()
    assert seq.slot is not None
    ll.llama_memory_seq_rm(engine.mem, seq.slot, len(seq.tokens), -1)
    seq.pending = [fed]
    return probe


def main() -> None:
    engine = Engine(embedded_model_path(), n_ctx=CONTEXT + 256, n_seq_max=2, n_threads=n_threads())
    base = engine.tokenize(TEXT * (CONTEXT // 20 + 2))
    prompt = base[:CONTEXT]
    seq = engine.new_sequence(prompt, temperature=0.0, repeat_penalty=1.0)
    engine.admit(seq)
    prefill(engine, seq)  # warm-up and the state we switch
    expected = next_token(engine, seq)
    ram_save, ram_load, disk_save, disk_load, recompute = [], [], [], [], []
    mismatches = 0
    size = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(REPEATS):
            t0 = time.perf_counter()
            size = engine.save(seq)
            t1 = time.perf_counter()
            engine.admit(seq)
            t2 = time.perf_counter()
            ram_save.append(t1 - t0)
            ram_load.append(t2 - t1)
            mismatches += next_token(engine, seq) != expected
            path = Path(tmp) / f"seq-{i}.kv"
            t0 = time.perf_counter()
            engine.save(seq, to_path=path)
            t1 = time.perf_counter()
            engine.admit(seq)
            t2 = time.perf_counter()
            disk_save.append(t1 - t0)
            disk_load.append(t2 - t1)
            mismatches += next_token(engine, seq) != expected
            # Re-prefill: a fresh sequence computing the same context from scratch (`seq`
            # waits in RAM meanwhile, so the cache holds only the fresh one).
            engine.save(seq)
            fresh = engine.new_sequence(prompt, temperature=0.0, repeat_penalty=1.0)
            engine.admit(fresh)
            elapsed, _ = prefill(engine, fresh)
            recompute.append(elapsed)
            engine.finish(fresh)
            engine.admit(seq)
    failures = seq.restore_failures
    engine.finish(seq)
    engine.close()
    ms = {
        k: median(v) * 1000
        for k, v in {
            "ram_save": ram_save,
            "ram_restore": ram_load,
            "disk_save": disk_save,
            "disk_restore": disk_load,
            "reprefill": recompute,
        }.items()
    }
    ram_switch = ms["ram_save"] + ms["ram_restore"]
    disk_switch = ms["disk_save"] + ms["disk_restore"]
    speed_ram = ms["reprefill"] / ram_switch
    speed_disk = ms["reprefill"] / disk_switch
    print(
        table(
            ["path", "save ms", "restore ms", "switch ms", "speedup vs re-prefill"],
            [
                ["RAM", ms["ram_save"], ms["ram_restore"], ram_switch, speed_ram],
                ["disk", ms["disk_save"], ms["disk_restore"], disk_switch, speed_disk],
                ["re-prefill", 0.0, ms["reprefill"], ms["reprefill"], 1.0],
            ],
        )
    )
    print(
        f"{CONTEXT} tokens, state {size / 1e6:.1f} MB; next token after restore differed "
        f"{mismatches} times; restore failures {failures}"
    )
    emit(
        "context_switch",
        {
            "context_tokens": CONTEXT,
            "state_bytes": size,
            "ms": {k: round(v, 2) for k, v in ms.items()},
            "speedup_ram": round(speed_ram, 1),
            "speedup_disk": round(speed_disk, 1),
            "restore_mismatches": mismatches,
            "restore_failures": failures,
            "goal": GOAL,
            "pass": speed_ram >= GOAL and mismatches == 0 and failures == 0,
            "threads": n_threads(),
            "quick": QUICK,
        },
    )


if __name__ == "__main__":
    main()
