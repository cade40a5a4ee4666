"""Routing jagged work to Software 1.0: arithmetic to calc, device arguments to the input.

A 135M model copies its prompt's example instead of reading the question ("17 books at 23.45"
became `calc("12 * 3.45")`). Two deterministic remedies, chosen by `llmos.route`:

- `arithmetic_expression(question)` (mode `parse`): the numbers of the question, in order, and
  the operation its words name (each/per/times: *, total/more/plus: +, left/spends/minus: -,
  shared/split/divided: /), or an expression the question writes out ("12 times 3",
  "(4 + 5) * 2"). None when it cannot tell: then the model calls, under the grammar below.
- `constrain_specs(specs, ...)` (mode `grammar`, and `ground`): the call grammar the CPU builds
  from a device's schema admits, for calc, only expressions over the numbers of the question,
  and for a grounded argument only a span of the input (quoted text or a path-like word).

When the kernel made the call itself and calc answered, `statement(expression, output)` is
the answer: the kernel states calc's result ("78 * 35.42 = 2762.76") rather than have the model
re-type it (a small model writes "7,006,652", rounds, or copies its prompt's example).

Invariants: all are pure functions of their text; an expression returned by
`arithmetic_expression` uses only numbers that occur in the question and the four operators;
`statement` writes calc's result exactly as calc gave it.
What this module does not do: evaluate (calc does) or make the call (the loop does).
"""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal
from typing import Any

from llmos import params
from llmos.hw.cpu.base import ToolSpec

NUMBER_RE = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?![\w])")
_WORD_OPS = (
    (r"\bmultiplied by\b|\btimes\b|×|\bx\b", "*"),
    (r"\bdivided by\b|÷|\bover\b", "/"),
    (r"\bplus\b|\badded to\b", "+"),
    (r"\bminus\b|\bless\b", "-"),
)
_EXPR_RE = re.compile(r"[\d.()\s]+(?:[-+*/][\d.()\s]+)+")
# Operation words, checked in this order (division first: "shared equally, how much each";
# then multiplication: "sells 17 books at 3.50 each").
_OPS: tuple[tuple[str, str], ...] = (
    ("/", r"\b(split|shared?|divided?|equally|evenly|average|per person|among)\b"),
    (
        "*",
        r"\b(each|per|every|times|rows? of|boxes? of|packs? of|multiplied|"
        r"an? (hour|day|week|month|year|box|pack|bag|ticket|piece)|"
        r"costs?\b.*\b(buys?|bought|orders?|ordered)|(buys?|bought|orders?|ordered)\b.*\bcosts?)\b",
    ),
    (
        "-",
        r"\b(left|remain\w*|spends?|spent|gives? away|gave away|loses?|lost|eats?|ate|"
        r"fewer|less than|difference|minus|change|takes? away|took away|how much more|"
        r"cut off|the rest)\b",
    ),
    ("+", r"\b(total|sum|altogether|in all|combined|more|plus|adds?|added|together|gets)\b"),
)


def numbers(text: str) -> list[str]:
    """The numbers written in `text`, in order, without thousands separators."""
    return [m.group(0).replace(",", "") for m in NUMBER_RE.finditer(text)]


def arithmetic_expression(question: str) -> str | None:
    """The calc expression the question asks for (see the module note), or None."""
    written = _written_expression(question)
    if written is not None:
        return written
    nums = numbers(question)
    if len(nums) != 2:
        return None
    lowered = question.lower()
    a, b = nums
    if Decimal(a) < Decimal(b):
        a, b = b, a  # a total shared among a count, a stock less what went: larger first
    for op, pattern in _OPS:
        if re.search(pattern, lowered):
            return f"{a} {op} {b}" if op in "-/" else f"{nums[0]} {op} {nums[1]}"
    return None


def _written_expression(question: str) -> str | None:
    """An expression the question spells out with symbols or operator words, or None."""
    text = question.lower()
    for pattern, op in _WORD_OPS:
        text = re.sub(pattern, f" {op} ", text)
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    best: str | None = None
    for match in _EXPR_RE.finditer(text):
        candidate = " ".join(match.group(0).split())
        if re.search(r"\d", candidate) and (best is None or len(candidate) > len(best)):
            best = candidate
    if best is None or best.count("(") != best.count(")"):
        return None
    return re.sub(r"\s*([-+*/])\s*", r" \1 ", best).strip()


