"""The OpenAI-compatible endpoint of a live `llmos serve`, through the official `openai` client
(sync and async): models, completions streaming and not, usage, JSON output, embeddings,
errors, ownership and what a disconnect does."""

from __future__ import annotations

import asyncio
import json
import time

import httpx2
import numpy as np
import openai
import pytest

from tests.front.serve.conftest import Server

TEXT = "The meeting moved from Monday to Thursday at 3pm because the projector broke."


def _client(server: Server, user: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.tokens[user], max_retries=0)


def test_models_lists_the_callers_programs_and_the_cpus(server: Server) -> None:
    ids = [m.id for m in _client(server).models.list().data]
    assert "program/summarize" in ids and "embedded" in ids
    # bob has no program of his own: alice's is not his to see
    bob_ids = [m.id for m in _client(server, "bob").models.list().data]
    assert "program/summarize" not in bob_ids and "embedded" in bob_ids


def test_a_program_completion_is_a_process_of_the_caller(server: Server) -> None:
    c = _client(server)
    r = c.chat.completions.create(
        model="program/summarize", messages=[{"role": "user", "content": TEXT}]
    )
    text = r.choices[0].message.content or ""
    assert text.strip() and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    pid = int(r.id.split("-")[1])
    with server.client("alice") as http:
        proc = http.get(f"/api/processes/{pid}").json()["process"]
    assert proc["owner"] == "alice" and proc["program"] == "summarize"
    assert proc["exit_status"] == "ok"
    with server.client("bob") as http:
        assert http.get(f"/api/processes/{pid}").status_code == 404


def test_streaming_gives_the_same_text_and_usage_last(server: Server) -> None:
    c = _client(server)
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = c.chat.completions.create(
        model="embedded",
        messages=messages,
        temperature=0,
        max_tokens=24,  # type: ignore[arg-type]
    )
    stream = c.chat.completions.create(
        model="embedded",
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])


def test_max_tokens_bounds_the_completion(server: Server) -> None:
    r = _client(server).chat.completions.create(
        model="embedded",
        messages=[{"role": "user", "content": "Write a long story about the sea."}],
        max_tokens=5,
    )
    assert r.usage is not None and r.usage.completion_tokens <= 5
    assert r.choices[0].finish_reason == "length"


def test_response_format_gives_json(server: Server) -> None:
    c = _client(server)
    r = c.chat.completions.create(
        model="embedded",
        messages=[{"role": "user", "content": "A JSON object with a city and a country."}],
        response_format={"type": "json_object"},
        max_tokens=80,
    )
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    r = c.chat.completions.create(
        model="embedded",
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
        max_tokens=80,
    )
    value = json.loads(r.choices[0].message.content or "")
    assert isinstance(value["name"], str) and isinstance(value["age"], int)


def test_embeddings(server: Server) -> None:
    c = _client(server)
    model = next(m.id for m in c.models.list().data if m.id.startswith("wordllama"))
    e = c.embeddings.create(model=model, input=["a small cat", "a little kitten", "a tax form"])
    vectors = np.array([d.embedding for d in e.data])
    assert vectors.shape == (3, 256)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2]
    assert e.usage.prompt_tokens > 0
    floats = c.embeddings.create(model=model, input="a small cat", encoding_format="float")
    assert np.allclose(floats.data[0].embedding, vectors[0], atol=1e-6)


def test_errors_are_the_clients_typed_errors(server: Server) -> None:
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="llmos_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    c = _client(server, "bob")
    with pytest.raises(openai.NotFoundError, match="no installed program named 'summarize'"):
        c.chat.completions.create(
            model="program/summarize", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.UnprocessableEntityError, match="not one this service offers"):
        c.chat.completions.create(
            model="/tmp/model.gguf", messages=[{"role": "user", "content": "x"}]
        )
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.UnprocessableEntityError, match="names no declared function"):
        c.chat.completions.create(
            model="embedded",
            messages=[{"role": "user", "content": "x"}],
            tools=[tool],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "g"}},
        )
    with pytest.raises(openai.UnprocessableEntityError, match="needs tools"):
        c.chat.completions.create(
            model="embedded", messages=[{"role": "user", "content": "x"}], tool_choice="required"
        )


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_client_tools_round_trip(server: Server) -> None:
    """Function calling as any OpenAI client does it: the model calls the client's function
    (certain with `tool_choice` required: the embedded CPU writes it by grammar), the client
    runs it and sends the result back as a `tool` message, and the model answers with it in
    its context. Streamed, the call arrives as a `tool_calls` delta."""
    c = _client(server)
    ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
    r = c.chat.completions.create(
        model="embedded",
        messages=ask,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=64,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)
    pid = int(r.id.split("-")[1])
    with server.client("alice") as http:
        assert http.get(f"/api/processes/{pid}").json()["process"]["exit_status"] == "ok"

    follow = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 18 degrees (sentinel-7Q)."},
    ]
    answer = c.chat.completions.create(
        model="embedded",
        messages=follow,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_tokens=32,
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert not answer.choices[0].message.tool_calls
    pid = int(answer.id.split("-")[1])
    with server.client("alice") as http:
        run_id = http.get(f"/api/processes/{pid}").json()["process"]["run_id"]
        logged = http.get(f"/api/logs/{run_id}").json()["messages"]
    assert "sentinel-7Q" in json.dumps(logged)  # the result reached the CPU

    stream = c.chat.completions.create(
        model="embedded",
        messages=ask,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64,
        stream=True,
    )
    deltas, finish = [], None
    for chunk in stream:
        if chunk.choices:
            deltas += chunk.choices[0].delta.tool_calls or []
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [d.function.name for d in deltas if d.function] == ["get_weather"]


def test_async_clients_share_the_machine(server: Server) -> None:
    async def one(user: str, i: int) -> tuple[str, int]:
        client = openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key=server.tokens[user], max_retries=0
        )
        stream = await client.chat.completions.create(
            model="embedded",
            messages=[{"role": "user", "content": f"Count from {i} to {i + 5}."}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
        tokens = 0
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        await client.close()
        return user, tokens

    async def all_of() -> list[tuple[str, int]]:
        jobs = [one(u, i) for i, u in enumerate(["alice", "bob"] * 4)]
        return await asyncio.gather(*jobs)

    results = asyncio.run(all_of())
    assert len(results) == 8 and all(t > 0 for _, t in results)


def test_a_streaming_client_that_disconnects_kills_its_process(server: Server) -> None:
    headers = {"Authorization": f"Bearer {server.tokens['alice']}"}
    body = {
        "model": "embedded",
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}],
        "max_tokens": 2000,
        "stream": True,
    }
    pid = None
    with (
        httpx2.Client(base_url=server.url, headers=headers, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                pid = int(json.loads(line[6:])["id"].split("-")[1])
                if '"content": ""' not in line:
                    break  # hang up after the first real piece
    assert pid is not None
    with server.client("alice") as c:
        deadline = time.monotonic() + 30
        proc = c.get(f"/api/processes/{pid}").json()["process"]
        while proc["state"] != "exited" and time.monotonic() < deadline:
            time.sleep(0.2)
            proc = c.get(f"/api/processes/{pid}").json()["process"]
        assert proc["exit_status"] == "killed"
        assert proc["generated_tokens"] < 2000
