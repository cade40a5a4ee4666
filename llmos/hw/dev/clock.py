"""The `clock` and `random` devices: what time it is, and dice the model cannot load.

`clock` returns the current time in ISO 8601 UTC, the Unix time, and, when asked, the local
time in an IANA time zone (`zoneinfo`, e.g. "Europe/Paris").

`random` draws integers in an inclusive range, choices from a list, or uniform floats. With a
seed it is reproducible: an `args.seed` gives a fresh generator per call (the same call gives
the same answer); `ctx.options["seed"]` gives one generator per process (pid), so a run's whole
sequence of draws repeats from run to run. Without a seed it uses the OS's entropy.

Invariants: never raises for bad input (an unknown zone, an empty list, min > max are failure
results); `count` is capped at `RANDOM_MAX_COUNT`.

What this module does not do: cryptographic guarantees for seeded draws (they use the Mersenne
Twister), or time zones missing from the system's tz database.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from llmos import params
from llmos.hw.dev.base import CallContext, Device, DeviceResult


class ClockDevice(Device):
    name = "clock"
    description = (
        "The current date and time. Returns {utc: ISO 8601 in UTC, unix: seconds since 1970}, "
        "plus {timezone, local} when you give an IANA time zone such as 'Europe/Paris'."
    )
    schema: dict[str, Any] = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "timezone": {
                "type": "string",
                "description": "IANA zone name, e.g. 'America/New_York'; omit for UTC only.",
                "maxLength": params.CLOCK_TIMEZONE_MAX_CHARS,
            }
        },
        "additionalProperties": False,
    }

    def __init__(self, now: Any = None) -> None:
        self._now = now or time.time  # injectable for tests

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        ts = float(self._now())
        utc = datetime.fromtimestamp(ts, tz=UTC)
        out: dict[str, Any] = {"utc": utc.isoformat(), "unix": ts}
        tz = args.get("timezone")
        if tz:
            try:
                zone = ZoneInfo(str(tz))
            except (ZoneInfoNotFoundError, ValueError):
                return DeviceResult.failure(f"clock: unknown time zone {tz!r}")
            out["timezone"] = str(tz)
            out["local"] = utc.astimezone(zone).isoformat()
        return DeviceResult.success(out)


class RandomDevice(Device):
    name = "random"
    description = (
        "Random values. op='integer' {min, max} draws integers in [min, max] (inclusive); "
        "op='choice' {choices} picks items from a list; op='uniform' {min, max} draws floats. "
        "`count` draws several (default 1); `seed` makes the draw reproducible. Returns "
        "{values: [...]}."
    )
    schema: dict[str, Any] = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "op": {"type": "string", "enum": ["integer", "choice", "uniform"]},
            "min": {"type": "number"},
            "max": {"type": "number"},
            "choices": {"type": "array", "minItems": 1, "maxItems": params.RANDOM_MAX_CHOICES},
            "count": {"type": "integer", "minimum": 1, "maximum": params.RANDOM_MAX_COUNT},
            "seed": {"type": "integer"},
        },
        "required": ["op"],
        "additionalProperties": False,
    }

    def __init__(self) -> None:
        self._streams: dict[tuple[int, Any], random.Random] = {}
        self._lock = threading.Lock()
        self._system = random.SystemRandom()

    def _rng(self, args: dict[str, Any], ctx: CallContext) -> random.Random:
        if args.get("seed") is not None:
            return random.Random(args["seed"])
        seed = ctx.options.get("seed")
        if seed is None:
            return self._system
        key = (ctx.pid, seed)
        with self._lock:
            if key not in self._streams:
                self._streams[key] = random.Random(seed)
            return self._streams[key]

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        op = args.get("op")
        count = args.get("count", 1)
        if not isinstance(count, int) or not 1 <= count <= params.RANDOM_MAX_COUNT:
            return DeviceResult.failure(f"random: count must be 1 to {params.RANDOM_MAX_COUNT}")
        rng = self._rng(args, ctx)
        if op == "choice":
            choices = args.get("choices")
            if not isinstance(choices, list) or not choices:
                return DeviceResult.failure("random: choice needs a non-empty 'choices' list")
            with self._lock:
                return DeviceResult.success({"values": [rng.choice(choices) for _ in range(count)]})
        if op not in ("integer", "uniform"):
            return DeviceResult.failure(f"random: unknown op {op!r} (integer, choice, uniform)")
        lo, hi = args.get("min"), args.get("max")
        if not isinstance(lo, int | float) or not isinstance(hi, int | float):
            return DeviceResult.failure(f"random: {op} needs numbers 'min' and 'max'")
        if lo > hi:
            return DeviceResult.failure(f"random: min ({lo}) is greater than max ({hi})")
        if op == "integer":
            if not (float(lo).is_integer() and float(hi).is_integer()):
                return DeviceResult.failure("random: integer needs whole 'min' and 'max'")
            with self._lock:
                values: list[Any] = [rng.randint(int(lo), int(hi)) for _ in range(count)]
        else:
            with self._lock:
                values = [rng.uniform(lo, hi) for _ in range(count)]
        return DeviceResult.success({"values": values})
