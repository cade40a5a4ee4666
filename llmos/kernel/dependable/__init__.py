"""Dependability as a kernel service: what a program opts into so an unreliable CPU gives
answers it can stand behind, the way an OS copes with unreliable hardware.

Three mechanisms, each its own module, each switched on by one `llmos.*` key:

- `llmos.redundancy: {k: 5, vote: majority|schema, temperature: 0.7}` (`redundancy`): the
  answer is sampled k times in one batch and the majority (or, for JSON, the field-wise
  consensus of the schema-valid samples) is the answer: modular redundancy.
- `llmos.verify: {grounded: [field, ...], cites: calc, lines: 3, check: CODE}` (`verify`): a
  claimed fact is checked against its source before it is believed: a JSON field's value must
  occur in the program's input (and on a CPU with grammars every grounded field is asked for,
  so a small model cannot close the object before it), a checker program (`check`, Python run
  in the sandbox) re-derives what the answer claims, a text answer must state what the named
  device returned, a text answer
  must have the number of lines its form has (a haiku's three; on a CPU with grammars the
  loop constrains the reply to that many strings and joins them as lines). A sample that fails is
  dropped from the vote; an answer that fails is retried once with the reason shown
  (params.VERIFY_RETRIES), then the run fails with a clear OutputError.
- `llmos.route: {arithmetic: calc, mode: parse|grammar|both}` and
  `llmos.route: {ground: {DEVICE: [argument, ...]}}` (`route`): jagged work goes to
  Software 1.0. Arithmetic in the question becomes the calc call the kernel makes itself
  (`parse`), and calc's result, stated by the kernel ("17 * 23.45 = 398.65"), is the answer;
  or the call grammar admits only numbers from the question (`grammar`); grounded arguments
  may only be strings quoted or path-like in the input.
  `llmos.route: {sentiment: FIELD}`: before the CPU runs, the kernel calls the `sentiment`
  device (which the program grants) on the input; when it is confident, the answer schema
  narrows FIELD's enum to its label (the CPU still writes the JSON and every other field).
  The device is the kernel's alone: the model is never offered it (`kernel_devices`).

`Settings.of(program)` reads a program's keys (already checked at load by `check`, and
against the program's output schema and tools by `check_program`).

Invariants: every mechanism is off unless the program asks for it; none changes what a
program without these keys does. What this package does not do: run the loop (see
`llmos.kernel.loop`, which calls these at its fixed points) or make a small model know
things it does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmos import params

KEYS = ("redundancy", "verify", "route")
VOTES = ("majority", "schema")
ROUTE_MODES = ("parse", "grammar", "both")


@dataclass(frozen=True)
class Redundancy:
    k: int = params.REDUNDANCY_DEFAULT_K
    vote: str = "majority"
    temperature: float = params.REDUNDANCY_TEMPERATURE


@dataclass(frozen=True)
class Verify:
    grounded: tuple[str, ...] = ()
    cites: str | None = None
    lines: int | None = None
    check: str | None = None  # Python source run in the sandbox (see verify.checked)


@dataclass(frozen=True)
class Route:
    arithmetic: str | None = None  # the device that computes (calc)
    mode: str = "both"
    ground: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sentiment: str | None = None  # the output field the sentiment device's label narrows


@dataclass(frozen=True)
class Settings:
    redundancy: Redundancy | None = None
    verify: Verify | None = None
    route: Route | None = None

    @classmethod
    def of(cls, llmos: dict[str, Any]) -> Settings:
        red = llmos.get("redundancy")
        ver = llmos.get("verify")
        rou = llmos.get("route")
        return cls(
            redundancy=None
            if red is None
            else Redundancy(
                k=int(red.get("k", params.REDUNDANCY_DEFAULT_K)),
                vote=str(red.get("vote", "majority")),
                temperature=float(red.get("temperature", params.REDUNDANCY_TEMPERATURE)),
            ),
            verify=None
            if ver is None
            else Verify(
                grounded=tuple(ver.get("grounded") or ()),
                cites=ver.get("cites"),
                lines=ver.get("lines"),
                check=ver.get("check"),
            ),
            route=None
            if rou is None
            else Route(
                arithmetic=rou.get("arithmetic"),
                mode=str(rou.get("mode", "both")),
                ground={d: tuple(a) for d, a in (rou.get("ground") or {}).items()},
                sentiment=rou.get("sentiment"),
            ),
        )


def check(shown: str, key: str, value: Any) -> str | None:
    """Why a `llmos.redundancy|verify|route` value is wrong (a sentence), or None."""
    if key == "redundancy":
        unknown = sorted(set(value) - {"k", "vote", "temperature"})
        if unknown:
            return f"'{shown}' has unknown keys {unknown} (valid: k, vote, temperature)"
        k = value.get("k", params.REDUNDANCY_DEFAULT_K)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= params.REDUNDANCY_MAX_K:
            return f"'{shown}.k' must be an integer from 1 to {params.REDUNDANCY_MAX_K}, got {k!r}"
        if value.get("vote", "majority") not in VOTES:
            return f"'{shown}.vote' must be one of {', '.join(VOTES)}, got {value.get('vote')!r}"
        t = value.get("temperature", params.REDUNDANCY_TEMPERATURE)
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 2:
            return f"'{shown}.temperature' must be a number from 0 to 2, got {t!r}"
    if key == "verify":
        unknown = sorted(set(value) - {"grounded", "cites", "lines", "check"})
        if unknown:
            return f"'{shown}' has unknown keys {unknown} (valid: grounded, cites, lines, check)"
        code = value.get("check", "pass")
        if not isinstance(code, str) or not code.strip():
            return f"'{shown}.check' must be Python source (a non-empty string)"
        if len(code.encode("utf-8")) > params.VERIFY_CHECK_MAX_BYTES:
            return f"'{shown}.check' is longer than {params.VERIFY_CHECK_MAX_BYTES} bytes"
        try:
            compile(code, "llmos.verify.check", "exec")
        except SyntaxError as exc:
            return f"'{shown}.check' is not valid Python: {exc.msg} (line {exc.lineno})"
        n = value.get("lines", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= params.VERIFY_MAX_LINES:
            return f"'{shown}.lines' must be an integer from 1 to {params.VERIFY_MAX_LINES}"
        grounded = value.get("grounded", [])
        if not isinstance(grounded, list) or not all(isinstance(f, str) for f in grounded):
            return f"'{shown}.grounded' must be a list of output field names"
        if "cites" in value and not isinstance(value["cites"], str):
            return f"'{shown}.cites' must be a device name"
    if key == "route":
        unknown = sorted(set(value) - {"arithmetic", "mode", "ground", "sentiment"})
        if unknown:
            return (
                f"'{shown}' has unknown keys {unknown} (valid: arithmetic, mode, ground, sentiment)"
            )
        if "sentiment" in value and not (
            isinstance(value["sentiment"], str) and value["sentiment"]
        ):
            return f"'{shown}.sentiment' must be the name of an output field"
        if "arithmetic" in value and not isinstance(value["arithmetic"], str):
            return f"'{shown}.arithmetic' must be a device name (calc)"
        if value.get("mode", "both") not in ROUTE_MODES:
            return f"'{shown}.mode' must be one of {', '.join(ROUTE_MODES)}"
        ground = value.get("ground", {})
        if not isinstance(ground, dict) or not all(
            isinstance(a, list) and all(isinstance(x, str) for x in a) for a in ground.values()
        ):
            return f"'{shown}.ground' must map device names to lists of argument names"
    return None


SENTIMENT_DEVICE = "sentiment"


def kernel_devices(llmos: dict[str, Any]) -> tuple[str, ...]:
    """The devices only the kernel calls for a program (`llmos.route.sentiment`): granted so
    the kernel may call them, never offered to the model."""
    route = llmos.get("route")
    if isinstance(route, dict) and route.get("sentiment") is not None:
        return (SENTIMENT_DEVICE,)
    return ()


def check_program(
    llmos: dict[str, Any], output_schema: dict[str, Any] | None, tools: list[str]
) -> str | None:
    """Why a program's `llmos.route.sentiment` does not fit its output schema or tools (a
    sentence), or None. FIELD must be a field of a JSON output schema whose enum holds only
    labels the device gives (params.SENTIMENT_LABELS), and the program must grant the device
    (`tools: [sentiment]`), as the arithmetic route needs calc granted."""
    route = llmos.get("route")
    name = route.get("sentiment") if isinstance(route, dict) else None
    if name is None:
        return None
    shown = f"'llmos.route.sentiment: {name}'"
    props = (output_schema or {}).get("properties")
    if not isinstance(props, dict):
        return f"{shown} needs a JSON output schema with that field"
    spec = props.get(name)
    if not isinstance(spec, dict):
        return f"{shown}: the output schema has no field '{name}' (fields: {', '.join(props)})"
    kind = spec.get("type", "string")
    enum = spec.get("enum")
    labels = params.SENTIMENT_LABELS
    if kind != "string" or not isinstance(enum, list) or not enum:
        return f"{shown}: field '{name}' must be a string enum of {', '.join(labels)}"
    strange = [v for v in enum if v not in labels]
    if strange:
        return (
            f"{shown}: field '{name}' has values {strange} the sentiment device never gives "
            f"(it gives {', '.join(labels)})"
        )
    if SENTIMENT_DEVICE not in tools:
        return f"{shown} needs the device granted: add 'tools: [{SENTIMENT_DEVICE}]'"
    return None
