"""OpenAICPU against llama-cpp-python's real server, and against scripted fakes for faults.

What the real server (llama-cpp-python 0.3.36, SmolLM2-135M-Instruct, default chat format)
does, as these tests pin down:
- streams content deltas; accepts `stream_options` but sends no usage chunk, so the counts on
  the final chunk are OpenAICPU's estimates;
- answers a streamed prompt over its context with 200 and an empty stream (the unstreamed
  request gets 400 `context_length_exceeded`, which OpenAICPU asks for to find out);
- at temperature 0 two identical requests may differ (prefix-cache reuse), so no test
  compares replies;
- refuses `response_format: json_schema` (500, "Input should be 'text' or 'json_object'") but
  enforces `{"type": "json_object", "schema": ...}` by grammar, which OpenAICPU falls back to;
- with `tools` and the default `tool_choice` ("auto") the model answers in text: no tool calls;
  only a forced `tool_choice` makes the server emit (grammar-constrained) `tool_calls`, which it
  streams with the whole function name repeated in every piece.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, cast

import jsonschema
import openai
import pytest

from llmos import params
from llmos.errors import BackendError, ContextOverflowError
from llmos.hw.cpu.base import Chunk, GenRequest, ToolSpec, collect
from llmos.hw.cpu.openai import OpenAICPU

try:
    from tests.servers import (
        closed_port_url,
        embedded_model_path,
        failing_server,
        llama_server,
        sse_server,
    )
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from servers import (  # type: ignore[no-redef,import-not-found,unused-ignore]
        closed_port_url,
        embedded_model_path,
        failing_server,
        llama_server,
        sse_server,
    )

ALIAS = "smollm2"
WEATHER = ToolSpec(
    name="get_weather",
    description="The current weather in a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
    },
)


def ask(text: str, **kwargs: Any) -> GenRequest:
    return GenRequest(messages=[{"role": "user", "content": text}], **kwargs)


# --- the real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_url() -> Iterator[str]:
    with llama_server(embedded_model_path(), n_ctx=2048, alias=ALIAS) as url:
        yield url


@pytest.fixture
def cpu(llama_url: str) -> Iterator[OpenAICPU]:
    with OpenAICPU(ALIAS, llama_url, None, n_ctx=2048, timeout=60) as remote:
        assert isinstance(remote, OpenAICPU)
        yield remote


@pytest.mark.slow
def test_chat_answer_ends_with_one_done_chunk_and_counts(cpu: OpenAICPU) -> None:
    request = ask("Say hello to Ada in one short sentence.", max_tokens=24)
    chunks = list(cpu.generate(request))
    done = [c for c in chunks if c.done]
    assert len(done) == 1 and chunks[-1] is done[0]
    final = done[0]
    text = "".join(c.text for c in chunks)
    assert text.strip()
    assert final.finish_reason in {"stop", "length"}
    assert final.tool_calls == []
    # llama-cpp-python sends no usage chunk when streaming: the counts are the estimates.
    assert final.prompt_tokens == cpu.count_messages(request.messages) > 0
    assert final.completion_tokens == cpu.count_tokens(text) > 0


@pytest.mark.slow
def test_reply_streams_in_many_chunks_before_the_end(cpu: OpenAICPU) -> None:
    started = time.monotonic()
    arrivals: list[tuple[float, Chunk]] = []
    for chunk in cpu.generate(ask("Count from one to twenty in words.", max_tokens=48)):
        arrivals.append((time.monotonic() - started, chunk))
    text_chunks = [(t, c) for t, c in arrivals if c.text]
    assert len(text_chunks) > 1
    assert not arrivals[0][1].done  # the first thing to arrive is text, not the end
    first_at, end_at = text_chunks[0][0], arrivals[-1][0]
    assert arrivals[-1][1].done
    assert first_at < end_at


SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
    },
    {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}},
        "required": ["colour"],
    },
    {
        "type": "object",
        "properties": {
            "numbers": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
            "ok": {"type": "boolean"},
        },
        "required": ["numbers", "ok"],
    },
]


@pytest.mark.slow
@pytest.mark.parametrize("schema", SCHEMAS, ids=["person", "enum", "array"])
def test_json_schema_reply_validates(cpu: OpenAICPU, schema: dict[str, Any]) -> None:
    request = ask("Reply with JSON about anything.", max_tokens=120, json_schema=schema)
    text, final = collect(cpu.generate(request))
    assert final.finish_reason == "stop", text
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.slow
def test_a_refused_json_schema_is_learned_once_per_server(llama_url: str, tmp_path: Path) -> None:
    # llama-cpp-python's server refuses `json_schema`: the first CPU learns that (two failed
    # requests inside the client's retry, then the json_object form); a later CPU, as the
    # next run would make, reads it from the dialects file and asks in the right form at once.
    dialects = tmp_path / "openai-servers.json"
    schema = SCHEMAS[1]
    calls: list[str] = []

    def counted(remote: OpenAICPU) -> OpenAICPU:
        create = remote._create

        def spy(kwargs: dict[str, Any]) -> Any:
            calls.append(kwargs.get("response_format", {}).get("type", ""))
            return create(kwargs)

        remote._create = spy  # type: ignore[method-assign]
        return remote

    for _ in range(2):
        with OpenAICPU(ALIAS, llama_url, None, n_ctx=2048, timeout=60, dialects=dialects) as r:
            text, _ = collect(
                counted(r).generate(ask("Pick one.", max_tokens=40, json_schema=schema))
            )
            jsonschema.validate(json.loads(text), schema)
            assert r.learned == {"json_object"}
    assert calls == ["json_schema", "json_object", "json_object"]
    assert json.loads(dialects.read_text()) == {
        f"{llama_url} {ALIAS}": {"adaptations": ["json_object"]}
    }


@pytest.mark.slow
def test_tools_with_auto_choice_get_a_text_reply(cpu: OpenAICPU) -> None:
    """The server accepts `tools`, but this model does not call them unless forced."""
    request = ask("What is the weather in Paris?", max_tokens=16, tools=[WEATHER])
    text, final = collect(cpu.generate(request))
    assert text.strip()
    assert final.tool_calls == []
    assert final.finish_reason in {"stop", "length"}


@pytest.mark.slow
def test_required_tool_choice_with_one_tool_gets_a_call(cpu: OpenAICPU) -> None:
    """llama-cpp-python's server ignores tool_choice "required"; the named form is enforced."""
    request = ask("What is the weather in Paris?", tools=[WEATHER], tool_choice="required")
    _, final = collect(cpu.generate(request))
    assert final.finish_reason == "tool_calls"
    assert [c.name for c in final.tool_calls] == [WEATHER.name]
    json.loads(final.tool_calls[0].arguments)


