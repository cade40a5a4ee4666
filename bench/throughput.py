"""Throughput: N processes generating at once under the kernel, against two baselines.

For N = 1, 2, 4, 8, 16, N processes of one program (greedy, a prompt that rarely ends: count
on from a distinct number in words) each generate up to TOKENS tokens:
- kernel: `Kernel.spawn` of all N at once (the embedded CPU batches them: one llama_decode per
  step), wall time from the first spawn to the last exit;
- sequential: the same N processes spawned one after another, each waited for;
- raw: llama.cpp batched decoding of the same N prompts (the exact tokens llmos sends) written
  directly against llama_cpp's low-level API: one context (same n_ctx, n_batch, threads, model
  parameters; n_seq_max=N, kv_unified), prefill in n_batch chunks, then one llama_decode per
  step with N tokens, greedy by argmax of llama_get_logits_ith. This is the ceiling.
Throughput is generated tokens / wall time, prefill included on every side (the kernel counts
the tokens actually generated; raw generates exactly TOKENS per sequence).

Goal: kernel >= 0.9 x raw at every N.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
import time
from pathlib import Path

import llama_cpp as ll
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, n_threads, quick, table

from llmos import params
from llmos.boot import boot
from llmos.cpu.engine import extra_buffers_safe, init_backend
from llmos.cpu.llama import EmbeddedCPU
from llmos.kernel import Kernel
from llmos.program import Program, load

QUICK = quick()
NS = (1, 2) if QUICK else (1, 2, 4, 8, 16)
TOKENS = 16 if QUICK else 128
GOAL = 0.9
PROGRAM = """---
name: counter
description: Count on and on (throughput benchmark).
config:
  temperature: 0
  maxOutputTokens: {tokens}
input:
  schema:
    start: integer
