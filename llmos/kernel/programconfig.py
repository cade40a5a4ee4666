"""A program's settings: the `llmos.*` keys, the `config` keys and the plain front-matter fields.

`llmos_settings` reads the OS settings of a program's front matter, in the namespaced form
(`llmos.max_steps: 4`) or the nested one (`llmos: {max_steps: 4}`); the keys and their types are
`params.LLMOS_KEYS`, and the same key in both forms is an error. `check_config_at` checks the
generation `config` (the keys of `CONFIG_KEYS`, each mapped to its `GenRequest` keyword);
`check_str` and `check_tools` check a string field and a list of tool names.

Invariants:
- Every failure is a `ProgramError` with one line naming the file (or `where`) and the key.
- A checked value is returned as given (a `config` mapping copied); nothing is defaulted here.

What this module does not do: parse front matter or load programs (see
`llmos.kernel.program`), check the dependability keys' meaning (see `llmos.kernel.dependable`),
or resolve tool names to devices.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llmos import params
from llmos.errors import ProgramError
from llmos.kernel import dependable
from llmos.kernel.inputs import as_json

# config key -> (GenRequest keyword, accepted types, description for errors)
CONFIG_KEYS: dict[str, tuple[str, tuple[type, ...], str]] = {
    "maxOutputTokens": ("max_tokens", (int,), "a positive integer"),
    "temperature": ("temperature", (int, float), "a number"),
    "topK": ("top_k", (int,), "a positive integer"),
    "topP": ("top_p", (int, float), "a number"),
    "stopSequences": ("stop", (list,), "a list of strings"),
    "seed": ("seed", (int,), "an integer"),
}
_POSITIVE_LLMOS = ("budget", "max_steps", "max_output_tokens", "context")
_TYPE_NAMES: dict[type, str] = {
    int: "an integer",
    list: "a list",
    dict: "a mapping",
    str: "a string",
}


def llmos_settings(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    valid = ", ".join(sorted(params.LLMOS_KEYS))
    nested = raw.get("llmos")
    if nested is not None and not isinstance(nested, dict):
        raise ProgramError(f"{path}: 'llmos' must be a mapping of settings ({valid})")
    items: list[tuple[str, str, Any]] = [(f"llmos.{k}", k, v) for k, v in (nested or {}).items()]
    items += [(k, k[len("llmos.") :], v) for k, v in raw.items() if k.startswith("llmos.")]
    for shown, key, value in items:
        if key not in params.LLMOS_KEYS:
            raise ProgramError(f"{path}: unknown key '{shown}' (valid llmos keys: {valid})")
        if key in out:
            raise ProgramError(f"{path}: 'llmos.{key}' is set twice")
        expected = params.LLMOS_KEYS[key]
        types = expected if isinstance(expected, tuple) else (expected,)
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            raise ProgramError(f"{path}: '{shown}' must be {names}, got {as_json(value)}")
        number = value if isinstance(value, int) else 0
        if key == "priority" and not params.MIN_PRIORITY <= number <= params.MAX_PRIORITY:
            raise ProgramError(
                f"{path}: '{shown}' must be between {params.MIN_PRIORITY} and"
                f" {params.MAX_PRIORITY}, got {value}"
            )
        if key in _POSITIVE_LLMOS and number < 1:
            raise ProgramError(f"{path}: '{shown}' must be positive, got {value}")
        _check_memory_setting(path, shown, key, value)
        if key in dependable.KEYS:
            problem = dependable.check(shown, key, value)
            if problem is not None:
                raise ProgramError(f"{path}: {problem}")
        out[key] = value
    return out


def _check_memory_setting(path: Path, shown: str, key: str, value: Any) -> None:
    """The `llmos.paging`, `llmos.memory` and `llmos.shm` keys (see llmos.kernel.mm.paging and
    llmos.store.shm)."""
    if key == "paging" and not re.match(r"^[a-z][a-z0-9_-]*$", value):
        raise ProgramError(f"{path}: '{shown}' must be a paging policy name, got {value!r}")
    if key == "memory":
        unknown = sorted(set(value) - {"auto_recall"})
        if unknown:
            raise ProgramError(f"{path}: '{shown}' has unknown keys {unknown} (valid: auto_recall)")
        budget = value.get("auto_recall", 0)
        if (
            isinstance(budget, bool)
            or not isinstance(budget, int)
            or not 0 <= budget <= params.AUTO_RECALL_MAX_TOKENS
        ):
            raise ProgramError(
                f"{path}: '{shown}.auto_recall' must be a token budget from 0 to "
                f"{params.AUTO_RECALL_MAX_TOKENS}, got {as_json(budget)}"
            )
    if key == "shm" and not all(isinstance(n, str) and n for n in value):
        raise ProgramError(f"{path}: '{shown}' must be a list of segment names")


def config_keys() -> list[str]:
    """The `config` keys a program (or `llmos run -o KEY VALUE`) may set."""
    return list(CONFIG_KEYS)


def check_config(where: str, config: Any) -> dict[str, Any]:
    """`config` checked as a program's would be; ProgramError names `where` and the key."""
    return check_config_at(Path(where), config)


def check_config_at(path: Path, config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ProgramError(f"{path}: 'config' must be a mapping")
    for key, (_kwarg, types, what) in CONFIG_KEYS.items():
        if key not in config:
            continue
        value = config[key]
        ok = isinstance(value, types) and not isinstance(value, bool)
        if ok and key in ("maxOutputTokens", "topK"):
            ok = value >= 1
        if ok and key == "stopSequences":
            ok = all(isinstance(s, str) and s for s in value)
        if not ok:
            raise ProgramError(f"{path}: 'config.{key}' must be {what}, got {as_json(value)}")
    return dict(config)


def check_str(path: Path, raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise ProgramError(f"{path}: '{key}' must be a string, got {as_json(value)}")
    return value


def check_tools(path: Path, value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise ProgramError(f"{path}: '{key}' must be a list of tool names")
    return list(value)
