"""Shared helpers for the benchmarks: tables for people, one JSON line for scripts."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from typing import Any

from llmos.hw.cpu.engine import extra_buffers_safe


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def emit(name: str, result: dict[str, Any]) -> None:
    """The last line a benchmark prints: one JSON object."""
    print(json.dumps({"bench": name, **result}, sort_keys=True))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def n_threads() -> int:
    return os.cpu_count() or 1


def patch_llama_model_params() -> None:
    """Make llama-cpp-python's `Llama` load models as the engine does (see
    `llmos.hw.cpu.engine.extra_buffers_safe`), so raw baselines run the same kernels."""
    import llama_cpp

    low_level = llama_cpp.llama_cpp
    original = low_level.llama_model_default_params

    def default_params() -> Any:
        p = original()
        p.use_extra_bufts = extra_buffers_safe()
        return p

    low_level.llama_model_default_params = default_params


# --- helpers for the scheduling and quantization benchmarks ---------------------------------------
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")


def quick() -> bool:
    """BENCH_QUICK=1: tiny sizes; a smoke run that checks a benchmark works."""
    return QUICK


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated; 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (k - lo))


def rss_kib() -> int:
    """This process's resident set size now (VmRSS), in KiB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1.0 when all equal, 1/n when one gets everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 0.0


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