class _ForcedToolCPU(OpenAICPU):
    """GenRequest has no `tool_choice`; force one to see the server's streamed tool calls."""

    def _request_kwargs(self, request: GenRequest) -> dict[str, Any]:
        kwargs = super()._request_kwargs(request)
        kwargs["tool_choice"] = {"type": "function", "function": {"name": WEATHER.name}}
        return kwargs


@pytest.mark.slow
def test_forced_tool_call_is_assembled_from_streamed_pieces(llama_url: str) -> None:
    with _ForcedToolCPU(ALIAS, llama_url, None) as cpu:
        chunks = list(cpu.generate(ask("What is the weather in Paris?", tools=[WEATHER])))
    final = chunks[-1]
    assert final.done and final.finish_reason == "tool_calls"
    assert [c.text for c in chunks if c.text] == []
    assert len(final.tool_calls) == 1
    call = final.tool_calls[0]
    assert call.name == "get_weather"  # not repeated although every piece repeats it
    assert call.id.startswith("call_")
    arguments = json.loads(call.arguments)
    jsonschema.validate(arguments, WEATHER.parameters)
    assert arguments["city"] == "Paris"


@pytest.mark.slow
def test_prompt_longer_than_the_server_context_overflows(cpu: OpenAICPU) -> None:
    request = ask("word " * 3000, max_tokens=8)
    with pytest.raises(ContextOverflowError) as info:
        list(cpu.generate(request))
    assert cpu.base_url in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_closing_the_generator_early_closes_the_stream(
    cpu: OpenAICPU, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[object] = []
    real_close = openai.Stream.close

    def spy(self: openai.Stream[Any]) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(openai.Stream, "close", spy)
    gen = cast(
        Generator[Chunk, None, None],
        cpu.generate(ask("Tell a long story about a dragon.", max_tokens=400)),
    )
    first = next(gen)
    assert first.text and not first.done
    gen.close()
    assert len(closed) == 1
    assert closed[0].response.is_closed  # type: ignore[attr-defined]
    with pytest.raises(StopIteration):
        next(gen)
    # The server is still usable afterwards.
    text, final = collect(cpu.generate(ask("Say yes.", max_tokens=4)))
    assert final.done and text


# --- faults ------------------------------------------------------------------------------------


def test_unreachable_server_is_a_backend_error_naming_the_url() -> None:
    url = closed_port_url()
    cpu = OpenAICPU("m", url, None, timeout=5)
    with pytest.raises(BackendError) as info:
        list(cpu.generate(ask("hi")))
    message = str(info.value)
    assert message.startswith(f"cannot reach OpenAI-compatible server at {url}: ")
    assert "\n" not in message


def test_server_error_status_is_a_backend_error_naming_status() -> None:
    with failing_server(500, message="out of cheese") as server:
        cpu = OpenAICPU("m", server.base_url, "key")
        with pytest.raises(BackendError) as info:
            list(cpu.generate(ask("hi")))
    assert str(info.value) == f"server {server.base_url} answered 500: out of cheese"
    # The client's own transport retries, and no more.
    posts = [p for p in server.paths if p.endswith("/chat/completions")]
    assert len(posts) == 1 + params.OPENAI_MAX_RETRIES


def test_unauthorised_is_a_backend_error_without_retry() -> None:
    with failing_server(401, message="bad key") as server:
        cpu = OpenAICPU("m", server.base_url, "wrong")
        with pytest.raises(BackendError, match=r"answered 401: bad key$"):
            list(cpu.generate(ask("hi")))
    assert len(server.requests) == 1


def test_context_length_error_is_a_context_overflow() -> None:
    message = "This model's maximum context length is 8192 tokens. However, you requested 9000."
    with failing_server(400, message=message) as server:
        cpu = OpenAICPU("m", server.base_url, None)
        with pytest.raises(ContextOverflowError) as info:
            list(cpu.generate(ask("hi")))
    assert server.base_url in str(info.value)
    assert "maximum context length is 8192" in str(info.value)
    assert len(server.requests) == 1  # no stream_options retry for a context error


def delta_event(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage_event(prompt: int, completion: int, choices: Any) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


@pytest.mark.parametrize("choices", [None, []], ids=["choices-null", "choices-empty"])
def test_usage_from_the_last_chunk_is_used(choices: Any) -> None:
    events: list[dict[str, Any] | str] = [
        delta_event({"role": "assistant", "content": "Hel"}),
        delta_event({"content": "lo"}),
        delta_event({}, finish="stop"),
        usage_event(11, 2, choices),
    ]
    with sse_server(events) as server:
        chunks = list(OpenAICPU("m", server.base_url, None).generate(ask("hi")))
    assert [c.text for c in chunks] == ["Hel", "lo", ""]
    assert chunks[-1] == Chunk(
        done=True, finish_reason="stop", prompt_tokens=11, completion_tokens=2
    )


def test_request_carries_the_openai_fields() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    request = ask(
        "hi",
        max_tokens=33,
        temperature=0.5,
        top_p=0.9,
        stop=["END"],
        seed=3,
        json_schema=schema,
        tools=[WEATHER],
    )
    with sse_server([delta_event({"content": "{}"}, finish="stop")]) as server:
        collect(OpenAICPU("gpt-x", server.base_url, None).generate(request))
    sent = server.requests[0]
    assert sent["model"] == "gpt-x"
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (33, 0.5, 0.9)
    assert (sent["stop"], sent["seed"]) == (["END"], 3)
    assert "top_k" not in sent
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": WEATHER.description,
                "parameters": WEATHER.parameters,
            },
        }
    ]


