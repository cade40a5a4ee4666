"""The OpenAI-compatible endpoint: any OpenAI client runs llmos programs as processes.

    GET  /v1/models             installed programs the caller sees, as `program/NAME`, then the
                                raw CPUs (`embedded`, the configured aliases) and the
                                embedding model
    POST /v1/chat/completions   streaming (SSE `data: {chunk}` lines ending `data: [DONE]`) or
                                not; `max_tokens`/`max_completion_tokens`, `temperature`,
                                `response_format` (`json_object`, `json_schema`), usage (in the
                                last chunk with `stream_options.include_usage`), `tools` and
                                `tool_choice` (functions the client runs itself)
    POST /v1/embeddings         the embedding model memory ships (float or base64)

A completion is a kernel process owned by the caller (the kernel-API `chat` operation): it is
scheduled with everyone else's under the fair-share policy, charged to the caller's budget and
quotas, logged, and listed in their `/api/processes`. `program/NAME` runs that installed
program with the conversation's last user message as its input; a CPU's name runs the
conversation as it is.

A client that disconnects: from a streaming completion, its process is killed at once (nobody
can read the rest; it ends `killed` and is logged so); from a non-streaming one, the process
runs to its end and its result stays in the log (`/api/logs`).

Errors have the OpenAI shape (`errors`), so the official clients raise their typed errors
(401 AuthenticationError, 404 NotFoundError, 422 UnprocessableEntityError, 429 RateLimitError).

Function calling: a call the model makes to one of the request's `tools` ends the process;
the answer carries it in `tool_calls` with finish reason `tool_calls`, and the client sends the
function's result back as a `tool` message in its next request (as with any OpenAI server).
`tool_choice` `required` or `{"type": "function", "function": {"name": ...}}` makes the reply a
call (by grammar on the embedded CPU); `none` hides the tools. An installed program that
declares devices of its own takes no client tools (422).

Not covered: `n` > 1 and `logprobs` (422); content parts other than text (422); more than one
call per reply from the embedded CPU (it writes one); a call's arguments streamed piece by
piece (a streamed call arrives whole, in one chunk).

What this does not do: decide what runs or who may (the kernel's API does).
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llmos import params
from llmos.errors import InputError, LlmosError, ProgramError
from llmos.front.serve import errors
from llmos.front.serve.auth import caller as auth_caller
from llmos.kernel import api
from llmos.kernel.proc import Process

router = APIRouter(prefix="/v1")
CallerDep = Annotated[api.Caller, Depends(auth_caller)]
EMBEDDING_MODEL = f"{params.EMBED_PACKAGE}-{params.EMBED_CONFIG}"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields we do not use


class StreamOptions(_Lenient):
    include_usage: bool = False


class ResponseFormat(_Lenient):
    type: str = "text"
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    n: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None


class EmbeddingRequest(_Lenient):
    input: str | list[str]
    model: str = EMBEDDING_MODEL
    encoding_format: str = "float"


# --- models ------------------------------------------------------------------------------------


@router.get("/models")
def list_models(request: Request, caller: CallerDep) -> dict[str, Any]:
    kernel = request.app.state.service.kernel
    created = int(request.app.state.service.started_at)
    data = [
        {
            "id": f"{params.PROGRAM_MODEL_PREFIX}{p['name']}",
            "object": "model",
            "created": created,
            "owned_by": caller.owner if p["scope"] == "user" else "system",
        }
        for p in api.call(kernel, caller, "programs.list", {})["programs"]
    ]
    for row in kernel.system.list_models():
        if row["kind"] in ("embedded", "alias"):
            data.append(
                {"id": row["name"], "object": "model", "created": created, "owned_by": "llmos"}
            )
    data.append({"id": EMBEDDING_MODEL, "object": "model", "created": created, "owned_by": "llmos"})
    return {"object": "list", "data": data}


# --- chat completions --------------------------------------------------------------------------


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InputError(f"message content of type {kind!r} is not supported (text only)")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise InputError("message content must be a string or a list of text parts")


def _message(i: int, m: dict[str, Any]) -> dict[str, Any]:
    """One OpenAI message as the kernel API's chat message."""
    out: dict[str, Any] = {"role": m.get("role"), "content": _text_of(m)}
    calls = m.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise InputError(f"messages[{i}].tool_calls must be a list")
        shaped = []
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise InputError(f"messages[{i}]: each tool call needs a function name")
            args = fn.get("arguments")
            shaped.append(
                {
                    "id": str(call.get("id") or ""),
                    "name": fn["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args or {}),
                }
            )
        out["tool_calls"] = shaped
    if m.get("tool_call_id") is not None:
        out["tool_call_id"] = str(m["tool_call_id"])
    return out


def _tool(tool: Any) -> dict[str, Any]:
    """One OpenAI `tools` entry as the kernel API's function."""
    fn = tool.get("function") if isinstance(tool, dict) else None
    if tool.get("type", "function") != "function" or not isinstance(fn, dict):
        raise InputError("only tools of type 'function' are supported")
    spec: dict[str, Any] = {"name": fn.get("name"), "description": str(fn.get("description") or "")}
    if fn.get("parameters") is not None:
        spec["parameters"] = fn["parameters"]
    return spec


def kernel_request(body: ChatCompletionRequest) -> dict[str, Any]:
    """The kernel-API `chat` payload for an OpenAI request (refusing what is not supported)."""
    if body.n not in (None, 1):
        raise InputError("'n' must be 1")
    if body.logprobs:
        raise InputError("'logprobs' is not supported")
    messages = [_message(i, m) for i, m in enumerate(body.messages)]
    payload: dict[str, Any] = {"model": body.model, "messages": messages}
    if body.tools:
        payload["tools"] = [_tool(t) for t in body.tools]
    choice = body.tool_choice
    if isinstance(choice, dict):
        fn = choice.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InputError("tool_choice must be a string or name a function")
        payload["tool_choice"] = fn["name"]
    elif choice is not None:
        payload["tool_choice"] = choice
    limit = body.max_completion_tokens or body.max_tokens
    if limit is not None:
        payload["max_tokens"] = limit
    if body.temperature is not None:
        payload["temperature"] = float(body.temperature)
    fmt = body.response_format
    if fmt is not None and fmt.type != "text":
        if fmt.type == "json_object":
            payload["json_object"] = True
        elif fmt.type == "json_schema":
            schema = (fmt.json_schema or {}).get("schema")
            if not isinstance(schema, dict):
                raise InputError("response_format json_schema needs 'json_schema.schema'")
            payload["json_schema"] = schema
        else:
            raise InputError(f"response_format type {fmt.type!r} is not supported")
    return payload


def _usage(proc: Process) -> dict[str, int]:
    info = proc.info()
    prompt, generated = int(info["prompt_tokens"]), int(info["generated_tokens"])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
    }


