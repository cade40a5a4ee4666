"""The loop's dependability services applied to one answer: the form an answer is held to,
the checks it must pass, and k samples voted.

- `answer_schema`: under `llmos.verify.grounded`, the schema a JSON answer is constrained to
  (a grounded string field only a phrase of the input, a grounded number only a number written
  there); `unasked` drops the nulls it allowed for optional fields.
- `lines_schema` / `as_lines`: under `llmos.verify.lines` on a CPU with grammars, the reply is
  N strings of whole words, joined back into N lines.
- `cited` and `text_checked`: why a text answer fails `llmos.verify.cites` or
  `llmos.verify.lines` (None when it passes).
- `voted`: a program without devices under `llmos.redundancy`: k samples in one batch, each
  validated and verified, then voted (`redundancy`, `verify`).

Invariants: a check returns None or one sentence (what the model is shown on a retry); the
schemas only narrow what the program's own schema allows. What this module does not do: call
devices or the CPU for single replies (the loop does), or define the checks themselves
(`verify`, `route`, `redundancy` beside it).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

from llmos import params
from llmos.errors import OutputError
from llmos.hw.cpu.base import CPU, GenRequest
from llmos.kernel.dependable import Settings
from llmos.kernel.dependable import redundancy as vote
from llmos.kernel.dependable import route as router
from llmos.kernel.dependable import verify as verifier
from llmos.kernel.program import Program
from llmos.kernel.reply import RunResult, ended, validate_json
from llmos.kernel.sched.policy import Entity


def cited(dep: Settings, steps: list[dict[str, Any]], text: str) -> str | None:
    """Why a text answer fails `llmos.verify.cites` (the last result of that device), or None."""
    if dep.verify is None or dep.verify.cites is None:
        return None
    device = dep.verify.cites
    for record in reversed(steps):
        if record.get("device") == device and record.get("ok"):
            out = record.get("result")
            if isinstance(out, dict):
                forms = [str(out[k]) for k in ("result", "decimal") if k in out]
            else:
                forms = [str(out)]
            return verifier.cites(text, forms)
    return f"the answer was given without a result from {device}"


def lines_schema(dep: Settings, cpu: CPU) -> dict[str, Any] | None:
    """Under `llmos.verify.lines` on a CPU with grammars, the form the reply is constrained to:
    exactly N non-empty strings (a JSON array), which `as_lines` joins into N lines; so a
    small model cannot write two lines of a haiku or run three into one."""
    if dep.verify is None or dep.verify.lines is None or not cpu.capabilities.grammar:
        return None
    n = dep.verify.lines
    # a word: no space, quote, backslash or control break, in any script, and not too long
    word = rf'[^ \t"\\\n]{{1,{params.VERIFY_LINE_MAX_WORD_CHARS}}}'
    more = (params.VERIFY_LINE_MIN_WORDS - 1, params.VERIFY_LINE_MAX_WORDS - 1)
    line = {"type": "string", "pattern": f"^{word}( {word}){{{more[0]},{more[1]}}}$"}
    return {"type": "array", "items": line, "minItems": n, "maxItems": n}


def as_lines(text: str, request: GenRequest, program: Program) -> str:
    """A reply made under `lines_schema` as the text it stands for, one line per string."""
    if program.json_mode or request.json_schema is None:
        return text
    try:
        items = json.loads(text)
    except ValueError:
        return text  # cut off: the check says what is wrong
    if not isinstance(items, list):
        return text
    return "\n".join(" ".join(str(i).split()) for i in items)


def text_checked(dep: Settings, text: str) -> str | None:
    """Why a text answer fails `llmos.verify.lines`, or None."""
    if dep.verify is None or dep.verify.lines is None:
        return None
    return verifier.lines(text, dep.verify.lines)


def answer_schema(schema: dict[str, Any], dep: Settings, source: str) -> dict[str, Any]:
    """The schema the CPU constrains a JSON answer to under `llmos.verify.grounded`: a grounded
    string field may only be a phrase of the input (`route.phrases`: a small model cannot
    invent "<EMAIL>"), a grounded number only a number written there, and not an empty one
    (an empty claim is never grounded). Every grounded field is asked for: one the program
    leaves optional may be null (`unasked` drops it), since a small model otherwise closes
    the object before it and never gives the company."""
    fields = dep.verify.grounded if dep.verify is not None else ()
    props = schema.get("properties")
    if not fields or not isinstance(props, dict):
        return schema
    required = list(schema.get("required") or [])
    phrases = router.phrases(source)
    values = _input_numbers(source)
    out: dict[str, Any] = {}
    asked: list[str] = []  # fields now required, an optional one with null as a choice
    for k, v in props.items():
        kinds = _types(v)
        if k not in fields or not isinstance(v, dict):
            out[k] = v
            continue
        if "string" in kinds:
            choices: list[Any] = list(phrases)
        elif "number" in kinds or "integer" in kinds:
            choices = [n for n in values if "number" in kinds or isinstance(n, int)]
        else:
            out[k] = v
            continue
        if not choices:
            out[k] = {**v, "minLength": 1} if "string" in kinds else v
            continue
        out[k] = _one_of(v, choices + ([] if k in required else [None]))
        asked.append(k)
    return {**schema, "properties": out, "required": list(dict.fromkeys([*required, *asked]))}


def _input_numbers(source: str) -> list[int | float]:
    """The numbers written in `source`, as JSON numbers (a grounded number's choices)."""
    found: list[int | float] = []
    for n in router.numbers(source):
        try:
            found.append(float(n) if "." in n else int(n))
        except ValueError:
            continue
    return list(dict.fromkeys(found))[: params.GROUND_MAX_PHRASES]


def unasked(output: Any, schema: dict[str, Any] | None, dep: Settings) -> Any:
    """`output` without the nulls `answer_schema` allowed for optional grounded fields: a
    field the input lacks is left out, as the program's schema says it may be."""
    fields = dep.verify.grounded if dep.verify is not None else ()
    if not fields or not isinstance(output, dict) or schema is None:
        return output
    required = set(schema.get("required") or [])
    dropped = {k for k, v in output.items() if v is None and k in fields and k not in required}
    return {k: v for k, v in output.items() if k not in dropped}


def _one_of(schema: dict[str, Any], choices: list[str]) -> dict[str, Any]:
    """`schema` as one of `choices`; its "type" goes, since llama.cpp's converter follows a
    list of types (["string", "null"]) and would not see the enum."""
    return {**{k: v for k, v in schema.items() if k != "type"}, "enum": choices}


def _types(schema: Any) -> list[str]:
    kind = schema.get("type") if isinstance(schema, dict) else None
    return [kind] if isinstance(kind, str) else list(kind or [])


def voted(
    program: Program,
    cpu: CPU,
    request: GenRequest,
    dep: Settings,
    source: str,
    inputs: dict[str, Any],
    police: Entity | None,
    started: float,
    on_text: Callable[[str], None] | None,
) -> RunResult:
    """The answer of a program without devices under `llmos.redundancy`: k samples in one
    batch, each validated and verified, then voted (see llmos.kernel.dependable.redundancy)."""
    red = dep.redundancy
    assert red is not None
    samples = vote.sample(cpu, request, red.k, red.temperature)
    for s in samples:
        s.text = as_lines(s.text, request, program)
    done_at = time.perf_counter()
    prompt = sum(s.last.prompt_tokens for s in samples)
    generated = sum(s.last.completion_tokens for s in samples)
    extra_view = request.entity if cpu.capabilities.batching else police
    if extra_view is not None:  # a batching CPU charged the first sample as it ran
        start = 1 if cpu.capabilities.batching else 0
        extra_view.charge(
            prompt=sum(s.last.prompt_tokens for s in samples[start:]),
            generated=sum(s.last.completion_tokens for s in samples[start:]),
        )
    first_reason = samples[0].last.finish_reason

    done = functools.partial(
        ended,
        prompt_tokens=prompt,
        completion_tokens=generated,
        ttft_ms=(done_at - started) * 1000,
        started=started,
        attempts=len(samples),
    )
    if first_reason in ("cancelled", "budget"):
        return done("", "", first_reason, extra={"redundancy": {"k": red.k}})
    schema = program.output_schema
    problems: list[str] = []
    candidates: list[Any] = []
    for s in samples:
        if not program.json_mode:
            problem = text_checked(dep, s.text)
            if problem is not None:
                problems.append(problem)
            else:
                candidates.append(s.text.strip())
            continue
        try:
            output = validate_json(s.text, schema, lambda o: unasked(o, schema, dep))
        except OutputError as exc:
            problems.append(str(exc))
            continue
        problem = None
        if dep.verify is not None and dep.verify.grounded:
            problem = verifier.grounded(output, dep.verify.grounded, source)
        if problem is not None:
            problems.append(problem)
            continue
        candidates.append(output)
    check = dep.verify.check if dep.verify is not None else None
    if check and candidates:  # one sandboxed run for all the samples left
        verdicts = verifier.checked(check, source, inputs, candidates)
        problems += [v for v in verdicts if v is not None]
        candidates = [c for c, v in zip(candidates, verdicts, strict=True) if v is None]
    if not candidates:
        raise OutputError(
            f"{program.path}: none of the {len(samples)} samples passed its checks "
            f"(first: {problems[0] if problems else 'no reply'})"
        )
    info: dict[str, Any] = {"k": red.k, "vote": red.vote, "valid": len(candidates)}
    if program.json_mode and red.vote == "schema":
        winner = vote.consensus(candidates, schema)
        merged = check and winner not in candidates  # a field-wise merge: check it too
        if merged and verifier.checked(str(check), source, inputs, [winner])[0] is not None:
            won = vote.majority(candidates)
            assert won is not None
            winner = candidates[won[0]]
        info["agree"] = sum(1 for c in candidates if c == winner)
    else:
        won = vote.majority(candidates)
        assert won is not None
        winner, info["agree"] = candidates[won[0]], won[1]
    text = json.dumps(winner) if program.json_mode else str(winner)
    if on_text is not None:
        on_text(text)
    return done(text, winner, "stop", extra={"redundancy": info})