def test_stream_options_refused_is_retried_once_without_it() -> None:
    refusal = (400, "Unrecognized request argument supplied: stream_options")
    events: list[dict[str, Any] | str] = [delta_event({"content": "ok"}, finish="stop")]
    with sse_server(events, reject_first=refusal) as server:
        cpu = OpenAICPU("m", server.base_url, None)
        text, final = collect(cpu.generate(ask("hi")))
    assert text == "ok" and final.finish_reason == "stop"
    assert [("stream_options" in r) for r in server.requests] == [True, False]
    assert final.completion_tokens == cpu.count_tokens("ok")  # no usage: estimated


def test_json_schema_refused_is_retried_as_json_object_with_schema() -> None:
    schema = {"type": "object"}
    refusal = (500, "response_format.type: Input should be 'text' or 'json_object'")
    events: list[dict[str, Any] | str] = [delta_event({"content": "{}"}, finish="stop")]
    rejections = 1 + params.OPENAI_MAX_RETRIES  # the client retries a 500 by itself
    with sse_server(events, reject_first=refusal, reject_count=rejections) as server:
        collect(OpenAICPU("m", server.base_url, None).generate(ask("hi", json_schema=schema)))
    formats = [r["response_format"]["type"] for r in server.requests]
    # The openai client retries a 500 itself first; then OpenAICPU changes the format once.
    assert formats == ["json_schema"] * (1 + params.OPENAI_MAX_RETRIES) + ["json_object"]
    assert server.requests[-1]["response_format"] == {"type": "json_object", "schema": schema}
    assert "stream_options" in server.requests[-1]


