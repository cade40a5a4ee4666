"""Redundancy: k samples of one answer in one batch, and a vote (modular redundancy).

`sample` submits k copies of one request at once, so a batching CPU decodes them together in
one step each: the first at the program's own settings (greedy by default), the others at the
redundancy temperature, each with its own seed (params.EMBEDDED_SEED + i), so a run is
reproducible. `majority` picks the answer most samples gave (text compared with whitespace and
case folded, JSON compared as canonical JSON); `consensus` builds a JSON answer field by field
from the majority value of each top-level field among the valid samples (so one sample that
got the email right and another that got the company right can both count), and falls back to
`majority` if that object fails the schema.

Invariants: ties go to the earliest sample (the program's own settings); a vote over no
candidates is None, never an invented answer; the samples' tokens are all reported.
What this module does not do: check the samples (see `verify`) or charge budgets (the loop does).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jsonschema

from llmos import params
from llmos.hw.cpu.base import CPU, Chunk, GenRequest

_ABSENT = "\x00absent"


@dataclass
class Sample:
    text: str
    last: Chunk


def sample(cpu: CPU, request: GenRequest, k: int, temperature: float) -> list[Sample]:
    """k replies to `request`, generated concurrently (see the module note). Only the first
    keeps the request's `entity` (a process has one scheduling view); the caller charges the
    others' tokens to it."""

    def one(i: int) -> Sample:
        req = request
        if i > 0:
            req = dataclasses.replace(
                request,
                temperature=temperature,
                seed=params.EMBEDDED_SEED + i,
                entity=None,
            )
        parts: list[str] = []
        last = Chunk(done=True)
        for chunk in cpu.generate(req):
            parts.append(chunk.text)
            if chunk.done:
                last = chunk
        return Sample("".join(parts), last)

    if k <= 1:
        return [one(0)]
    with ThreadPoolExecutor(max_workers=k) as pool:
        return list(pool.map(one, range(k)))


def _key(value: Any) -> str:
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    return json.dumps(value, sort_keys=True)


def majority(values: Sequence[Any]) -> tuple[int, int] | None:
    """(index of the winning value's first occurrence, its votes), or None for no values."""
    if not values:
        return None
    keys = [_key(v) for v in values]
    counts = Counter(keys)
    best = max(counts.values())
    winner = next(i for i, key in enumerate(keys) if counts[key] == best)
    return winner, best


def consensus(outputs: Sequence[Any], schema: dict[str, Any] | None) -> Any | None:
    """The field-wise majority of JSON objects (see the module note), or None."""
    if not outputs:
        return None
    if not all(isinstance(o, dict) for o in outputs):
        won = majority(outputs)
        return None if won is None else outputs[won[0]]
    fields = list(dict.fromkeys(f for o in outputs for f in o))
    merged: dict[str, Any] = {}
    for f in fields:
        votes = [o.get(f, _ABSENT) for o in outputs]
        won = majority(votes)
        assert won is not None
        value = votes[won[0]]
        if value != _ABSENT:
            merged[f] = value
    if schema is not None and not jsonschema.validators.validator_for(schema)(schema).is_valid(
        merged
    ):
        won = majority(outputs)
        return None if won is None else outputs[won[0]]
    return merged
