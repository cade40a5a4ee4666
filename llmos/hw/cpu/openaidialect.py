"""What an OpenAI-compatible server's dialect is: its error texts read, the adaptations its
refusals call for, and the file that remembers them per server.

Servers that copy the OpenAI API differ in what they accept. `adaptation_for` reads a refused
request's error (an `openai.APIStatusError`) and names the one change that a known server
dialect explains (`ADAPTATIONS`: a `json_object` response format for `json_schema`, no
`stream_options`, `tool_choice: "auto"` for "required"); `adapt` makes that change to a
request's keyword arguments. `load_dialects` and `save_dialect` keep what was learned of each
server (its adaptations and the context size it reports) in a JSON file, keyed by base URL and
model. `status_message` and `is_context_error` read a server's own error text and whether it
says the prompt does not fit.

Invariants:
- `adapt` returns the arguments unchanged when its adaptation does not apply, and never drops
  a tool; `adaptation_for` never names a change for an error that says the context overflowed.
- The dialects file is written atomically (a reader never sees half a file); an unreadable or
  unwritable file is as good as none, and unknown adaptations in it are ignored.

What this module does not do: send requests, decide how often to retry, or map errors to
`llmos.errors` exceptions (see `llmos.hw.cpu.openai`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import openai

CONTEXT_MARKERS = ("context", "too many tokens", "prompt is too long")


def status_message(exc: openai.APIStatusError) -> str:
    """The server's own error text, not the client's `Error code: ...` wrapper."""
    body: Any = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            for key in ("message", "detail", "msg"):
                value = inner.get(key)
                if isinstance(value, str) and value:
                    return value
                if value:
                    return str(value)
        elif isinstance(inner, str) and inner:
            return inner
    elif isinstance(body, str) and body:
        return body
    try:
        text = exc.response.text
    except Exception:  # a streamed response that was never read
        text = ""
    return text or exc.message


def is_context_error(status: int, message: str, body: object) -> bool:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("code") == "context_length_exceeded":
            return True
    if status not in (400, 413, 422):
        return False
    lowered = message.lower()
    return any(marker in lowered for marker in CONTEXT_MARKERS)


ADAPTATIONS = ("json_object", "no_stream_options", "tool_choice_auto")


def adapt(kwargs: dict[str, Any], adaptation: str) -> dict[str, Any]:
    """`kwargs` in the form one learned adaptation asks for (unchanged if it does not apply)."""
    response_format = kwargs.get("response_format")
    if (
        adaptation == "json_object"
        and isinstance(response_format, dict)
        and response_format.get("type") == "json_schema"
    ):
        schema = response_format["json_schema"]["schema"]
        return {**kwargs, "response_format": {"type": "json_object", "schema": schema}}
    if adaptation == "no_stream_options" and "stream_options" in kwargs:
        return {k: v for k, v in kwargs.items() if k != "stream_options"}
    if adaptation == "tool_choice_auto" and kwargs.get("tool_choice") == "required":
        return {**kwargs, "tool_choice": "auto"}
    return kwargs


def adaptation_for(kwargs: dict[str, Any], exc: openai.APIStatusError) -> str | None:
    """The adaptation to make after `exc`, or None when no known server dialect explains it.

    - llama-cpp-python's server knows no `response_format` of type `json_schema` (it answers
      500 with a validation error) but enforces `{"type": "json_object", "schema": ...}` with a
      grammar: ask in that form.
    - Some servers refuse `stream_options` with a 400 or 422: ask without it (usage then falls
      back to estimates).
    - A server that refuses `tool_choice: "required"` (400, 422 or 500 naming `tool_choice`)
      is asked with "auto": the tools stay offered, and the kernel reports a first reply
      without a call as the server not enforcing `required` (`llmos.kernel.loop`).
    Each change is made at most once, so the loop in `OpenAICPU._open_stream` ends.
    """
    message = status_message(exc)
    if is_context_error(exc.status_code, message, exc.body):
        return None
    lowered = message.lower()
    response_format = kwargs.get("response_format")
    if (
        isinstance(response_format, dict)
        and response_format.get("type") == "json_schema"
        and exc.status_code in (400, 422, 500)
        and ("response_format" in lowered or "json_schema" in lowered)
    ):
        return "json_object"
    if (
        kwargs.get("tool_choice") == "required"
        and exc.status_code in (400, 422, 500)
        and "tool_choice" in lowered
    ):
        return "tool_choice_auto"
    if "stream_options" in kwargs and exc.status_code in (400, 422):
        return "no_stream_options"
    return None


def load_dialects(path: Path | None) -> dict[str, dict[str, Any]]:
    """What is remembered per server: `{"adaptations": [...], "n_ctx": N}` (0: the server said
    nothing); a list is an older file's adaptations. An unreadable file is as good as none."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        entry: dict[str, Any] = {}
        if isinstance(value, list):
            value = {"adaptations": value}
        if not isinstance(value, dict):
            continue
        adaptations = value.get("adaptations")
        if isinstance(adaptations, list):
            entry["adaptations"] = [a for a in adaptations if a in ADAPTATIONS]
        n_ctx = value.get("n_ctx")
        if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx >= 0:
            entry["n_ctx"] = n_ctx
        out[str(key)] = entry
    return out


def save_dialect(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Record what is known of one server (atomically: a reader never sees half a file); a
    file that cannot be written only costs the next run its relearning."""
    data = load_dialects(path)
    if entry:
        data[key] = entry
    else:
        data.pop(key, None)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