def test_a_remembered_adaptation_the_server_refuses_is_forgotten(tmp_path: Path) -> None:
    schema = {"type": "object"}
    events: list[dict[str, Any] | str] = [delta_event({"content": "{}"}, finish="stop")]
    dialects = tmp_path / "openai-servers.json"
    refusal = (500, "unknown parameter: schema")  # the server changed: json_schema works now
    rejections = 1 + params.OPENAI_MAX_RETRIES  # the client retries a 500 by itself
    with sse_server(events, reject_first=refusal, reject_count=rejections) as server:
        dialects.write_text(json.dumps({f"{server.base_url} m": ["json_object"]}))
        cpu = OpenAICPU("m", server.base_url, None, dialects=dialects)
        text, _ = collect(cpu.generate(ask("hi", json_schema=schema)))
    assert text == "{}"
    formats = [r["response_format"]["type"] for r in server.requests]
    assert formats == ["json_object"] * rejections + ["json_schema"]
    assert cpu.learned == set() and json.loads(dialects.read_text()) == {}


def test_parallel_tool_calls_are_joined_by_index() -> None:
    def piece(index: int, **fields: Any) -> dict[str, Any]:
        function = {k: v for k, v in fields.items() if k in ("name", "arguments")}
        call: dict[str, Any] = {"index": index, "type": "function", "function": function}
        if "id" in fields:
            call["id"] = fields["id"]
        return delta_event({"tool_calls": [call]})

    events: list[dict[str, Any] | str] = [
        delta_event({"role": "assistant", "content": None}),
        piece(0, id="call_a", name="get_weather", arguments=""),
        piece(1, id="call_b", name="get_time", arguments='{"tz'),
        piece(0, arguments='{"city": '),
        piece(1, arguments='": "UTC"}'),
        piece(0, arguments='"Oslo"}'),
        delta_event({}, finish="tool_calls"),
        usage_event(20, 9, None),
    ]
    with sse_server(events) as server:
        chunks = list(OpenAICPU("m", server.base_url, None).generate(ask("hi", tools=[WEATHER])))
    assert len(chunks) == 1
    final = chunks[0]
    assert final.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in final.tool_calls] == [
        ("call_a", "get_weather", '{"city": "Oslo"}'),
        ("call_b", "get_time", '{"tz": "UTC"}'),
    ]
    assert (final.prompt_tokens, final.completion_tokens) == (20, 9)


def test_llama_cpp_python_repeated_tool_names_are_not_doubled() -> None:
    def piece(arguments: str) -> dict[str, Any]:
        call = {"index": 0, "id": "call__0", "type": "function"}
        fn = {"name": "get_weather", "arguments": arguments}
        return delta_event(
            {"function_call": fn, "tool_calls": [{**call, "function": fn}], "content": None}
        )

    events: list[dict[str, Any] | str] = [
        piece("{"),
        piece(' "city": '),
        piece('"Rome" }'),
        piece(""),
        delta_event({"tool_calls": None}, finish="tool_calls"),
    ]
    with sse_server(events) as server:
        _, final = collect(OpenAICPU("m", server.base_url, None).generate(ask("hi")))
    assert [(c.id, c.name, c.arguments) for c in final.tool_calls] == [
        ("call__0", "get_weather", '{ "city": "Rome" }')
    ]


