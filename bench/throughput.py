"""Throughput: N processes generating at once on the kernel's scheduling engine, against two
baselines, each side alone in a process of its own.

For N = 1, 2, 4, 8, 16, N processes (greedy, a distinct prompt each: count on from a distinct
number in words) each generate exactly TOKENS tokens; every side is told never to end at the
model's end-of-generation token, so every side does the same work:
- kernel: N threads each submit `GenRequest(max_tokens=TOKENS, ignore_eos=True, temperature=0,
  entity=Entity(pid=i, owner="bench"))` to the EmbeddedCPU that `Kernel.cpu(None)` configured
  (the kernel's policy and residency limit). This is the path every kernel process takes to
  the engine (`Kernel.spawn` -> `run_program` -> `EmbeddedCPU.generate` with the process's
  Entity), minus program rendering and run logging, which `Kernel.spawn` cannot skip
  `ignore_eos` for. The engine batches them: one llama_decode per step. Wall time from the
  first submission to the last completion.
- sequential: the same requests on the same kernel CPU, one after another, each waited for.
- raw: llama.cpp batched decoding of the same prompt token lists (exactly the tokens llmos
  sends) written directly against llama_cpp's low-level API: one context (same n_ctx, n_batch,
  threads, model parameters; n_seq_max=N, kv_unified), prefill in n_batch chunks, then one
  llama_decode per step with N tokens, greedy by argmax of llama_get_logits_ith with the
  end-of-generation tokens masked (as ignore_eos does). The context is created, warmed up by a
  short untimed decode and cleared (llama_memory_clear) before timing: this is the ceiling. It
  runs with the OpenMP runtime's defaults, as llama.cpp's users get it; the kernel side with
  what llmos sets (params.OMP_SPIN_COUNT; bench/contention.py compares the two).

Each side runs in a fresh process of its own (never beside a live engine: they would share
threads and caches), one process per side per round; the sides alternate over ROUNDS rounds,
their order rotating each round. A first process only renders the prompts to the exact token
lists llmos sends (and lists the end-of-generation tokens) for the raw side. Each N has its own
prompts (a run- and N-specific nonce opens the system message), so a side cannot reuse the
prefixes an earlier N left resident; inside one N, processes may still share the common system
prompt (that is the engine's prefix sharing at work).

Rates: "tok/s" is generated tokens / wall time, prefill included, on every side; the table
gives each side's median over the rounds with its spread (min-max), and kernel/raw is the
ratio of the medians. "decode tok/s" counts only the tokens generated after every process of
the phase has its first token, over the time after that (for sequential: each process's own
decode time, summed).

    python bench/throughput.py [--rounds R] [--ns 1,2,...]   (BENCH_QUICK=1: N = 1, 2; 16 tokens;
                                                              1 round)

`--ns` measures only the given N: each side's process is then short, so many rounds fit in a
few minutes and the machine's own drift (its speed can change by 20-30% over minutes) is
sampled on both sides alike.

Goal: kernel >= 0.95 x raw at every N (wall rates, prefill included).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llmos.hw.cpu  # noqa: F401  (first: it sets how llama.cpp's OpenMP threads wait)

# isort: split
import llama_cpp as ll
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, median, n_threads, quick, table

from llmos import params
from llmos.hw.cpu.base import GenRequest, Message
from llmos.hw.cpu.engine import extra_buffers_safe, init_backend
from llmos.hw.cpu.llama import EmbeddedCPU
from llmos.kernel.boot import boot
from llmos.kernel.core import Kernel
from llmos.kernel.sched.policy import Entity

QUICK = quick()
NS = (1, 2) if QUICK else (1, 2, 4, 8, 16)
TOKENS = 16 if QUICK else 128
GOAL = 0.95
RUNTIME_SPIN_COUNT = "300000"  # libgomp's default GOMP_SPINCOUNT (llmos sets its own)
ROUNDS = 1 if QUICK else 3
SYSTEM = "Job {tag}. You write very long lists and never stop early."
USER = (
    "Count upward from {start} to {start} plus one thousand. Write every number in words, "
    "one number per line, and do not skip any."
)


def messages(tag: str, i: int) -> list[Message]:
    return [
        {"role": "system", "content": SYSTEM.format(tag=tag)},
        {"role": "user", "content": USER.format(start=100 + 37 * i)},
    ]


def phase_prompts(run: str, phase: str, n: int) -> list[list[Message]]:
    tag = f"{run}-{phase}-{n}"
    return [messages(tag, i) for i in range(n)]


@dataclass
class Trace:
    """One request's progress: (time, tokens generated so far) at each chunk."""

    start: float = 0.0
    end: float = 0.0
    points: list[tuple[float, int]] = field(default_factory=list)
    generated: int = 0
    finish: str | None = None
    error: BaseException | None = None

    def first(self) -> tuple[float, int]:
        return self.points[0] if self.points else (self.end, self.generated)

    def at(self, t: float) -> int:
        """Tokens generated by time `t` (as last seen by the caller)."""
        seen = 0
        for when, gen in self.points:
            if when > t:
                break
            seen = gen
        return seen


