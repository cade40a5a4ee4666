"""Decoding while something else wants a core: how llama.cpp's OpenMP threads should wait.

llama.cpp runs each decode on `n_threads` OpenMP threads (all the cores) and synchronises them
with OpenMP barriers many times per token. How a thread waits, at a barrier and between two
decodes, is the OpenMP runtime's wait policy: spinning answers fastest when every thread has a
core of its own, and wastes a core when one does not, which is the usual case on a machine the
kernel shares (its own threads between steps, the server's event loop, other programs).

Sides, each in a fresh process of its own, alternating over ROUNDS rounds:
- `llama.cpp default`: the OpenMP runtime's defaults (libgomp: spin GOMP_SPINCOUNT=300000
  times, then sleep), what llama.cpp gets when nothing is set;
- `llmos`: what `llmos.hw.cpu` sets when the environment sets nothing (GOMP_SPINCOUNT =
  params.OMP_SPIN_COUNT: spin briefly, then sleep).

Each side runs the kernel's embedded CPU (`Kernel.cpu(None)`, as bench/throughput.py does) with
N = 1 and N = 4 processes generating TOKENS tokens each (greedy, never stopping at
end-of-generation), twice: on a quiet machine, and with a competing process that keeps one core
busy (`quiet` / `contended`). The rate is generated tokens / wall time, prefill included; the
table gives each side's median over the rounds and llmos / default. The competitor starts
before the side's process and is killed after it.

    python bench/contention.py [--rounds N]      (BENCH_QUICK=1: one round, 16 tokens)

Goal: llmos >= 0.97x the default when quiet and faster when contended. A table, then one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, loadavg, median, quick, table

QUICK = quick()
ROUNDS = 1 if QUICK else 3
TOKENS = 16 if QUICK else 96
NS = (1, 4)
CONDITIONS = ("quiet", "contended")
SIDES = ("llama.cpp default", "llmos")
GOAL_QUIET = 0.97
# libgomp's own defaults, set explicitly so that llmos.hw.cpu leaves the environment alone.
DEFAULT_ENV = {"GOMP_SPINCOUNT": "300000"}
BUSY = "import time\nwhile True:\n    time.perf_counter()\n"


def side(run: str) -> dict[str, Any]:
    import throughput as tp

    tp.TOKENS = TOKENS
    kernel, cpu = tp._kernel_cpu()
    try:
        tp.llmos_run(cpu, tp.phase_prompts(run, "warmup", 1), sequential=False)
        out: dict[str, Any] = {
            str(n): tp.llmos_run(cpu, tp.phase_prompts(run, "n", n), sequential=False).rate
            for n in NS
        }
        out["env"] = {k: os.environ.get(k, "") for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        return out
    finally:
        kernel.shutdown()
        cpu.close()


def run_side(name: str, condition: str, run: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if name == "llama.cpp default":
        env.update(DEFAULT_ENV)
    busy = None
    if condition == "contended":
        busy = subprocess.Popen([sys.executable, "-c", BUSY])
        time.sleep(0.2)
    try:
        with tempfile.TemporaryDirectory() as home:
            cmd = [sys.executable, __file__, "--side", run]
            done = subprocess.run(
                cmd, capture_output=True, text=True, env={**env, "LLMOS_HOME": home}, check=False
            )
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{name} side failed: {done.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side)))
        return
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    load_before = loadavg()
    envs: dict[str, Any] = {}
    for r in range(args.rounds):
        for condition in CONDITIONS:
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            for name in order:
                got = run_side(name, condition, f"r{r}-{condition}-{name.split()[0]}")
                envs[name] = got.pop("env")
                results.setdefault((name, condition), []).append(got)
    rows = []
    by: dict[str, dict[str, Any]] = {}
    for condition in CONDITIONS:
        for n in NS:
            base = median([g[str(n)] for g in results[("llama.cpp default", condition)]])
            ours = median([g[str(n)] for g in results[("llmos", condition)]])
            ratio = ours / base if base else 0.0
            rows.append([condition, n, base, ours, ratio])
            by[f"{condition}/{n}"] = {
                "default_tok_s": round(base, 2),
                "llmos_tok_s": round(ours, 2),
                "ratio": round(ratio, 3),
            }
    print(table(["machine", "N", "default tok/s", "llmos tok/s", "llmos / default"], rows))
    quiet_worst = min(by[f"quiet/{n}"]["ratio"] for n in NS)
    contended_worst = min(by[f"contended/{n}"]["ratio"] for n in NS)
    print(
        f"medians over {args.rounds} rounds, each side alone in its own process; quiet worst "
        f"x{quiet_worst:.3f} (goal >= {GOAL_QUIET}), contended worst x{contended_worst:.3f} "
        f"(goal > 1); load average before: {load_before}"
    )
    emit(
        "contention",
        {
            "by": by,
            "env": envs,
            "tokens_per_process": TOKENS,
            "rounds": args.rounds,
            "quiet_worst": round(quiet_worst, 3),
            "contended_worst": round(contended_worst, 3),
            "pass": quiet_worst >= GOAL_QUIET and contended_worst > 1.0,
        },
    )


if __name__ == "__main__":
    main()