def test_malformed_stream_is_a_backend_error() -> None:
    events: list[dict[str, Any] | str] = [delta_event({"content": "a"}), "{not json"]
    with sse_server(events) as server:
        gen = OpenAICPU("m", server.base_url, None).generate(ask("hi"))
        assert next(gen).text == "a"
        with pytest.raises(BackendError) as info:
            next(gen)
    assert str(info.value).startswith(f"malformed reply from server {server.base_url}: ")


def test_empty_stream_is_asked_again_unstreamed() -> None:
    """The fake answers the unstreamed retry with an SSE body, which is no JSON reply."""
    with sse_server([]) as server, pytest.raises(BackendError) as info:
        list(OpenAICPU("m", server.base_url, None).generate(ask("hi")))
    assert [r["stream"] for r in server.requests] == [True, False]
    assert "stream_options" not in server.requests[1]
    assert server.base_url in str(info.value)


def test_error_event_mid_stream_is_a_backend_error() -> None:
    events: list[dict[str, Any] | str] = [
        delta_event({"content": "partial"}),
        {"error": {"message": "model crashed", "type": "server_error"}},
    ]
    with sse_server(events) as server:
        gen = OpenAICPU("m", server.base_url, None).generate(ask("hi"))
        assert next(gen).text == "partial"
        with pytest.raises(BackendError) as info:
            next(gen)
    assert str(info.value) == f"server {server.base_url} reported an error: model crashed"


def test_estimates_and_describe() -> None:
    cpu = OpenAICPU("gpt-4o-mini", "http://127.0.0.1:9/v1", None)
    assert cpu.name == "openai/gpt-4o-mini"
    assert cpu.n_ctx == params.OPENAI_DEFAULT_N_CTX
    assert OpenAICPU("m", None, None, n_ctx=1000).n_ctx == 1000
    assert len(cpu.tokenize("abcdefgh")) == 2
    assert cpu.count_tokens("abcdefghi") == 3
    assert cpu.count_tokens("é" * 4) == 2  # bytes, not characters
    assert cpu.tokenize("") == []
    messages = [{"role": "user", "content": "abcd"}]  # "user abcd": 9 bytes, 3 tokens
    expected = params.OPENAI_REPLY_PRIMING_TOKENS + params.OPENAI_MESSAGE_OVERHEAD_TOKENS + 3
    assert cpu.count_messages(messages) == expected
    info = cpu.describe()
    assert info["base_url"] == "http://127.0.0.1:9/v1"
    assert info["name"] == "openai/gpt-4o-mini"
    assert set(info["capabilities"]) == {"json_schema", "tools", "streaming"}
    assert OpenAICPU("m", None, None).base_url == "https://api.openai.com/v1"


# --- the context size the server says ----------------------------------------------------------

LLAMA_CPP_PROPS = {"/props": {"default_generation_settings": {"n_ctx": 3072}, "total_slots": 1}}
VLLM_MODELS = {
    "/v1/models": {
        "object": "list",
        "data": [
            {"id": "other", "object": "model", "max_model_len": 999},
            {"id": "m", "object": "model", "max_model_len": 16384},
        ],
    }
}
OLLAMA_SHOW = {
    "/api/show": {
        "parameters": 'stop "<|im_end|>"',
        "model_info": {"general.architecture": "qwen2", "qwen2.context_length": 32768},
    }
}
OLLAMA_NUM_CTX = {
    "/api/show": {
        "parameters": "num_ctx 6144\ntemperature 0.7",
        "model_info": {"qwen2.context_length": 32768},
    }
}


