"""Answer quality on the embedded CPU, with the dependability mechanisms off and on.

Five labelled sets of 30 items (bench/data/quality/, written by make.py there): sentiment
(`classify`), contact extraction (`extract`), arithmetic word problems (`arithmetic`), an
invoice's vendor and total (`invoice`) and a tool-using fs task (`note`). Each set runs
through its program in examples/ twice in one run: "off" is the program with its
`llmos.redundancy`, `llmos.verify` and `llmos.route` keys removed (and a device only the
route's kernel calls, `sentiment`, no longer granted), "on" is the program as shipped. All
items of one set and condition are spawned at once on one kernel, so the embedded CPU batches
them as it would any concurrent processes.

Scoring: classify, the label; extract, name, email and company all exact (case folded);
arithmetic, the answer states the true number and a calc result equals it ("through calc");
invoice, vendor and total both right; note, the file exists with exactly the note. A run that
fails (a clear OutputError) counts as wrong.

Goals: arithmetic at least 90% with the mechanisms; every other set at least 20
points better on than off. Output: a table, then one JSON line.

Options: `--set NAME` (repeatable) runs only those sets, `--limit N` only the first N items of
each (BENCH_QUICK=1 is `--limit 6`), `--show` prints each wrong answer, to see why it missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from _common import emit, quick, table

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "quality"
MECHANISMS = ("redundancy", "verify", "route")
ARITHMETIC_GOAL = 0.90
GAIN_GOAL = 0.20


def _numbers(text: str) -> set[Decimal]:
    from llmos.kernel.dependable.route import numbers

    out = set()
    for n in numbers(text):
        with contextlib.suppress(InvalidOperation):
            out.add(Decimal(n))
    return out


def _fold(value: Any) -> str:
    return " ".join(str(value).split()).casefold()


def score_classify(proc: Any, gold: Any, _root: Path) -> bool:
    out = proc.result.output if proc.result else None
    return isinstance(out, dict) and out.get("label") == gold


def score_extract(proc: Any, gold: Any, _root: Path) -> bool:
    out = proc.result.output if proc.result else None
    return isinstance(out, dict) and all(_fold(out.get(k, "")) == _fold(v) for k, v in gold.items())


def score_invoice(proc: Any, gold: Any, _root: Path) -> bool:
    out = proc.result.output if proc.result else None
    if not isinstance(out, dict) or _fold(out.get("vendor", "")) != _fold(gold["vendor"]):
        return False
    try:
        return Decimal(str(out.get("total"))) == Decimal(gold["total"])
    except InvalidOperation:
        return False


def score_arithmetic(proc: Any, gold: Any, _root: Path) -> bool:
    if proc.result is None:
        return False
    want = Decimal(gold)
    calc_ok = any(
        s.get("device") == "calc" and s.get("ok") and want in _numbers(str(s.get("result")))
        for s in proc.result.extra.get("steps", [])
    )
    return calc_ok and want in _numbers(proc.result.text)


def score_note(proc: Any, gold: Any, root: Path) -> bool:
    path = root / gold["path"]
    return path.is_file() and path.read_text(encoding="utf-8").strip() == gold["content"]


SETS: dict[str, tuple[str, Callable[[Any, Any, Path], bool]]] = {
    "classify": ("classify.prompt", score_classify),
    "extract": ("extract.prompt", score_extract),
    "arithmetic": ("arithmetic.prompt", score_arithmetic),
    "invoice": ("invoice.prompt", score_invoice),
    "note": ("note.prompt", score_note),
}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="answer quality with dependability off and on")
    parser.add_argument("--set", action="append", choices=list(SETS), dest="sets")
    parser.add_argument("--limit", type=int, default=6 if quick() else None)
    parser.add_argument("--show", action="store_true", help="print each wrong answer")
    return parser.parse_args()


def _shown(proc: Any) -> str:
    if proc.result is None:
        return f"failed: {proc.error}"
    return repr(proc.result.text)[:200]


def main() -> None:
    args = _args()
    chosen = {n: SETS[n] for n in (args.sets or SETS)}
    home = Path(tempfile.mkdtemp(prefix="llmos-quality-"))
    os.environ["LLMOS_HOME"] = str(home)
    from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path
    from llmos.kernel import dependable
    from llmos.kernel import program as programs
    from llmos.kernel.boot import boot
    from llmos.kernel.core import Kernel

    system = boot()
    kernel = Kernel(system)
    cpu = EmbeddedCPU(embedded_model_path(), name="embedded")
    kernel.add_cpu(cpu)
    root = kernel.user_root("default")
    limit = args.limit
    rows, results = [], {}
    try:
        for name, (file, score) in chosen.items():
            shipped = programs.load(ROOT / "examples" / file)
            items = [json.loads(x) for x in (DATA / f"{name}.jsonl").read_text().splitlines()]
            items = items[:limit]
            per: dict[str, Any] = {}
            for cond in ("off", "on"):
                llmos, tools = dict(shipped.llmos), list(shipped.tools)
                if cond == "off":  # and no device left that only the route's kernel calls
                    llmos = {k: v for k, v in llmos.items() if k not in MECHANISMS}
                    kernel_only = dependable.kernel_devices(shipped.llmos)
                    tools = [t for t in tools if t not in kernel_only]
                prog = dataclasses.replace(shipped, llmos=llmos, tools=tools)
                for child in root.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
                t0 = time.perf_counter()
                procs = [kernel.spawn(prog, {"input": it["input"]}, cpu=cpu) for it in items]
                for p in procs:
                    kernel.wait(p.pid)
                wall = time.perf_counter() - t0
                marks = [score(p, it["gold"], root) for p, it in zip(procs, items, strict=True)]
                right = sum(marks)
                if args.show:
                    for p, it, ok in zip(procs, items, marks, strict=True):
                        if not ok:
                            print(f"{name} {cond} miss: {it['input'][:60]!r} -> {_shown(p)}")
                failed = sum(1 for p in procs if p.result is None)
                per[cond] = {
                    "accuracy": round(right / len(items), 3),
                    "failed": failed,
                    "wall_s": round(wall, 1),
                }
            gain = per["on"]["accuracy"] - per["off"]["accuracy"]
            goal = (
                per["on"]["accuracy"] >= ARITHMETIC_GOAL
                if name == "arithmetic"
                else (gain >= GAIN_GOAL)
            )
            results[name] = {**per, "gain": round(gain, 3), "n": len(items), "pass": goal}
            rows.append(
                [
                    name,
                    len(items),
                    per["off"]["accuracy"],
                    per["on"]["accuracy"],
                    round(gain, 3),
                    per["on"]["failed"],
                    per["off"]["wall_s"],
                    per["on"]["wall_s"],
                    "yes" if goal else "no",
                ]
            )
    finally:
        kernel.shutdown()
        system.close()
        cpu.close()
        shutil.rmtree(home, ignore_errors=True)
    print(table(["set", "n", "off", "on", "gain", "on failed", "off s", "on s", "goal"], rows))
    print(f"goals: arithmetic on >= {ARITHMETIC_GOAL:.0%}; others on - off >= {GAIN_GOAL:.0%}")
    emit("quality", {"sets": results, "pass": all(r["pass"] for r in results.values())})


if __name__ == "__main__":
    main()