@dataclass
class Result:
    tokens: int
    wall: float
    decode_tokens: int
    decode_s: float

    @property
    def rate(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0

    @property
    def decode_rate(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


def one_request(cpu: EmbeddedCPU, msgs: list[Message], pid: int, trace: Trace) -> None:
    entity = Entity(pid=pid, owner="bench")
    request = GenRequest(
        messages=msgs, max_tokens=TOKENS, ignore_eos=True, temperature=0, entity=entity
    )
    trace.start = time.perf_counter()
    try:
        for chunk in cpu.generate(request):
            now = time.perf_counter()
            if chunk.done:
                trace.finish = chunk.finish_reason
                trace.generated = chunk.completion_tokens
            trace.points.append((now, entity.generated))
    except BaseException as exc:  # reported by the caller
        trace.error = exc
    trace.end = time.perf_counter()


def llmos_run(cpu: EmbeddedCPU, prompts: list[list[Message]], *, sequential: bool) -> Result:
    traces = [Trace() for _ in prompts]
    t0 = time.perf_counter()
    if sequential:
        for i, msgs in enumerate(prompts):
            one_request(cpu, msgs, i, traces[i])
    else:
        threads = [
            threading.Thread(target=one_request, args=(cpu, msgs, i, traces[i]))
            for i, msgs in enumerate(prompts)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall = time.perf_counter() - t0
    for tr in traces:
        if tr.error is not None:
            raise RuntimeError(f"benchmark request failed: {tr.error}") from tr.error
        if tr.finish != "length" or tr.generated != TOKENS:
            raise RuntimeError(
                f"benchmark request ended early: {tr.finish}, {tr.generated}/{TOKENS} tokens"
            )
    tokens = sum(tr.generated for tr in traces)
    if sequential:
        decode_tokens = sum(tr.generated - tr.first()[1] for tr in traces)
        decode_s = sum(tr.end - tr.first()[0] for tr in traces)
    else:
        all_first = max(tr.first()[0] for tr in traces)
        decode_tokens = sum(tr.generated - tr.at(all_first) for tr in traces)
        decode_s = max(tr.end for tr in traces) - all_first
    return Result(tokens, wall, decode_tokens, decode_s)


class Raw:
    """llama.cpp batched greedy decoding, straight on the low-level API."""

    def __init__(self, model_path: Path, eog: list[int]) -> None:
        init_backend()
        mparams = ll.llama_model_default_params()
        mparams.use_extra_bufts = extra_buffers_safe()
        self.model = ll.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            raise SystemExit(f"{model_path}: llama.cpp could not load the model")
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
        self.eog = np.array(eog, dtype=np.int64)

    def run(self, prompts: list[list[int]], tokens: int) -> Result:
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
            # Untimed warm-up on this context (first-decode costs: buffers, graph, caches),
            # then an empty KV, so the timed run starts from the same state llmos is in.
            self._generate(ctx, batch, prompts, 4)
            ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
            return self._generate(ctx, batch, prompts, tokens)
        finally:
            ll.llama_batch_free(batch)
            ll.llama_free(ctx)

    def _generate(
        self, ctx: ll.llama_context_p, batch: ll.llama_batch, prompts: list[list[int]], tokens: int
    ) -> Result:
        n = len(prompts)
        t0 = time.perf_counter()
        # Prefill: every prompt's tokens, packed into n_batch-sized decodes.
        items = [
            (s, p, tok, p == len(pr) - 1)
            for s, pr in enumerate(prompts)
            for p, tok in enumerate(pr)
        ]
        nxt = [0] * n
        for start in range(0, len(items), params.EMBEDDED_N_BATCH):
            part = items[start : start + params.EMBEDDED_N_BATCH]
            for j, (s, p, tok, want) in enumerate(part):
                self._put(batch, j, tok, p, s, want)
            batch.n_tokens = len(part)
            self._decode(ctx, batch)
            for j, (s, _, _, want) in enumerate(part):
                if want:
                    nxt[s] = self._argmax(ctx, j)
        t_decode = time.perf_counter()
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
        end = time.perf_counter()
        return Result(generated, end - t0, generated - n, end - t_decode)

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
        if self.eog.size:
            row[self.eog] = -np.inf  # never end early, as ignore_eos does
        return int(row.argmax())

    def close(self) -> None:
        ll.llama_model_free(self.model)


def _kernel_cpu() -> tuple[Kernel, EmbeddedCPU]:
    kernel = Kernel(boot())
    cpu = kernel.cpu(None)  # the embedded CPU under the kernel's policy and residency limit
    assert isinstance(cpu, EmbeddedCPU)
    return kernel, cpu


def side_tokens(run: str) -> dict[str, Any]:
    """The exact token lists llmos sends for each N, and the end-of-generation tokens."""
    kernel, cpu = _kernel_cpu()
    try:
        return {
            "model": str(cpu.engine.model_path),
            "eog": cpu.engine.eog_tokens(),
            "prompts": {
                str(n): [cpu.prompt_tokens(m) for m in phase_prompts(run, "batched", n)] for n in NS
            },
        }
    finally:
        kernel.shutdown()
        cpu.close()


def side_kernel(run: str, sequential: bool) -> dict[str, Any]:
    kernel, cpu = _kernel_cpu()
    try:
        llmos_run(cpu, phase_prompts(run, "warmup", 2), sequential=False)
        out = {}
        for n in NS:
            r = llmos_run(cpu, phase_prompts(run, "batched", n), sequential=sequential)
            out[str(n)] = r.__dict__
        out["policy"] = kernel.policy.name  # type: ignore[assignment]
        return out
    finally:
        kernel.shutdown()
        cpu.close()


def side_raw(tokens: dict[str, Any]) -> dict[str, Any]:
    raw = Raw(Path(tokens["model"]), tokens["eog"])
    try:
        return {str(n): raw.run(tokens["prompts"][str(n)], TOKENS).__dict__ for n in NS}
    finally:
        raw.close()


def run_side(side: str, run: str, tokens_file: Path) -> dict[str, Any]:
    """One side in a fresh process; its result."""
    cmd = [sys.executable, __file__, "--side", side, "--run", run, "--tokens", str(tokens_file)]
    cmd += ["--ns", ",".join(str(n) for n in NS)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if side == "raw":  # llama.cpp as its users get it: the OpenMP runtime's own defaults
        env["GOMP_SPINCOUNT"] = RUNTIME_SPIN_COUNT
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{side} side failed: {out.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--ns", help="the N to measure, comma-separated (default: all)")
    parser.add_argument("--side", choices=["tokens", "kernel", "sequential", "raw"])
    parser.add_argument("--run", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ns:
        global NS
        try:
            NS = tuple(sorted({int(x) for x in args.ns.split(",")}))
        except ValueError:
            raise SystemExit(f"--ns takes comma-separated numbers, not {args.ns!r}") from None
        if not NS or min(NS) < 1:
            raise SystemExit("--ns takes numbers of processes of 1 or more")
    if args.side:
        # Every side of one run shares one home (given by main): the model file the kernel
        # runs (a weight format converted at first boot lives in <home>/models) is the one
        # the raw side loads.
        with tempfile.TemporaryDirectory() as spare:
            os.environ.setdefault(params.ENV_HOME, spare)
            if args.side == "tokens":
                result = side_tokens(args.run)
            elif args.side == "raw":
                result = side_raw(json.loads(args.tokens.read_text()))
            else:
                result = side_kernel(args.run, sequential=args.side == "sequential")
        print(json.dumps(result))
        return
    run = secrets.token_hex(4)  # this run's nonce: no N shares a prompt prefix with another
    sides = ("kernel", "raw", "sequential")
    got: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[params.ENV_HOME] = str(Path(tmp) / "home")  # shared by every side's process
        tokens_file = Path(tmp) / "tokens.json"
        tokens = run_side("tokens", run, tokens_file)
        tokens_file.write_text(json.dumps(tokens))
        for round_no in range(args.rounds):
            for side in sides[round_no % 3 :] + sides[: round_no % 3]:
                got[side].append(run_side(side, run, tokens_file))
    policy = str(got["kernel"][0].get("policy"))

    def rates(side: str, n: int, key: str = "rate") -> list[float]:
        results = [Result(**g[str(n)]) for g in got[side]]
        return [float(getattr(res, key)) for res in results]

    rows: list[list[Any]] = []
    results: dict[str, dict[str, Any]] = {}
    for n in NS:
        k, r, s = rates("kernel", n), rates("raw", n), rates("sequential", n)
        kd, rd = rates("kernel", n, "decode_rate"), rates("raw", n, "decode_rate")
        km, rm, sm = median(k), median(r), median(s)
        vs_raw = km / rm if rm else 0.0
        vs_seq = km / sm if sm else 0.0
        rows.append(
            [
                n,
                f"{km:.1f} ({min(k):.1f}-{max(k):.1f})",
                f"{rm:.1f} ({min(r):.1f}-{max(r):.1f})",
                f"{sm:.1f} ({min(s):.1f}-{max(s):.1f})",
                vs_seq,
                vs_raw,
                median(kd),
                median(rd),
            ]
        )
        results[str(n)] = {
            "kernel_tok_s": round(km, 2),
            "raw_tok_s": round(rm, 2),
            "sequential_tok_s": round(sm, 2),
            "kernel_tok_s_range": [round(min(k), 2), round(max(k), 2)],
            "raw_tok_s_range": [round(min(r), 2), round(max(r), 2)],
            "kernel_decode_tok_s": round(median(kd), 2),
            "raw_decode_tok_s": round(median(rd), 2),
            "vs_sequential": round(vs_seq, 3),
            "vs_raw": round(vs_raw, 3),
            "prompt_tokens_mean": round(sum(len(p) for p in tokens["prompts"][str(n)]) / n, 1),
        }
    print(
        table(
            [
                "N",
                "kernel tok/s (range)",
                "raw tok/s (range)",
                "sequential tok/s (range)",
                "x seq",
                "x raw",
                "kernel decode tok/s",
                "raw decode tok/s",
            ],
            rows,
        )
    )
    print(
        f"medians over {args.rounds} rounds, each side alone in its own process; tok/s: "
        "generated tokens / wall time, prefill included, on every side"
    )
    worst = min(float(res["vs_raw"]) for res in results.values())
    print(f"worst kernel/raw = {worst:.3f} (goal >= {GOAL} at every N)")
    emit(
        "throughput",
        {
            "by_n": results,
            "min_vs_raw": worst,
            "goal": GOAL,
            "pass": worst >= GOAL,
            "rounds": args.rounds,
            "ns": list(NS),
            "tokens_per_process": TOKENS,
            "ignore_eos": True,
            "rates_include_prefill": True,
            "separate_processes": True,
            "policy": policy,
            "threads": n_threads(),
            "quick": QUICK,
        },
    )


if __name__ == "__main__":
    main()
