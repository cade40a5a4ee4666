"""A program's inputs: `key=value` pairs coerced by the input schema's types, validated
against the schema, with the first problem reported in one line.

Invariants: every failure is an InputError (the caller's inputs are at fault, exit 4) naming the
input, or, for a program's own defaults, a ProgramError (the file is at fault, exit 3); no
exception of jsonschema escapes.

What this module does not do: compile schemas (see `llmos.kernel.dotprompt`), or decide which
inputs a run gets (stdin as `input`: see `llmos.kernel.api`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.validators

from llmos.errors import InputError, ProgramError


def parse_cli_inputs(pairs: list[str], schema: dict[str, Any] | None) -> dict[str, Any]:
    """`key=value` pairs into an inputs dict, values coerced by the schema's property types.

    integer / number: parsed as numbers; boolean: `true` / `false` (any case); array / object:
    JSON text; string or no type: the text as given (an untyped `enum` picks the member whose
    text matches). Without a schema every value is a string. A key given twice is an error.
    """
    props: dict[str, Any] = (schema or {}).get("properties", {}) or {}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"bad input '{pair}': expected key=value")
        if key in out:
            raise InputError(f"input '{key}' given twice")
        prop = props.get(key)
        out[key] = coerce(key, value, prop) if isinstance(prop, dict) else value
    return out


def validate_inputs(path: Path, schema: dict[str, Any], data: dict[str, Any]) -> None:
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = list(validator.iter_errors(data))
    if not errors:
        return
    order = {"required": 0, "additionalProperties": 1}
    error = min(
        errors,
        key=lambda e: (order.get(str(e.validator), 2), len(e.absolute_path), str(e.absolute_path)),
    )
    prefix = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        required: Any = error.validator_value
        missing = [r for r in required if r not in error.instance]
        name = ".".join(filter(None, [prefix, str(missing[0]) if missing else ""]))
        raise InputError(f"{path}: missing required input '{name}'")
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        subschema: Any = error.schema
        known = set(subschema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in known)
        name = ".".join(filter(None, [prefix, extra[0] if extra else ""]))
        expected = ", ".join(sorted(known)) or "none"
        raise InputError(f"{path}: unknown input '{name}' (expected: {expected})")
    if not prefix:
        raise InputError(f"{path}: bad inputs: {error.message}")
    raise InputError(f"{path}: input '{prefix}': {error.message}")


def check_defaults(path: Path, schema: dict[str, Any], defaults: dict[str, Any]) -> None:
    relaxed = {k: v for k, v in schema.items() if k != "required"}
    try:
        validate_inputs(path, relaxed, defaults)
    except InputError as exc:
        raise ProgramError(f"{exc} (in 'input.default')") from exc


def coerce(key: str, value: str, prop: dict[str, Any]) -> Any:
    types = prop.get("type")
    type_list = [types] if isinstance(types, str) else list(types or [])
    kind = next((t for t in type_list if t != "null"), None)
    if kind is None and "enum" in prop:
        return next((m for m in prop["enum"] if as_text(m) == value), value)
    try:
        if kind == "integer":
            return int(value.strip())
        if kind == "number":
            number = float(value.strip())
            return int(number) if number.is_integer() and "." not in value else number
        if kind == "boolean":
            lowered = value.strip().lower()
            if lowered in ("true", "false"):
                return lowered == "true"
            raise ValueError(value)
        if kind in ("array", "object"):
            parsed = json.loads(value)
            if not isinstance(parsed, list if kind == "array" else dict):
                raise ValueError(value)
            return parsed
    except ValueError as exc:
        what = {
            "integer": "an integer",
            "number": "a number",
            "boolean": "true or false",
            "array": "a JSON array",
            "object": "a JSON object",
        }[str(kind)]
        raise InputError(f"input '{key}' must be {what}, got '{value}'") from exc
    return value


def as_json(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else as_json(value)
