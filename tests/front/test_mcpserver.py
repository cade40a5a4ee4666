"""`llmos mcp`: installed programs served as MCP tools, driven by the official MCP client.

llmos as a server is spawned as `python -c "from llmos.front.mcpserver import serve_stdio; ..."`
with its own LLMOS_HOME; each tool call runs the program as a process of the server's kernel,
with its devices.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from llmos.kernel import program as program_mod
from llmos.store.log import Log

REPO = Path(__file__).resolve().parents[2]


def _descendants(root: int) -> set[int]:
    """Live (not zombie) descendants of `root`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _assert_no_new_children(before: set[int]) -> None:
    deadline = time.monotonic() + 5
    while True:
        left = _descendants(os.getpid()) - before
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"server processes left behind: {sorted(left)}"


@pytest.fixture
def no_orphans() -> Iterator[None]:
    before = _descendants(os.getpid())
    yield
    _assert_no_new_children(before)


# --- llmos as an MCP server -------------------------------------------------------------------

PROGRAM = """\
---
name: shout
description: Repeat the text in capitals.
config:
  temperature: 0
  maxOutputTokens: 8
input:
  schema:
    text: string, what to repeat
---
Repeat in capitals: {{text}}
"""


@pytest.fixture
def llmos_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "programs").mkdir(parents=True)
    (home / "programs" / "shout.prompt").write_text(PROGRAM)
    (home / "programs" / "notes.md").write_text("Summarise the text in one line.\n")
    return home


def _llmos_server(home: Path) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOS_", "OPENAI_"))}
    env["LLMOS_HOME"] = str(home)
    return StdioServerParameters(
        command=sys.executable,
        args=["-c", "from llmos.front.mcpserver import serve_stdio; serve_stdio()"],
        env=env,
        cwd=str(home),
    )