@pytest.mark.parametrize(
    ("sizes", "expected", "asked"),
    [
        (LLAMA_CPP_PROPS, 3072, ["/props"]),
        (VLLM_MODELS, 16384, ["/props", "/v1/models"]),
        (OLLAMA_SHOW, 32768, ["/props", "/v1/models", "/api/show"]),
        (OLLAMA_NUM_CTX, 6144, ["/props", "/v1/models", "/api/show"]),
    ],
    ids=["llama.cpp", "vllm", "ollama", "ollama-num_ctx"],
)
def test_context_size_is_read_where_the_server_says_and_remembered(
    tmp_path: Path, sizes: dict[str, Any], expected: int, asked: list[str]
) -> None:
    dialects = tmp_path / "openai-servers.json"
    with sse_server([], sizes=sizes) as server:
        cpu = OpenAICPU("m", server.base_url, None, n_ctx=1000, dialects=dialects)
        assert cpu.n_ctx == expected and cpu.n_ctx_source == "server"
        assert cpu.n_ctx == expected
        assert server.probes == asked  # asked once
        again = OpenAICPU("m", server.base_url, None, n_ctx=1000, dialects=dialects)
        assert again.n_ctx == expected
        assert server.probes == asked  # the next run remembers it
    assert json.loads(dialects.read_text()) == {f"{server.base_url} m": {"n_ctx": expected}}


def test_a_server_that_says_nothing_leaves_config_then_the_default(tmp_path: Path) -> None:
    dialects = tmp_path / "openai-servers.json"
    with sse_server([]) as server:
        configured = OpenAICPU("m", server.base_url, None, n_ctx=1000, dialects=dialects)
        assert configured.n_ctx == 1000 and configured.n_ctx_source == "config"
        plain = OpenAICPU("m", server.base_url, None, dialects=dialects)
        assert plain.n_ctx == params.OPENAI_DEFAULT_N_CTX and plain.n_ctx_source == "default"
        assert server.probes == ["/props", "/v1/models", "/api/show"]  # once: "nothing" is kept
    assert json.loads(dialects.read_text()) == {f"{server.base_url} m": {"n_ctx": 0}}


def test_an_unreachable_server_is_not_asked_its_size() -> None:
    cpu = OpenAICPU("m", closed_port_url(), None, n_ctx=1234)
    assert cpu.n_ctx == 1234


def test_a_context_refusal_forgets_the_remembered_size(tmp_path: Path) -> None:
    message = "This model's maximum context length is 2048 tokens. However, you requested 9000."
    dialects = tmp_path / "openai-servers.json"
    with failing_server(400, message=message) as server:
        dialects.write_text(json.dumps({f"{server.base_url} m": {"n_ctx": 99999}}))
        cpu = OpenAICPU("m", server.base_url, None, dialects=dialects)
        assert cpu.n_ctx == 99999
        with pytest.raises(ContextOverflowError):
            list(cpu.generate(ask("hi")))
    assert json.loads(dialects.read_text()) == {}


@pytest.mark.slow
def test_llama_cpp_python_server_says_no_size_so_config_holds(
    llama_url: str, tmp_path: Path
) -> None:
    """llama-cpp-python's server has no /props and no max_model_len: the configured size."""
    dialects = tmp_path / "openai-servers.json"
    with OpenAICPU(ALIAS, llama_url, None, n_ctx=2048, timeout=60, dialects=dialects) as cpu:
        assert cpu.n_ctx == 2048 and cpu.n_ctx_source == "config"
    assert json.loads(dialects.read_text()) == {f"{llama_url} {ALIAS}": {"n_ctx": 0}}


# --- tool_choice "required" refused ------------------------------------------------------------

CLOCK = ToolSpec(
    name="clock", description="The time.", parameters={"type": "object", "properties": {}}
)


def test_a_refused_required_tool_choice_is_asked_as_auto_with_the_tools(tmp_path: Path) -> None:
    events: list[dict[str, Any] | str] = [delta_event({"content": "It is sunny."}, finish="stop")]
    refusal = (400, "tool_choice 'required' is not supported by this server")
    dialects = tmp_path / "openai-servers.json"
    with sse_server(events, reject_first=refusal) as server:
        cpu = OpenAICPU("m", server.base_url, None, dialects=dialects)
        request = ask("Weather?", tools=[WEATHER, CLOCK], tool_choice="required")
        text, final = collect(cpu.generate(request))
        again = OpenAICPU("m", server.base_url, None, dialects=dialects)
        collect(again.generate(request))
    assert text == "It is sunny." and final.tool_calls == []
    sent = server.requests
    assert [r["tool_choice"] for r in sent] == ["required", "auto", "auto"]
    assert all(len(r["tools"]) == 2 for r in sent)  # the tools are never dropped
    assert cpu.learned == {"tool_choice_auto"}
    entry = json.loads(dialects.read_text())[f"{server.base_url} m"]
    assert entry["adaptations"] == ["tool_choice_auto"]
