"""MCP over HTTP on a live `llmos serve`, driven by the official MCP client: each user sees
their own programs as tools, and a call runs as a process of that user."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from tests.front.serve.conftest import Server

ARITHMETIC = (Path(__file__).resolve().parents[3] / "examples" / "arithmetic.prompt").read_text()


async def _session(
    server: Server, user: str | None, calls: list[tuple[str, dict[str, Any]]]
) -> tuple[list[str], list[Any]]:
    headers = {"Authorization": f"Bearer {server.tokens[user]}"} if user else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=240) as http,
        streamable_http_client(f"{server.url}/mcp", http_client=http) as streams,
        ClientSession(streams[0], streams[1]) as session,
    ):
        await asyncio.wait_for(session.initialize(), 60)
        tools = await asyncio.wait_for(session.list_tools(), 60)
        results: list[Any] = []
        for name, args in calls:
            try:
                results.append(await asyncio.wait_for(session.call_tool(name, args), 240))
            except MCPError as exc:  # an unknown tool is a JSON-RPC error
                results.append(exc)
        return [t.name for t in tools.tools], results


def _unknown_tool(result: Any, name: str) -> bool:
    return (
        isinstance(result, MCPError)
        and result.code == INVALID_PARAMS
        and f"no program named '{name}'" in str(result)
    )


def test_tools_are_the_callers_programs_and_run_as_the_caller(server: Server) -> None:
    with server.client("alice") as c:
        assert c.put("/api/programs/arithmetic", json={"source": ARITHMETIC}).status_code == 200
    names, results = asyncio.run(
        _session(
            server,
            "alice",
            [("arithmetic", {"input": "What is 37 times 23?"}), ("nope", {})],
        )
    )
    assert "summarize" in names and "arithmetic" in names
    answer, missing = results
    assert not answer.is_error, answer.content
    assert "851" in answer.content[0].text
    assert _unknown_tool(missing, "nope")
    with server.client("alice") as c:
        procs = c.get("/api/processes", params={"all": True}).json()["processes"]
        mine = [p for p in procs if p["program"] == "arithmetic"]
        assert mine and all(p["owner"] == "alice" for p in mine)
        assert any(p["syscalls"] >= 1 for p in mine)  # calc ran through the kernel


def test_another_users_programs_do_not_exist_for_them(server: Server) -> None:
    names, results = asyncio.run(_session(server, "bob", [("summarize", {"input": "x"})]))
    assert "summarize" not in names
    assert _unknown_tool(results[0], "summarize")
    with server.client("bob") as c:
        procs = c.get("/api/processes", params={"all": True}).json()["processes"]
        assert not [p for p in procs if p["program"] == "summarize"]


def test_no_token_or_a_bad_token_is_401_and_runs_nothing(server: Server) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "summarize", "arguments": {"input": "x"}},
    }
    headers = {"Accept": "application/json, text/event-stream"}
    with server.client("root") as root:
        before = len(root.get("/api/processes", params={"all": True}).json()["processes"])
    for auth in ({}, {"Authorization": "Bearer llmos_wrong"}):
        r = httpx2.post(f"{server.url}/mcp", json=body, headers={**headers, **auth})
        assert r.status_code == 401 and r.json()["error"]["type"] == "auth"
    with server.client("root") as root:
        after = len(root.get("/api/processes", params={"all": True}).json()["processes"])
    assert after == before
