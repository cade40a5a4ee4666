"""The embedded model's weight format on this machine: chosen once, at first boot, and recorded.

Which format is fastest depends on the CPU: llama.cpp repacks Q4_0, IQ4_NL and Q8_0 weights
into interleaved layouts with wider SIMD kernels on AVX2, AVX-512 and ARM (NEON, i8mm), but not
Q4_1 (the shipped file); on CPUs with AMX llmos turns those extra buffers off
(`llmos.hw.cpu.engine.extra_buffers_safe`), so only the plain kernels run. bench/quant.py
measures each format against the shipped one (speed at N=1 and N=16, prefill, agreement and
perplexity); params.QUANT_MEASURED keeps its ratios per kind of CPU.

`choose(kind, measured)` is the rule, a pure function: the fastest format at N=16 that is at
least params.QUANT_MIN_SPEEDUP x the shipped file at N=16, no slower at N=1, agrees with it on
at least params.QUANT_MIN_AGREEMENT of next tokens and has a perplexity at most
params.QUANT_MAX_PPL_RATIO x; otherwise the shipped Q4_1. A kind of CPU with no measurement
keeps Q4_1 too.

`embedded_format(models_dir)` is what boot uses: LLMOS_EMBEDDED_QUANT when set and not empty
(it always wins, and nothing is recorded); else the choice recorded in
`<models_dir>/weights.json`; else (first boot, or a record that is unreadable, not JSON,
names an unknown format, or was made from another version of the measured table or on another
kind of CPU) a fresh choice, written atomically (temporary file, fsync, rename) so that a crash
leaves the old record or the new.

What this module does not do: convert weights (`llmos.hw.cpu.quant`) or measure anything
(bench/quant.py does, offline).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos import params
from llmos.errors import LlmosError

RECORD_NAME = "weights.json"


@dataclass(frozen=True)
class Choice:
    """A weight format, why, and where the decision came from ("env", "recorded", "chosen")."""

    ftype: str
    reason: str
    source: str
    kind: str = ""

    def to_json(self) -> dict[str, str]:
        return {"ftype": self.ftype, "reason": self.reason, "source": self.source, "cpu": self.kind}


def cpu_kind(features: set[str], extra_buffers: bool) -> str:
    """The kind of CPU, as far as llama.cpp's kernel choice goes, from the features llama.cpp
    reports (`llama_print_system_info`: AVX2, AVX512, NEON, MATMUL_INT8, ...) and whether its
    extra (repacked) buffers are on."""
    if not extra_buffers:
        return "no-repack"
    if "AVX512" in features:
        return "x86-avx512"
    if "AVX2" in features:
        return "x86-avx2"
    if "NEON" in features:
        return "arm-i8mm" if "MATMUL_INT8" in features else "arm-neon"
    return "other"


def parse_system_info(info: str) -> set[str]:
    """The features llama.cpp's system info line reports as on: `AVX2 = 1 | FMA = 1 | ...`."""
    on = set()
    for part in info.replace("\n", "|").split("|"):
        name, eq, value = part.rpartition("=")
        if eq and value.strip() == "1":
            on.add(name.split(":")[-1].strip())
    return on


def choose(kind: str, measured: Mapping[str, Mapping[str, Mapping[str, float]]]) -> tuple[str, str]:
    """(format, reason) for a CPU of `kind`, from the measured ratios against the shipped file
    (`measured[kind][format]`: speedup_n1, speedup_n16, agreement, ppl_ratio)."""
    shipped, fallback = params.QUANT_SHIPPED, params.EMBEDDED_QUANT
    rows = measured.get(kind)
    if not rows:
        return fallback, f"{fallback}: the default (no measurement on a {kind} CPU)"
    passing = []
    for ftype, r in rows.items():
        if ftype == shipped or ftype not in params.QUANT_FTYPES:
            continue
        if (
            r["speedup_n16"] >= params.QUANT_MIN_SPEEDUP
            and r["speedup_n1"] >= 1.0
            and r["agreement"] >= params.QUANT_MIN_AGREEMENT
            and r["ppl_ratio"] <= params.QUANT_MAX_PPL_RATIO
        ):
            passing.append(ftype)
    if not passing:
        return fallback, (
            f"{fallback}: the default (no conversion measured on a {kind} CPU is "
            f">= {params.QUANT_MIN_SPEEDUP}x at N=16, no slower at N=1, agrees >= "
            f"{params.QUANT_MIN_AGREEMENT} and has perplexity <= {params.QUANT_MAX_PPL_RATIO}x)"
        )
    best = max(passing, key=lambda f: rows[f]["speedup_n16"])
    r = rows[best]
    return best, (
        f"{best}: measured on a {kind} CPU {r['speedup_n16']:.2f}x the shipped {shipped} at N=16, "
        f"{r['speedup_n1']:.2f}x at N=1, agreement {r['agreement']:.2f}, "
        f"perplexity {r['ppl_ratio']:.3f}x"
    )


def this_cpu_kind() -> str:
    """`cpu_kind` of this machine (initialises llama.cpp's backend to ask it)."""
    import llama_cpp as ll

    from llmos.hw.cpu.engine import extra_buffers_safe, init_backend

    init_backend()
    info = ll.llama_print_system_info().decode("utf-8", "replace")
    return cpu_kind(parse_system_info(info), extra_buffers_safe())


def embedded_format(models_dir: Path, *, kind: str | None = None) -> Choice:
    """The weight format to run the embedded model in (see the module note). `kind` is this
    CPU's (asked of llama.cpp when None). LlmosError for an unknown LLMOS_EMBEDDED_QUANT."""
    env = os.environ.get(params.ENV_EMBEDDED_QUANT, "").strip().lower()
    if env:
        if env not in params.QUANT_FTYPES:
            known = ", ".join(params.QUANT_FTYPES)
            raise LlmosError(
                f"unknown model quantization '{env}' in {params.ENV_EMBEDDED_QUANT}: "
                f"use one of {known}"
            )
        return Choice(env, f"{env}: set by {params.ENV_EMBEDDED_QUANT}", "env")
    kind = kind or this_cpu_kind()
    path = models_dir / RECORD_NAME
    recorded = _read(path)
    if (
        recorded is not None
        and recorded.get("table") == params.QUANT_TABLE_VERSION
        and recorded.get("cpu") == kind
        and recorded.get("ftype") in params.QUANT_FTYPES
        and isinstance(recorded.get("reason"), str)
    ):
        return Choice(str(recorded["ftype"]), str(recorded["reason"]), "recorded", kind)
    ftype, reason = choose(kind, params.QUANT_MEASURED)
    _write(
        path, {"ftype": ftype, "reason": reason, "cpu": kind, "table": params.QUANT_TABLE_VERSION}
    )
    return Choice(ftype, reason, "chosen", kind)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _write(path: Path, record: dict[str, Any]) -> None:
    """Record the choice; a home that cannot be written keeps the choice for this run only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(record, fh, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
