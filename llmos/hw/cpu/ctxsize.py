"""Where an OpenAI-compatible server says how large its context window is.

The OpenAI API has no such field; the servers that copy it each say it in their own place:

- llama.cpp's `llama-server`: `GET <root>/props`, `default_generation_settings.n_ctx` (or a
  top-level `n_ctx`), the context it was started with;
- vLLM: `GET <base>/models`, the `max_model_len` of the model's entry in `data`;
- Ollama: `POST <root>/api/show {"model": ...}`, `num_ctx` in `parameters` when the model
  sets one, else `model_info.<architecture>.context_length`.

`<base>` is the API's base URL (`http://host:port/v1`), `<root>` the same without `/v1`.
llama-cpp-python's server and api.openai.com say nothing: `discover` then returns None.

Invariants: `discover` never raises; each request is bounded by `timeout_s`; the places are
asked in the order above and the first positive integer wins; what it returns names where the
value came from.

What this module does not do: remember the answer (the OpenAI CPU keeps it with the other
things it learns about a server), or decide between it and the configured size.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any


def discover(
    base_url: str, model: str, api_key: str | None, timeout_s: float
) -> tuple[int, str] | None:
    """(context size, where it was read) from the server at `base_url`, or None."""
    base = base_url.rstrip("/")
    root = base.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        found = _from_props(_json(f"{root}/props", headers, timeout_s))
        if found:
            return found, "/props n_ctx"
        found = _from_models(_json(f"{base}/models", headers, timeout_s), model)
        if found:
            return found, "/v1/models max_model_len"
        show = _json(f"{root}/api/show", headers, timeout_s, {"model": model})
        found = _from_ollama(show)
        if found:
            return found, "/api/show context length"
    except Exception:  # unreachable, or a reply that is not HTTP: the server says nothing
        return None
    return None


def _json(url: str, headers: dict[str, str], timeout_s: float, body: Any = None) -> Any:
    """The JSON of a 200 answer; None for any other status or a body that is not JSON;
    raises (URLError, OSError) only when the server cannot be reached."""
    data = None if body is None else json.dumps(body).encode()
    sent = {**headers, **({"Content-Type": "application/json"} if data else {})}
    request = urllib.request.Request(url, data=data, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            if reply.status != 200:
                return None
            return json.loads(reply.read(1 << 22))
    except urllib.error.HTTPError:
        return None
    except ValueError:
        return None


def _positive(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value > 0 else None


def _from_props(props: Any) -> int | None:
    if not isinstance(props, dict):
        return None
    settings = props.get("default_generation_settings")
    if isinstance(settings, dict) and _positive(settings.get("n_ctx")):
        return _positive(settings.get("n_ctx"))
    return _positive(props.get("n_ctx"))


def _from_models(models: Any, model: str) -> int | None:
    data = models.get("data") if isinstance(models, dict) else None
    if not isinstance(data, list):
        return None
    entries = [e for e in data if isinstance(e, dict)]
    chosen = [e for e in entries if e.get("id") == model] or (entries if len(entries) == 1 else [])
    for entry in chosen:
        found = _positive(entry.get("max_model_len"))
        if found:
            return found
    return None


def _from_ollama(show: Any) -> int | None:
    if not isinstance(show, dict):
        return None
    parameters = show.get("parameters")
    if isinstance(parameters, str):
        match = re.search(r"^\s*num_ctx\s+(\d+)\s*$", parameters, re.MULTILINE)
        if match and int(match.group(1)) > 0:
            return int(match.group(1))
    info = show.get("model_info")
    if isinstance(info, dict):
        for key, value in info.items():
            if str(key).endswith(".context_length") and _positive(value):
                return _positive(value)
    return None
