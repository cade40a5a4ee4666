"""A CPU that is a remote OpenAI-compatible Chat Completions server.

`OpenAICPU` speaks `/v1/chat/completions` (always streamed, over SSE) and `/v1/models` through
the official `openai` client. It works with api.openai.com and with the local servers that copy
its API: llama.cpp's `llama-server`, llama-cpp-python's server, vLLM, Ollama, SGLang.

Invariants:
- `generate` yields one `Chunk(text=...)` per content delta and ends with exactly one
  `Chunk(done=True)` that carries the finish reason, the tool calls (their streamed argument
  pieces joined by `index`) and the token counts. Closing the generator early closes the HTTP
  stream.
- The counts on the final chunk are the server's `usage` when it sends one (it is asked to, with
  `stream_options.include_usage`); otherwise they are this module's estimates.
- Every failure is an `llmos.errors` exception with a one-line message that names the server:
  `BackendError` (unreachable, HTTP error status, malformed stream) or `ContextOverflowError`
  (the server says the prompt does not fit its context). No `openai` / `httpx` exception escapes,
  not even mid-stream.
- A stream that ends before its first event is asked for once more unstreamed: llama-cpp-python
  answers 200 with an empty stream when a streamed request fails (a prompt over its context),
  and only the unstreamed answer carries the error.
- A server that rejects `stream_options` with a 400/422 gets the request once more without it;
  one that knows no `json_schema` response format (llama-cpp-python's server) gets it once
  more as `{"type": "json_object", "schema": ...}`, the form that server enforces by grammar.
- `tool_choice: "required"` with a single tool is sent in the named form
  (`{"type": "function", ...}`), which servers that ignore "required" still enforce; one that
  refuses "required" outright is asked with "auto", the tools kept (never dropped).
- Each such adaptation is learned once per server: it is remembered for the CPU's lifetime and,
  given a `dialects` file (`$LLMOS_HOME/openai-servers.json`), across runs, keyed by base URL
  and model, so the next run asks in the accepted form at once. A remembered adaptation that
  the server then refuses (the server changed) is forgotten and the request asked as written.
  The dialects and their file are `llmos.hw.cpu.openaidialect`.
- The context size (`n_ctx`) is, in order: what the server says (`llmos.hw.cpu.ctxsize`:
  llama.cpp's `/props`, vLLM's `max_model_len`, Ollama's `/api/show`), else the configured
  `n_ctx`, else `params.OPENAI_DEFAULT_N_CTX`. The server is asked once, on first use, and the
  answer (or that it said nothing) is remembered with the adaptations; a prompt the server
  then refuses as too long forgets it, so the next run asks again.

Token counts are estimates (`capabilities.exact_tokens` is False): the remote tokenizer is not
available, so a text is taken to be one token per `params.OPENAI_BYTES_PER_TOKEN` UTF-8 bytes
(rounded up), and each message costs `params.OPENAI_MESSAGE_OVERHEAD_TOKENS` more, plus
`params.OPENAI_REPLY_PRIMING_TOKENS` for the generation prompt. For English text and BPE
vocabularies this is usually within ~25% of the truth; it is meant for budgeting, not for
packing a context to the last token. The "token ids" `tokenize` returns are the 4-byte slices
of the text read as integers: only their number means anything.

What this module does not do: grammar-constrained sampling (`grammar` is False), `top_k` (not
part of the OpenAI API; api.openai.com refuses unknown arguments, so it is not sent), retries
after a reply fails its schema (the caller validates and retries).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, cast

import openai
from openai import Stream
from openai.types.chat import ChatCompletionChunk

from llmos import params
from llmos.errors import BackendError, ContextOverflowError, LlmosError
from llmos.hw.cpu import ctxsize
from llmos.hw.cpu.base import CPU, Capabilities, Chunk, GenRequest, Message, ToolCall, ToolSpec
from llmos.hw.cpu.openaidialect import (
    CONTEXT_MARKERS,
    adapt,
    adaptation_for,
    is_context_error,
    load_dialects,
    save_dialect,
    status_message,
)

_FINISH_ALIASES = {"function_call": "tool_calls", "eos": "stop"}


@dataclass
class _PendingToolCall:
    """A tool call being assembled from streamed pieces."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def add(self, call_id: str | None, name: str | None, arguments: str | None) -> None:
        """Fold in one streamed piece.

        OpenAI sends the name once, in the first piece; llama-cpp-python repeats the whole name
        in every piece. A name equal to the one already held is a repeat; a different one
        before any argument text is the next piece of a name streamed in parts.
        """
        if call_id and not self.id:
            self.id = call_id
        if name and name != self.name and not self.arguments:
            self.name += name
        if arguments:
            self.arguments.append(arguments)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    limit = params.OPENAI_ERROR_MAX_CHARS
    return line if len(line) <= limit else line[: limit - 3] + "..."


