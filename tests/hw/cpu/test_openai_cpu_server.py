"""OpenAICPU against llama-cpp-python's real server (see conftest.py for what it does)."""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, cast

import jsonschema
import openai
import pytest

from llmos.errors import ContextOverflowError
from llmos.hw.cpu.base import Chunk, GenRequest, collect
from llmos.hw.cpu.openai import OpenAICPU
from tests.hw.cpu.openai_harness import ALIAS, WEATHER, ask

# --- the real server ---------------------------------------------------------------------------


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
