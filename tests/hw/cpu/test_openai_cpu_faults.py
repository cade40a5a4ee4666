"""OpenAICPU against scripted fake servers: faults, the request it sends, and what it adapts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmos import params
from llmos.errors import BackendError, ContextOverflowError
from llmos.hw.cpu.base import Chunk, ToolSpec, collect
from llmos.hw.cpu.openai import OpenAICPU
from tests.hw.cpu.openai_harness import WEATHER, ask
from tests.servers import closed_port_url, failing_server, sse_server

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