def _tool_calls(proc: Process) -> list[dict[str, Any]]:
    """The calls to the client's functions a finished process ended with, OpenAI-shaped."""
    result = proc.result
    calls = (result.extra.get("tool_calls") if result is not None else None) or []
    return [
        {
            "id": c.get("id") or f"call_{secrets.token_hex(8)}",
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for c in calls
    ]


def _finish_reason(proc: Process, limit: int | None) -> str:
    if proc.result is not None and proc.result.finish_reason == "tool_calls":
        return "tool_calls"
    if proc.exit_status == "budget":
        return "length"
    if limit is not None and int(proc.info()["generated_tokens"]) >= limit:
        return "length"
    return "stop"


def _raise_failure(proc: Process) -> None:
    """The error a process ended with, as the HTTP error it maps to."""
    if proc.exit_status == "ok":
        return
    if isinstance(proc.exception, LlmosError):
        raise proc.exception
    raise ProgramError(f"process {proc.pid} ended {proc.exit_status}: {proc.error or ''}".strip())


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    request: Request, caller: CallerDep, body: ChatCompletionRequest
) -> JSONResponse | StreamingResponse:
    service = request.app.state.service
    if service.draining:
        raise errors.HTTPError(503, "the service is shutting down; try again shortly", "draining")
    payload = kernel_request(body)
    kernel = service.kernel
    reply = await anyio.to_thread.run_sync(api.call, kernel, caller, "chat", payload)
    proc = api.owned(kernel, caller, int(reply["pid"]))
    ident = f"chatcmpl-{proc.pid}-{secrets.token_hex(6)}"
    created = int(time.time())
    limit = payload.get("max_tokens")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        frames = _stream(request, proc, caller, ident, created, body.model, limit, include_usage)
        return StreamingResponse(
            frames, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    await anyio.to_thread.run_sync(proc.wait)
    _raise_failure(proc)
    calls = _tool_calls(proc)
    message: dict[str, Any] = {"role": "assistant", "content": proc.text or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return JSONResponse(
        {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": _finish_reason(proc, limit),
                }
            ],
            "usage": _usage(proc),
        }
    )


