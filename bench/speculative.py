"""Speculative decoding by prompt lookup: the same kernel CPU with drafting off and on.

Programs that copy from their input (repeat, correct, extract, rewrite) and programs that do
not (a story, a poem, an explanation) each generate up to MAX_TOKENS tokens greedily on the
embedded CPU; the side with drafting sets `GenRequest.speculative` (what `llmos.speculative:
true` in a program does). Each program runs on each side in a fresh process of its own, the
two sides back to back and their order alternating, program after program, over ROUNDS rounds:
this machine's speed drifts over minutes, and a pair measured seconds apart sees the same
machine. The rate is decode tokens/s (after the first token, to the last); a program's speedup
is the median over the rounds of each round's on/off ratio, and the outputs of the two sides
are compared token for token. The table also gives each side's model steps (llama_decode
calls): the work drafting saved, which the machine's drift does not blur.

Goals: at least 1.5x on the copy-heavy programs (their median), never below 0.97x on the
others, identical greedy output.

    python bench/speculative.py [--rounds N] [--programs a,b]   (BENCH_QUICK=1: one round,
                                                                64 tokens)

A table, then one JSON line.
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

from _common import emit, median, quick, table

QUICK = quick()
ROUNDS = 1 if QUICK else 3
MAX_TOKENS = 64 if QUICK else 200
GOAL_COPY = 1.5
GOAL_OTHER = 0.97

LETTER = (
    "Dear Ms. Alvarez,\nThank you for your order #48213 of 17 copies of 'The Quiet Harbor' at "
    "23.45 each, shipped to 12 Rue de la Paix, Paris. Our accounts team, led by Jonathan "
    "Whitaker (jonathan.whitaker@northwind-books.example), will send the invoice by Friday. "
    "If any copy arrives damaged, reply to this letter within 14 days and we will replace it.\n"
    "Kind regards,\nMaria Santos, Customer Care, Northwind Books"
)
TYPOS = (
    "The comittee met on tuesday to discus the new budjet. Several members argued that the "
    "libary needs more funding for childrens books, while others wanted to repare the roof "
    "first. In the end they agreed to spend half on each and to meet again next month."
)
CODE = (
    "def total(items):\n    result = 0\n    for item in items:\n        result = result + "
    "item.price * item.quantity\n    return result\n\n\ndef average(items):\n    if not items:\n"
    "        return 0\n    return total(items) / len(items)\n"
)
PROGRAMS: dict[str, tuple[str, str]] = {
    "repeat": ("copy", f"Repeat the following letter exactly, word for word:\n\n{LETTER}"),
    "correct": ("copy", f"Rewrite this text with the spelling mistakes corrected:\n\n{TYPOS}"),
    "edit-code": (
        "copy",
        f"Rename the function `total` to `order_total` everywhere in this code:\n\n{CODE}",
    ),
    "quote": (
        "copy",
        f"Quote the sentence of this letter that mentions the invoice, then the one that "
        f"mentions damage:\n\n{LETTER}",
    ),
    "story": ("other", "Write a long story about a lighthouse keeper who finds a map."),
    "poem": ("other", "Write a poem about autumn rain in a city."),
    "explain": ("other", "Explain how a bicycle gear works, step by step."),
}


def side(speculative: bool, name: str) -> dict[str, Any]:
    from llmos.hw.cpu.base import GenRequest
    from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path

    # A fresh CPU and no warm-up: the reply is alone in its KV cache, where drafting gives
    # exactly the greedy tokens (llmos/hw/cpu/lookup.py says why a cache that held another
    # reply can change its last bits, drafting or not). The rate is timed from the first
    # token, so start-up costs are not in it.
    cpu = EmbeddedCPU(embedded_model_path())
    try:
        request = GenRequest(
            messages=[{"role": "user", "content": PROGRAMS[name][1]}],
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            speculative=speculative,
        )
        first = None
        reply = ""
        tokens = 0
        for chunk in cpu.generate(request):
            if first is None and chunk.text:
                first = time.perf_counter()
            reply += chunk.text
            if chunk.done:
                tokens = chunk.completion_tokens
        seconds = time.perf_counter() - (first or time.perf_counter())
        rate = (tokens - 1) / seconds if tokens > 1 and seconds > 0 else 0.0
        # Model steps (llama_decode calls, prefill included): what drafting saves, whatever
        # the machine's speed did meanwhile.
        return {"tokens": tokens, "tok_s": rate, "text": reply, "steps": cpu.steps}
    finally:
        cpu.close()


def run_side(speculative: bool, name: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--side", "on" if speculative else "off", "--programs", name]
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "LLMOS_HOME": home}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"side failed: {done.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--side", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--programs", help="the programs to run, comma-separated (default: all)")
    args = parser.parse_args()
    names = args.programs.split(",") if args.programs else list(PROGRAMS)
    unknown = [n for n in names if n not in PROGRAMS]
    if unknown:
        raise SystemExit(f"unknown program {unknown[0]!r}: use one of {', '.join(PROGRAMS)}")
    if args.side:
        print(json.dumps(side(args.side == "on", names[0])))
        return
    runs: dict[str, dict[bool, list[dict[str, Any]]]] = {n: {False: [], True: []} for n in names}
    turn = 0
    for _ in range(args.rounds):
        for name in names:
            for flag in (False, True) if turn % 2 == 0 else (True, False):
                runs[name][flag].append(run_side(flag, name))
            turn += 1
    rows = []
    by_program: dict[str, dict[str, Any]] = {}
    for name in names:
        kind = PROGRAMS[name][0]
        off_runs, on_runs = runs[name][False], runs[name][True]
        off = median([r["tok_s"] for r in off_runs])
        on = median([r["tok_s"] for r in on_runs])
        ratios = [b["tok_s"] / a["tok_s"] for a, b in zip(off_runs, on_runs, strict=True)]
        speedup = median([x for x in ratios if x > 0]) if any(ratios) else 0.0
        same = all(a["text"] == b["text"] for a, b in zip(off_runs, on_runs, strict=True))
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        steps_off, steps_on = off_runs[0]["steps"], on_runs[0]["steps"]
        steps = f"{steps_off} / {steps_on}"
        rows.append([name, kind, on_runs[0]["tokens"], steps, off, on, spread, speedup, same])
        by_program[name] = {
            "kind": kind,
            "off_tok_s": round(off, 2),
            "on_tok_s": round(on, 2),
            "speedup": round(speedup, 3),
            "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)],
            "steps_off": steps_off,
            "steps_on": steps_on,
            "identical": same,
        }
    print(
        table(
            [
                *("program", "kind", "tokens", "steps off / on", "off tok/s", "on tok/s"),
                *("x range", "x", "identical"),
            ],
            rows,
        )
    )
    copy = median([p["speedup"] for p in by_program.values() if p["kind"] == "copy"] or [0.0])
    worst_other = min([p["speedup"] for p in by_program.values() if p["kind"] == "other"] or [0.0])
    identical = sum(p["identical"] for p in by_program.values())
    print(
        f"copy-heavy median x{copy:.2f} (goal >= {GOAL_COPY}); others worst x{worst_other:.2f} "
        f"(goal >= {GOAL_OTHER}); identical output {identical}/{len(by_program)}"
    )
    emit(
        "speculative",
        {
            "by_program": by_program,
            "copy_speedup_median": round(copy, 3),
            "other_speedup_min": round(worst_other, 3),
            "identical": identical,
            "programs": len(by_program),
            "goal_copy": GOAL_COPY,
            "goal_other": GOAL_OTHER,
            "rounds": args.rounds,
            "max_tokens": MAX_TOKENS,
            "pass": copy >= GOAL_COPY
            and worst_other >= GOAL_OTHER
            and identical == len(by_program),
        },
    )


if __name__ == "__main__":
    main()