---
{{{{role "system"}}}}
You write very long lists and never stop early.
{{{{role "user"}}}}
Count upward from {{{{start}}}} to {{{{start}}}} plus one thousand. Write every number in words,
one number per line, and do not skip any.
"""


def inputs(i: int) -> dict[str, int]:
    return {"start": 100 + 37 * i}


def kernel_run(kernel: Kernel, program: Program, n: int, *, sequential: bool) -> tuple[int, float]:
    t0 = time.perf_counter()
    procs = []
    for i in range(n):
        proc = kernel.spawn(program, inputs(i))
        procs.append(proc)
        if sequential:
            kernel.wait(proc.pid)
    for proc in procs:
        kernel.wait(proc.pid)
    wall = time.perf_counter() - t0
    bad = [p.error for p in procs if p.exit_status != "ok"]
    if bad:
        raise RuntimeError(f"benchmark process failed: {bad[0]}")
    return sum(p.entity.generated for p in procs), wall


class Raw:
    """llama.cpp batched greedy decoding, straight on the low-level API."""

    def __init__(self, model_path: Path) -> None:
        init_backend()
        mparams = ll.llama_model_default_params()
        mparams.use_extra_bufts = extra_buffers_safe()
        self.model = ll.llama_model_load_from_file(str(model_path).encode(), mparams)
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))

    def run(self, prompts: list[list[int]], tokens: int) -> tuple[int, float]:
        n = len(prompts)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = params.EMBEDDED_N_CTX
        cparams.n_batch = cparams.n_ubatch = params.EMBEDDED_N_BATCH
        cparams.n_seq_max = n
        cparams.kv_unified = True
        cparams.n_threads = cparams.n_threads_batch = n_threads()
        cparams.no_perf = True
        ctx = ll.llama_init_from_model(self.model, cparams)
        batch = ll.llama_batch_init(params.EMBEDDED_N_BATCH, 0, 1)
        try:
            t0 = time.perf_counter()
            # Prefill: every prompt's tokens, packed into n_batch-sized decodes.
            items = [
                (s, p, tok, p == len(pr) - 1)
                for s, pr in enumerate(prompts)
                for p, tok in enumerate(pr)
            ]
            last_index = [0] * n
            nxt = [0] * n
            for start in range(0, len(items), params.EMBEDDED_N_BATCH):
                part = items[start : start + params.EMBEDDED_N_BATCH]
                for j, (s, p, tok, want) in enumerate(part):
                    self._put(batch, j, tok, p, s, want)
                    if want:
                        last_index[s] = j
                batch.n_tokens = len(part)
                self._decode(ctx, batch)
                for j, (s, _, _, want) in enumerate(part):
                    if want:
                        nxt[s] = self._argmax(ctx, j)
            pos = [len(p) for p in prompts]
            generated = n  # the first token of each came from the prefill
            for _ in range(tokens - 1):
                for s in range(n):
                    self._put(batch, s, nxt[s], pos[s], s, True)
                    pos[s] += 1
                batch.n_tokens = n
                self._decode(ctx, batch)
                for s in range(n):
                    nxt[s] = self._argmax(ctx, s)
                generated += n
            return generated, time.perf_counter() - t0
        finally:
            ll.llama_batch_free(batch)
            ll.llama_free(ctx)

    @staticmethod
    def _put(batch: ll.llama_batch, j: int, tok: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[j] = tok
        batch.pos[j] = pos
        batch.n_seq_id[j] = 1
        batch.seq_id[j][0] = seq
        batch.logits[j] = logits

    @staticmethod
    def _decode(ctx: ll.llama_context_p, batch: ll.llama_batch) -> None:
        rc = ll.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _argmax(self, ctx: ll.llama_context_p, i: int) -> int:
        ptr = ll.llama_get_logits_ith(ctx, i)
        row = np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
        )
        return int(row.argmax())

    def close(self) -> None:
        ll.llama_model_free(self.model)


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        os.environ[params.ENV_HOME] = home
        program_path = Path(home) / "counter.prompt"
        program_path.write_text(PROGRAM.format(tokens=TOKENS))
        program = load(program_path)
        system = boot()
        kernel = Kernel(system)
        cpu = kernel.cpu(None)
        assert isinstance(cpu, EmbeddedCPU)
        raw = Raw(cpu.engine.model_path)
        kernel_run(kernel, program, 1, sequential=False)  # warm-up
        rows, results = [], {}
        for n in NS:
            prompts = [cpu.prompt_tokens(program.render(inputs(i))) for i in range(n)]
            k_tok, k_s = kernel_run(kernel, program, n, sequential=False)
            s_tok, s_s = kernel_run(kernel, program, n, sequential=True)
            r_tok, r_s = raw.run(prompts, TOKENS)
            k_rate, s_rate, r_rate = k_tok / k_s, s_tok / s_s, r_tok / r_s
            vs_seq, vs_raw = k_rate / s_rate, k_rate / r_rate
            rows.append([n, k_tok, k_rate, s_rate, r_rate, vs_seq, vs_raw])
            results[str(n)] = {
                "kernel_tok_s": round(k_rate, 2),
                "sequential_tok_s": round(s_rate, 2),
                "raw_tok_s": round(r_rate, 2),
                "kernel_tokens": k_tok,
                "vs_sequential": round(vs_seq, 3),
                "vs_raw": round(vs_raw, 3),
            }
        raw.close()
        kernel.shutdown()
        cpu.close()
    print(
        table(
            ["N", "tokens", "kernel tok/s", "sequential tok/s", "raw tok/s", "x seq", "x raw"],
            rows,
        )
    )
    worst = min(r["vs_raw"] for r in results.values())
    print(f"worst kernel/raw = {worst:.3f} (goal >= {GOAL} at every N)")
    emit(
        "throughput",
        {
            "by_n": results,
            "min_vs_raw": worst,
            "goal": GOAL,
            "pass": worst >= GOAL,
            "tokens_per_process": TOKENS,
            "threads": n_threads(),
            "quick": QUICK,
        },
    )


if __name__ == "__main__":
    main()