async def _with_llmos(home: Path, calls: list[tuple[str, dict[str, Any]]]) -> tuple[Any, list[Any]]:
    async with (
        stdio_client(_llmos_server(home)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await asyncio.wait_for(session.initialize(), 60)
        tools = await asyncio.wait_for(session.list_tools(), 60)
        results = [
            await asyncio.wait_for(session.call_tool(name, args), 240) for name, args in calls
        ]
        return tools, results


def test_llmos_serves_programs_as_tools(llmos_home: Path, no_orphans: None) -> None:
    tools, results = asyncio.run(
        _with_llmos(
            llmos_home,
            [("shout", {"text": 5}), ("shout", {}), ("notes", {"bogus": "x"})],
        )
    )
    by_name = {t.name: t for t in tools.tools}
    assert set(by_name) == {"shout", "notes"}
    assert by_name["shout"].description == "Repeat the text in capitals."
    shout = program_mod.load(llmos_home / "programs" / "shout.prompt")
    assert shout.input_schema is not None and "text" in shout.input_schema["properties"]
    assert by_name["shout"].input_schema == shout.input_schema
    assert by_name["notes"].input_schema == {
        "type": "object",
        "properties": {"input": {"type": "string"}},
    }
    for result in results:
        assert result.is_error
        assert len(result.content) == 1 and "\n" not in result.content[0].text
    assert "text" in results[0].content[0].text
    assert "bogus" in results[2].content[0].text


def test_an_unknown_tool_is_a_json_rpc_error(llmos_home: Path, no_orphans: None) -> None:
    """The MCP specification: calling a tool that does not exist is Invalid params (-32602),
    not a tool result; the server keeps serving after it."""

    async def session_calls() -> tuple[MCPError, Any]:
        async with (
            stdio_client(_llmos_server(llmos_home)) as (read, write),
            ClientSession(read, write) as session,
        ):
            await asyncio.wait_for(session.initialize(), 60)
            with pytest.raises(MCPError) as raised:
                await asyncio.wait_for(session.call_tool("nope", {}), 60)
            after = await asyncio.wait_for(session.call_tool("shout", {}), 60)
            return raised.value, after

    error, after = asyncio.run(session_calls())
    assert error.code == INVALID_PARAMS
    assert "no program named 'nope'" in str(error)
    assert after.is_error and "text" in after.content[0].text


@pytest.mark.slow
def test_llmos_tool_call_runs_the_program(llmos_home: Path, no_orphans: None) -> None:
    (llmos_home / "programs" / "person.prompt").write_text(
        (REPO / "tests" / "data" / "cli" / "person.prompt").read_text()
    )
    _, results = asyncio.run(
        _with_llmos(
            llmos_home,
            [("shout", {"text": "hello"}), ("person", {"input": "Ada is 36 years old."})],
        )
    )
    text, person = results
    assert not text.is_error, text.content
    assert text.content[0].text.strip()
    assert not person.is_error, person.content
    parsed = json.loads(person.content[0].text)
    assert set(parsed) == {"name", "age"}
    assert person.structured_content == parsed


@pytest.mark.slow
def test_a_tool_using_program_runs_with_its_devices(llmos_home: Path, no_orphans: None) -> None:
    """Served over MCP, a program gets its devices through the kernel, as under `llmos run`:
    the arithmetic example calls `calc` and answers with the exact product."""
    (llmos_home / "programs" / "arithmetic.prompt").write_text(
        (REPO / "examples" / "arithmetic.prompt").read_text()
    )
    _, (result,) = asyncio.run(
        _with_llmos(llmos_home, [("arithmetic", {"input": "What is 1234 * 5678?"})])
    )
    assert not result.is_error, result.content
    assert "7006652" in result.content[0].text
    with Log.open(llmos_home / "logs.db") as log:
        (run,) = log.list_runs(program="arithmetic")
        record = log.get_run(run.id)
    assert record.owner == pwd.getpwuid(os.geteuid()).pw_name and record.status == "ok"
    calls = [s for s in record.extra["steps"] if s["kind"] == "syscall"]
    assert calls and calls[0]["device"] == "calc" and calls[0]["ok"]


# --- Resources, prompts, list changes, error texts --------------------------------------------


async def _session_run(home: Path, body: Any, seen: list[Any] | None = None) -> Any:
    async def on_message(message: Any) -> None:
        if seen is not None:
            seen.append(message)

    async with (
        stdio_client(_llmos_server(home)) as (read, write),
        ClientSession(read, write, message_handler=on_message) as session,
    ):
        init = await asyncio.wait_for(session.initialize(), 60)
        return await body(session, init)


def test_resources_and_prompts_are_the_programs(llmos_home: Path, no_orphans: None) -> None:
    async def body(session: ClientSession, init: Any) -> dict[str, Any]:
        return {
            "caps": init.capabilities,
            "resources": await session.list_resources(),
            "source": await session.read_resource("llmos://programs/shout"),
            "prompts": await session.list_prompts(),
            "prompt": await session.get_prompt("shout", {"text": "hi there"}),
        }

    got = asyncio.run(_session_run(llmos_home, body))
    caps = got["caps"]
    assert caps.tools.list_changed and caps.prompts.list_changed
    assert caps.resources.list_changed
    resources = {r.name: r for r in got["resources"].resources}
    assert {str(r.uri) for r in resources.values()} == {
        "llmos://programs/shout",
        "llmos://programs/notes",
    }
    assert resources["shout"].description == "Repeat the text in capitals."
    assert resources["notes"].mime_type == "text/markdown"
    assert str(llmos_home) not in got["resources"].model_dump_json()
    (contents,) = got["source"].contents
    assert contents.text == PROGRAM and contents.mime_type == "text/plain"
    prompts = {p.name: p for p in got["prompts"].prompts}
    (argument,) = prompts["shout"].arguments
    assert argument.name == "text" and argument.required
    assert argument.description == "what to repeat"
    assert [a.name for a in prompts["notes"].arguments] == ["input"]
    messages = got["prompt"].messages
    assert messages[-1].role == "user"
    assert "Repeat in capitals: hi there" in messages[-1].content.text


def test_error_texts_show_no_server_paths(llmos_home: Path, no_orphans: None) -> None:
    async def body(session: ClientSession, init: Any) -> list[str]:
        texts: list[str] = []
        for call in (
            lambda: session.read_resource("llmos://programs/nope"),
            lambda: session.get_prompt("shout", {"nope": "x"}),
            lambda: session.get_prompt("nope", {}),
        ):
            with pytest.raises(MCPError) as info:
                await call()
            texts.append(f"{info.value.error.code} {info.value.error.message}")
        bad = await session.call_tool("shout", {"nope": "x"})
        assert bad.is_error
        texts.append(bad.content[0].text)
        return texts

    missing, bad_arg, no_prompt, bad_call = asyncio.run(_session_run(llmos_home, body))
    for text in (missing, bad_arg, no_prompt, bad_call):
        assert str(llmos_home) not in text and "/programs/" not in text.replace(
            "llmos://programs/", ""
        ), text
    assert missing == "-32002 Unknown resource: no program named 'nope'"
    assert bad_arg == f"{INVALID_PARAMS} shout.prompt: missing required input 'text'"
    assert no_prompt == f"{INVALID_PARAMS} Unknown prompt: no program named 'nope'"
    assert bad_call.startswith("shout.prompt: ") and "input" in bad_call


def test_a_new_program_is_announced(llmos_home: Path, no_orphans: None) -> None:
    seen: list[Any] = []

    async def body(session: ClientSession, init: Any) -> list[str]:
        before = {t.name for t in (await session.list_tools()).tools}
        assert "echo" not in before
        (llmos_home / "programs" / "echo.md").write_text("Say the text back.\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            kinds = {type(m).__name__ for m in seen}
            if {"ToolListChangedNotification", "PromptListChangedNotification"} <= kinds:
                break
            await asyncio.sleep(0.1)
        return [t.name for t in (await session.list_tools()).tools]

    names = asyncio.run(_session_run(llmos_home, body, seen))
    assert "echo" in names
    kinds = {type(m).__name__ for m in seen}
    assert {
        "ToolListChangedNotification",
        "PromptListChangedNotification",
        "ResourceListChangedNotification",
    } <= kinds, kinds
