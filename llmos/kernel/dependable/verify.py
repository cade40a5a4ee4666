"""Verification: a claimed fact is re-derived from its source before it is believed.

- `grounded(output, fields, source)`: each named top-level field of a JSON answer must be
  non-empty and occur in the source (the program's input): a string as written (case and
  whitespace folded), a number as a number written there (813.6 matches "813.60"). An
  extractor that invents "<EMAIL>" or a total of 50 fails here. (Before that, the loop
  constrains a grounded string field to the input's phrases, `route.phrases`, on a CPU with
  grammars, so such a value cannot even be written.)
- `cites(text, results)`: a text answer must state the last result the named device returned
  (compared as numbers when it is one), so the phrasing step cannot misquote the calculator.
  Numbers are compared as values, however written: thousands separated by commas, spaces or
  apostrophes ("7,006,652", "7 006 652"), trailing zeros ("7006652.0"), a currency sign.
- `lines(text, n)`: a text answer must have exactly n non-empty lines (a haiku three), so a
  form the program asks for is kept, not hoped for.
- `checked(code, source, inputs, outputs)`: a checker program the program ships (Python, run
  in the `python` device's sandbox: no network, no files, limited time) re-derives what each
  answer claims, an invoice's total from its lines, say. It sees `input` (the input text),
  `inputs` (every input by name) and `output` (one answer); it passes by running to its end,
  and fails by raising: an AssertionError's message is the reason. All of a reply's samples
  are checked in one sandboxed run. Fail closed: where no sandbox can be set up, or the run
  does not finish, the answer is not believed (CheckError), never believed unchecked.

Each returns None when the check passes, else one sentence saying what failed, which the loop
shows the model on a retry and puts in the OutputError when retries run out.
What this module does not do: decide what happens on a failure (the loop and the vote do).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from llmos import params
from llmos.errors import OutputError
from llmos.hw.dev.base import CallContext
from llmos.kernel.dependable.route import numbers


class CheckError(OutputError):
    """A `llmos.verify.check` could not run (no sandbox here, a timeout): nothing is believed."""


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


_GROUP_GAP = re.compile(r"(?<=\d)[ \u00a0\u202f'](?=\d{3}(?!\d))")  # "7 006 652"


def _numbers_in(text: str) -> set[Decimal]:
    """The values of the numbers written in `text`, digit groups joined as well as apart."""
    written = numbers(text) + numbers(_GROUP_GAP.sub("", text))
    return {d for d in (_decimal(n) for n in written) if d is not None}


def grounded(output: Any, fields: Sequence[str], source: str) -> str | None:
    """Why `output` is not grounded in `source` (see the module note), or None."""
    if not isinstance(output, dict):
        return "the answer is not a JSON object"
    folded = _fold(source)
    for name in fields:
        if name not in output:
            continue  # a schema-optional field left out claims nothing
        value = output[name]
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            if Decimal(str(value)) not in _numbers_in(source):
                return f"'{name}' is {value}, a number that does not occur in the input"
            continue
        if isinstance(value, str):
            if not value.strip():
                return f"'{name}' is empty; leave it out or copy it from the input"
            if _fold(value) not in folded:
                return f"'{name}' is {value!r}, which does not occur in the input"
    return None


def cites(text: str, results: Sequence[str]) -> str | None:
    """Why `text` states none of `results` (one device result in its forms: calc gives "1/3"
    and "0.333..."; see the module note), or None."""
    found = _numbers_in(text)
    for result in results:
        expected = _decimal(result.strip())
        if expected is not None and expected in found:
            return None
        if expected is None and _fold(result) in _fold(text):
            return None
    return f"the answer does not state the result {results[0]}" if results else None


def lines(text: str, n: int) -> str | None:
    """Why `text` does not have exactly `n` non-empty lines, or None."""
    have = sum(1 for line in text.splitlines() if line.strip())
    if have == n:
        return None
    return f"the answer has {have} line{'s' if have != 1 else ''}, not {n}"


# Runs inside the sandbox: each answer through the program's check, one verdict each (None:
# passed), as one JSON line after a marker so the check's own prints cannot be mistaken for it.
_HARNESS = """
import json, sys
_CASES = json.loads({cases!r})
_CODE = compile({code!r}, "check", "exec")
_verdicts = []
for _output in _CASES["outputs"]:
    try:
        exec(_CODE, {{"input": _CASES["input"], "inputs": _CASES["inputs"], "output": _output}})
        _verdicts.append(None)
    except AssertionError as exc:
        _verdicts.append(str(exc) or "the answer failed the program's check")
    except Exception as exc:
        _verdicts.append("the program's check raised " + type(exc).__name__ + ": " + str(exc))
print({marker!r} + json.dumps(_verdicts))
"""
_MARKER = "\x1e llmos-verdicts "


def checked(
    code: str, source: str, inputs: dict[str, Any], outputs: Sequence[Any]
) -> list[str | None]:
    """For each of `outputs`, why the program's `check` rejects it, or None (see the module
    note). Raises CheckError when the check cannot run."""
    from llmos.hw.dev.python import PythonDevice  # the sandbox, only for programs that check

    cases = json.dumps({"input": source, "inputs": inputs, "outputs": list(outputs)})
    harness = _HARNESS.format(cases=cases, code=code, marker=_MARKER)
    ctx = CallContext(timeout_s=params.VERIFY_CHECK_WALL_S)
    result = PythonDevice().call({"code": harness}, ctx)
    if not result.ok:
        raise CheckError(f"the answer's check could not run: {result.error}")
    out = result.output if isinstance(result.output, dict) else {}
    stdout = str(out.get("stdout") or "")
    at = stdout.rfind(_MARKER)
    if at < 0 or out.get("exit_status") != 0:
        why = "it timed out" if out.get("timed_out") else (out.get("killed_reason") or "")
        tail = str(out.get("stderr") or "").strip().splitlines()[-1:] or [why or "no verdict"]
        raise CheckError(f"the answer's check did not finish: {tail[0]}")
    verdicts = json.loads(stdout[at + len(_MARKER) :].splitlines()[0])
    return [v if v is None else " ".join(str(v).split()) for v in verdicts]