def _chunk(ident: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> str:
    body = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _stream(
    request: Request,
    proc: Process,
    caller: api.Caller,
    ident: str,
    created: int,
    model: str,
    limit: int | None,
    include_usage: bool,
) -> AsyncIterator[str]:
    """The completion's chunks as the process produces them; if the client leaves first, the
    process is killed (see the module's note)."""
    kernel = request.app.state.service.kernel
    seen = 0
    finished = False
    try:
        yield _chunk(ident, created, model, {"role": "assistant", "content": ""}, None)
        while True:
            fresh, alive = await anyio.to_thread.run_sync(
                proc.read_output, seen, params.KERNEL_POLL_S
            )
            seen += len(fresh)
            if fresh:
                yield _chunk(ident, created, model, {"content": "".join(fresh)}, None)
            if not alive:
                break
            if not fresh and await request.is_disconnected():
                return
        finished = True
        if proc.exit_status != "ok":
            exc = proc.exception if isinstance(proc.exception, LlmosError) else None
            message = str(exc) if exc else f"process {proc.pid} ended {proc.exit_status}"
            kind = exc.kind if exc else "error"
            code = exc.exit_code if exc else 1
            yield f"data: {json.dumps(errors.body(message, kind, code))}\n\n"
            yield "data: [DONE]\n\n"
            return
        calls = _tool_calls(proc)
        if calls:
            deltas = [{"index": i, **call} for i, call in enumerate(calls)]
            yield _chunk(ident, created, model, {"tool_calls": deltas}, None)
        yield _chunk(ident, created, model, {}, _finish_reason(proc, limit))
        if include_usage:
            usage = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(proc),
            }
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if not finished and proc.alive:
            # Cancelled (the client left) or ended early: no await here, it would be cancelled
            # too; a kill only marks the process, so it is safe on the event loop.
            with contextlib.suppress(LlmosError):
                kernel.kill(proc.pid)


# --- embeddings --------------------------------------------------------------------------------


@router.post("/embeddings")
def embeddings(request: Request, caller: CallerDep, body: EmbeddingRequest) -> dict[str, Any]:
    if body.model != EMBEDDING_MODEL:
        raise InputError(f"embedding model {body.model!r} is not served: use {EMBEDDING_MODEL!r}")
    if body.encoding_format not in ("float", "base64"):
        raise InputError("encoding_format must be 'float' or 'base64'")
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    kernel = request.app.state.service.kernel
    reply = api.call(kernel, caller, "embed", {"texts": texts})
    data = []
    for i, vector in enumerate(reply["vectors"]):
        embedding: Any = vector
        if body.encoding_format == "base64":
            raw = np.asarray(vector, dtype="<f4").tobytes()
            embedding = base64.b64encode(raw).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = int(reply["tokens"])
    return {
        "object": "list",
        "data": data,
        "model": EMBEDDING_MODEL,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