# OpenAI function names allow only [A-Za-z0-9_-]: device names like `time.now` (an MCP
# server's tool) travel as `time__now` and are mapped back when the server calls them.
_DOT = "__"


def _wire_name(name: str) -> str:
    return name.replace(".", _DOT)


def _device_name(name: str) -> str:
    return name.replace(_DOT, ".")


def _tool_param(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": _wire_name(tool.name),
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


class OpenAICPU(CPU):
    """A model behind an OpenAI-compatible Chat Completions API."""

    capabilities = Capabilities(
        grammar=False,
        json_schema=True,
        tools=True,
        streaming=True,
        batching=False,
        kv_state=False,
        exact_tokens=False,
    )

    def __init__(
        self,
        model: str,
        base_url: str | None,
        api_key: str | None,
        n_ctx: int | None = None,
        timeout: float = params.OPENAI_TIMEOUT_S,
        dialects: Path | None = None,
    ) -> None:
        self.model = model
        self.name = f"openai/{model}"
        self._configured_n_ctx = n_ctx
        self._n_ctx: int | None = None
        self.n_ctx_source = ""  # where n_ctx came from: the server, config or the default
        self._api_key = api_key
        self._ctx_lock = threading.Lock()
        try:
            self._client = openai.OpenAI(
                base_url=base_url,
                api_key=api_key or "sk-no-key",
                timeout=openai.Timeout(
                    timeout, connect=min(timeout, params.OPENAI_CONNECT_TIMEOUT_S)
                ),
                max_retries=params.OPENAI_MAX_RETRIES,
            )
        except openai.OpenAIError as exc:  # e.g. a base_url the client cannot parse
            raise BackendError(f"cannot use OpenAI-compatible server {base_url}: {exc}") from exc
        self.base_url = str(self._client.base_url).rstrip("/")
        self._dialects = dialects
        self._dialect_key = f"{self.base_url} {model}"
        entry = load_dialects(dialects).get(self._dialect_key, {})
        self.learned: set[str] = set(entry.get("adaptations", []))
        self._remembered_n_ctx: int | None = entry.get("n_ctx")

    # --- sizes ---------------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        """The context size: the server's word, else config, else the default (module note)."""
        with self._ctx_lock:
            if self._n_ctx is None:
                said = self._remembered_n_ctx
                if said is None:
                    found = ctxsize.discover(
                        self.base_url,
                        self.model,
                        self._api_key,
                        params.OPENAI_PROBE_TIMEOUT_S,
                    )
                    said = found[0] if found else 0
                    self._remembered_n_ctx = said
                    self._save()
                if said:
                    self._n_ctx, self.n_ctx_source = said, "server"
                elif self._configured_n_ctx is not None:
                    self._n_ctx, self.n_ctx_source = self._configured_n_ctx, "config"
                else:
                    self._n_ctx, self.n_ctx_source = params.OPENAI_DEFAULT_N_CTX, "default"
            return self._n_ctx

    def tokenize(self, text: str) -> list[int]:
        """Estimated tokens: one per `OPENAI_BYTES_PER_TOKEN` UTF-8 bytes (see the module note)."""
        data = text.encode("utf-8")
        step = params.OPENAI_BYTES_PER_TOKEN
        return [int.from_bytes(data[i : i + step], "little") for i in range(0, len(data), step)]

    def count_tokens(self, text: str) -> int:
        return math.ceil(len(text.encode("utf-8")) / params.OPENAI_BYTES_PER_TOKEN)

    def count_messages(self, messages: list[Message]) -> int:
        total = params.OPENAI_REPLY_PRIMING_TOKENS
        for message in messages:
            total += params.OPENAI_MESSAGE_OVERHEAD_TOKENS
            total += self.count_tokens(_message_text(message))
        return total

    # --- generation ----------------------------------------------------------------------------

    def generate(self, request: GenRequest) -> Iterator[Chunk]:
        kwargs = self._request_kwargs(request)
        stream = self._open_stream(kwargs)
        try:
            yield from self._read_stream(stream, request)
        finally:
            stream.close()

    def _request_kwargs(self, request: GenRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.tools:
            kwargs["tools"] = [_tool_param(tool) for tool in request.tools]
            if request.tool_choice == "required" and len(request.tools) == 1:
                # the named form forces the one call on every server that knows tools
                # (llama-cpp-python's ignores "required" and answers in text)
                name = _wire_name(request.tools[0].name)
                kwargs["tool_choice"] = {"type": "function", "function": {"name": name}}
            elif request.tool_choice is not None:
                kwargs["tool_choice"] = request.tool_choice
        if request.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.json_schema, "strict": True},
            }
        return kwargs

    def _open_stream(self, kwargs: dict[str, Any]) -> Stream[ChatCompletionChunk]:
        """Start the request, adapting it once to each known server dialect that refuses it
        (in the form already learned for this server, when there is one)."""
        written = kwargs
        for known in sorted(self.learned):
            kwargs = adapt(kwargs, known)
        try:
            while True:
                try:
                    return self._create(kwargs)
                except openai.APIStatusError as exc:
                    adaptation = adaptation_for(kwargs, exc)
                    if adaptation is None:
                        if kwargs is written or not self.learned:
                            raise
                        self._remember(set())  # the server changed: ask as written, relearn
                        kwargs = written
                        continue
                    self._remember(self.learned | {adaptation})
                    kwargs = adapt(kwargs, adaptation)
        except LlmosError:
            raise
        except Exception as exc:
            self._raise_mapped(exc)

    def _remember(self, learned: set[str]) -> None:
        self.learned = learned
        self._save()

    def _save(self) -> None:
        if self._dialects is None:
            return
        entry: dict[str, Any] = {}
        if self.learned:
            entry["adaptations"] = sorted(self.learned)
        if self._remembered_n_ctx is not None:
            entry["n_ctx"] = self._remembered_n_ctx
        save_dialect(self._dialects, self._dialect_key, entry)

    def _forget_n_ctx(self) -> None:
        """The server refused a prompt as too long: the size it said may be stale."""
        if self._remembered_n_ctx is not None:
            self._remembered_n_ctx = None
            self._save()

    def _create(self, kwargs: dict[str, Any]) -> Stream[ChatCompletionChunk]:
        result = self._client.chat.completions.create(**kwargs)
        if not isinstance(result, Stream):
            raise BackendError(f"server {self.base_url} did not stream its reply")
        return cast(Stream[ChatCompletionChunk], result)

    def _read_stream(
        self, stream: Stream[ChatCompletionChunk], request: GenRequest
    ) -> Iterator[Chunk]:
        texts: list[str] = []
        calls: dict[int, _PendingToolCall] = {}
        finish_reason: str | None = None
        usage: Any = None
        seen = False
        try:
            for event in stream:
                seen = True
                if getattr(event, "usage", None) is not None:
                    usage = event.usage
                for choice in getattr(event, "choices", None) or []:
                    delta = choice.delta
                    if delta is not None:
                        if delta.content:
                            texts.append(delta.content)
                            yield Chunk(text=delta.content)
                        pieces = delta.tool_calls or []
                        for position, piece in enumerate(pieces):
                            index = piece.index if piece.index is not None else position
                            function = piece.function
                            calls.setdefault(index, _PendingToolCall()).add(
                                piece.id,
                                function.name if function is not None else None,
                                function.arguments if function is not None else None,
                            )
                        legacy = getattr(delta, "function_call", None)
                        if not pieces and legacy is not None:  # pre-`tools` servers
                            calls.setdefault(0, _PendingToolCall()).add(
                                None, legacy.name, legacy.arguments
                            )
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
        except LlmosError:
            raise
        except Exception as exc:
            self._raise_mapped(exc, mid_stream=True)
        if not seen:
            # Some servers (llama-cpp-python) answer 200 with an empty stream when the request
            # fails after streaming began, e.g. a prompt longer than the context. The same
            # request unstreamed reports the real error, or else gives the reply.
            yield from self._complete_unstreamed(request)
            return

        tool_calls = [
            ToolCall(
                id=pending.id or f"call_{index}",
                name=_device_name(pending.name),
                arguments="".join(pending.arguments),
            )
            for index, pending in sorted(calls.items())
        ]
        reason = _FINISH_ALIASES.get(finish_reason or "", finish_reason) or "stop"
        if tool_calls and reason == "stop":
            reason = "tool_calls"
        prompt_tokens = getattr(usage, "prompt_tokens", None) or 0
        completion_tokens = getattr(usage, "completion_tokens", None) or 0
        if not prompt_tokens:
            prompt_tokens = self.count_messages(request.messages)
        if not completion_tokens:
            produced = "".join(texts) + "".join(c.name + c.arguments for c in tool_calls)
            completion_tokens = self.count_tokens(produced)
        yield Chunk(
            done=True,
            finish_reason=reason,
            tool_calls=tool_calls,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=int(completion_tokens),
        )

    def _complete_unstreamed(self, request: GenRequest) -> Iterator[Chunk]:
        kwargs = self._request_kwargs(request)
        kwargs.pop("stream_options")
        kwargs["stream"] = False
        try:
            reply: Any = self._client.chat.completions.create(**kwargs)
            choice = reply.choices[0] if reply.choices else None
        except LlmosError:
            raise
        except Exception as exc:
            self._raise_mapped(exc)
        if choice is None:
            raise BackendError(f"server {self.base_url} ended the stream without a reply")
        message = choice.message
        text = message.content or ""
        if text:
            yield Chunk(text=text)
        tool_calls = [
            ToolCall(
                id=call.id or f"call_{i}",
                name=_device_name(call.function.name),
                arguments=call.function.arguments or "",
            )
            for i, call in enumerate(message.tool_calls or [])
            if getattr(call, "function", None) is not None
        ]
        reason = _FINISH_ALIASES.get(choice.finish_reason or "", choice.finish_reason) or "stop"
        usage = reply.usage
        produced = text + "".join(c.name + c.arguments for c in tool_calls)
        yield Chunk(
            done=True,
            finish_reason="tool_calls" if tool_calls and reason == "stop" else reason,
            tool_calls=tool_calls,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0)
            or self.count_messages(request.messages),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0)
            or self.count_tokens(produced),
        )

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["base_url"] = self.base_url
        return info

    def close(self) -> None:
        with contextlib.suppress(Exception):  # best effort: nothing useful to report
            self._client.close()

    # --- errors --------------------------------------------------------------------------------

    def _raise_mapped(self, exc: Exception, *, mid_stream: bool = False) -> NoReturn:
        """Turn a client, transport or decoding exception into a one-line llmos error."""
        url = self.base_url
        if isinstance(exc, openai.APITimeoutError):
            raise BackendError(
                f"cannot reach OpenAI-compatible server at {url}: timed out"
            ) from exc
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            reason = _one_line(str(cause) if cause is not None and str(cause) else exc.message)
            where = "lost the connection to" if mid_stream else "cannot reach"
            raise BackendError(f"{where} OpenAI-compatible server at {url}: {reason}") from exc
        if isinstance(exc, openai.APIStatusError):
            message = status_message(exc)
            if is_context_error(exc.status_code, message, exc.body):
                self._forget_n_ctx()
                raise ContextOverflowError(
                    f"server {url} refused the prompt as too long for its context: "
                    f"{_one_line(message)}"
                ) from exc
            raise BackendError(
                f"server {url} answered {exc.status_code}: {_one_line(message)}"
            ) from exc
        if isinstance(exc, openai.APIError):  # an error event inside the SSE stream
            message = exc.message
            if any(marker in message.lower() for marker in CONTEXT_MARKERS):
                self._forget_n_ctx()
                raise ContextOverflowError(
                    f"server {url} refused the prompt as too long for its context: "
                    f"{_one_line(message)}"
                ) from exc
            raise BackendError(f"server {url} reported an error: {_one_line(message)}") from exc
        detail = _one_line(f"{type(exc).__name__}: {exc}")
        raise BackendError(f"malformed reply from server {url}: {detail}") from exc


def _message_text(message: Message) -> str:
    """The text of a message that takes context: content, tool-call names and arguments."""
    parts: list[str] = [str(message.get("role", ""))]
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
    for call in message.get("tool_calls") or []:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        parts.append(str(function.get("name", "")))
        parts.append(str(function.get("arguments", "")))
    if message.get("name"):
        parts.append(str(message["name"]))
    return " ".join(p for p in parts if p)