def statement(expression: str, output: Any) -> str:
    """The answer the kernel states for a routed calc call: the expression and calc's result
    (with its decimal form when calc gave a fraction)."""
    if not isinstance(output, dict) or "result" not in output:
        return f"{expression} = {output}"
    text = f"{expression} = {output['result']}"
    if "decimal" in output:
        text += f" (about {output['decimal']})"
    return text


def number_pattern(question: str) -> str | None:
    """A regular expression admitting expressions over the question's numbers only, or None
    when the question has no number."""
    nums = sorted(set(numbers(question)), key=len, reverse=True)[: params.ROUTE_MAX_NUMBERS]
    if not nums:
        return None
    # "[.]", not "\\.": llama.cpp's schema converter does not carry escapes into GBNF.
    num = "(" + "|".join(n.replace(".", "[.]") for n in nums) + ")"
    operand = rf"\(?{num}\)?"
    more = rf"( [-+*/] {operand})?" * params.ROUTE_MAX_OPERATORS  # bounded: no runaway
    return rf"^{operand}{more}$"


def spans(text: str) -> list[str]:
    """Candidate argument values in an input: quoted text and path-like words, in order."""
    found: list[str] = []
    for m in re.finditer(r"\"([^\"\n]+)\"|'([^'\n]+)'|“([^”\n]+)”", text):
        found.append(next(g for g in m.groups() if g))
    for m in re.finditer(r"(?<![\w/.])[\w][\w.-]*(?:/[\w.-]+)*\.[A-Za-z][A-Za-z0-9]*\b", text):
        found.append(m.group(0))
    unique = list(dict.fromkeys(s.strip() for s in found if s.strip()))
    return unique[: params.GROUND_MAX_CHOICES]


def phrases(text: str) -> list[str]:
    """What a grounded JSON field may be: each run of 1 to params.GROUND_PHRASE_WORDS words of
    `text` as written there (an email address is one word), in order, at most
    params.GROUND_MAX_PHRASES of them."""
    words = [m.group(0).rstrip(".") for m in re.finditer(r"[\w.@+'&-]+", text)]
    folded = " ".join(text.split())
    found: list[str] = []
    for n in range(1, params.GROUND_PHRASE_WORDS + 1):
        for i in range(len(words) - n + 1):
            phrase = " ".join(words[i : i + n])
            if phrase and phrase in folded:
                found.append(phrase)
    return list(dict.fromkeys(found))[: params.GROUND_MAX_PHRASES]


def constrain_specs(
    specs: list[ToolSpec],
    source: str,
    *,
    arithmetic: str | None = None,
    ground: dict[str, tuple[str, ...]] | None = None,
) -> list[ToolSpec]:
    """`specs` with calc's expression limited to the source's numbers (when `arithmetic`
    names it) and each grounded argument limited to the source's spans (`spans`)."""
    out: list[ToolSpec] = []
    choices = spans(source)
    for spec in specs:
        params_schema: dict[str, Any] = dict(spec.parameters)
        props: dict[str, Any] = dict(params_schema.get("properties") or {})
        if spec.name == arithmetic and "expression" in props:
            pattern = number_pattern(source)
            if pattern is not None:
                props["expression"] = {**props["expression"], "pattern": pattern}
        for arg in (ground or {}).get(spec.name, ()):
            if arg in props and choices:
                described = {k: v for k, v in props[arg].items() if k != "pattern"}
                props[arg] = {**described, "enum": choices}
        grounded = [a for a in (ground or {}).get(spec.name, ()) if a in props and choices]
        if grounded:  # a grounded argument is one the call must give
            params_schema["required"] = list(
                dict.fromkeys([*params_schema.get("required", []), *grounded])
            )
        params_schema["properties"] = props
        out.append(dataclasses.replace(spec, parameters=params_schema))
    return out
