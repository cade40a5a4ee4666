"""One connection to an MCP server, and what a server says as llmos reports it.

A `Session` is one live connection, touched only on its supervisor's loop: the client once
initialized, the tools it listed, its `stop` and `broken` events (broken: the server wrote a
line that is not JSON-RPC, or closed the connection, with the reason in one line) and its
server's stderr, kept in a private temporary file, never on the caller's terminal.
`race` runs one awaitable (a call, the initialization, the listing) against the session
breaking, the session being stopped and a timeout; the loser is cancelled and its error read.

What a server says, as one line: an exception (`describe`; an MCP error by its message), a
line that is not JSON-RPC, a failed start's stderr (its telling line: the last one, or npm's
error code and reason for an `npx` server). A tool's result as a `DeviceResult`
(`to_device_result`): text contents joined with newlines (other content as a short
placeholder); `structuredContent`, when present, is the output instead; `isError` results are
failures carrying the text; output is truncated to the caller's limit.

Invariants: every message made here is one line, a server's own text in it cut to
`params.MCP_MESSAGE_MAX_CHARS`; a `ServerFailure`'s and a failed result's name the server.

What this module does not do: start, restart or stop a server, or own a thread or a loop
(`mcpsupervisor`); turn tools into devices (`mcp`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar, cast

import mcp_types
from mcp import ClientSession
from mcp.shared.exceptions import MCPError

from llmos import params
from llmos.hw.dev.base import DeviceResult, truncate_text

_T = TypeVar("_T")


@dataclass
class ToolInfo:
    name: str
    description: str
    input_schema: dict[str, Any]


class ServerFailure(Exception):
    """A server-level failure, with its one-line message (counts towards restarts)."""


class Session:
    """One live connection to a server; touched only on the supervisor's loop."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.client: ClientSession | None = None
        self.tools: list[ToolInfo] = []
        self.task: asyncio.Task[None] | None = None
        self.stop = asyncio.Event()
        self.broken = asyncio.Event()
        self.broken_reason = ""
        # Closed by the holder task when the session ends.
        self.stderr = cast(
            TextIO,
            tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace"),  # noqa: SIM115
        )

    def mark_broken(self, reason: str) -> None:
        if not self.broken.is_set():
            self.broken_reason = reason
            self.broken.set()

    @property
    def alive(self) -> bool:
        return not (self.broken.is_set() or self.stop.is_set()) and self.client is not None

    async def on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            self.mark_broken(
                f"server {self.server} wrote output that is not JSON-RPC"
                f" ({one_line(_describe_parse_error(message))})"
            )

    def stderr_tail(self) -> str:
        try:
            self.stderr.flush()
            size = self.stderr.seek(0, os.SEEK_END)
            self.stderr.seek(max(0, size - params.MCP_STDERR_TAIL_BYTES))
            text = self.stderr.read()
        except (OSError, ValueError):
            return ""
        return _telling_line([line.strip() for line in text.splitlines() if line.strip()])


def retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a finished future's exception as read: its outcome is reported elsewhere (as a
    `ServerFailure`), and asyncio's "exception was never retrieved" traceback is noise to a user."""
    if not future.cancelled():
        future.exception()


async def race(session: Session, awaitable: Awaitable[_T], timeout: float | None) -> _T:
    """`awaitable`'s result, unless the session breaks (ServerFailure), is stopped
    (ServerFailure) or `timeout` runs out (TimeoutError) first; the loser is cancelled."""
    task = asyncio.ensure_future(awaitable)
    task.add_done_callback(retrieved)  # cancelled with its holder, its error is still read
    broken = asyncio.ensure_future(session.broken.wait())
    stopped = asyncio.ensure_future(session.stop.wait())
    try:
        done, _ = await asyncio.wait(
            {task, broken, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        broken.cancel()
        stopped.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait({task}, timeout=1.0)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: the loser's error is not worth a warning
    if broken in done:
        raise ServerFailure(session.broken_reason)
    if stopped in done:
        raise ServerFailure(f"server {session.server} was stopped")
    raise TimeoutError


async def list_tools(client: ClientSession) -> list[ToolInfo]:
    tools: list[ToolInfo] = []
    cursor: str | None = None
    while True:
        page = await client.list_tools(
            params=mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        )
        tools.extend(
            ToolInfo(
                name=t.name,
                description=(t.description or "").strip(),
                input_schema=dict(t.input_schema or {}),
            )
            for t in page.tools
        )
        cursor = page.next_cursor
        if not cursor:
            return tools


def to_device_result(
    server: str, tool: str, result: mcp_types.CallToolResult, limit: int
) -> DeviceResult:
    text = "\n".join(_content_text(block) for block in result.content)
    if result.is_error:
        return DeviceResult.failure(
            f"server {server}, tool {tool}: {one_line(text) or 'the tool reported an error'}"
        )
    if result.structured_content is not None:
        encoded = json.dumps(result.structured_content, ensure_ascii=False)
        if len(encoded.encode("utf-8")) <= limit:
            return DeviceResult.success(result.structured_content)
        cut, _ = truncate_text(encoded, limit)
        return DeviceResult.success(cut, truncated=True)
    output, truncated = truncate_text(text, limit)
    return DeviceResult.success(output, truncated=truncated)


def _content_text(block: Any) -> str:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        kind = "image" if isinstance(block, mcp_types.ImageContent) else "audio"
        return f"[{kind} {block.mime_type}, {len(block.data) * 3 // 4} bytes]"
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        text = getattr(resource, "text", None)
        return text if isinstance(text, str) else f"[resource {resource.uri}]"
    uri = getattr(block, "uri", None)
    if uri is not None:
        return f"[resource link {uri}]"
    return f"[{getattr(block, 'type', 'unknown')} content]"


def leaf_exception(exc: BaseException) -> BaseException:
    """The first non-group exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    leaf = leaf_exception(exc)
    if isinstance(leaf, MCPError):
        return one_line(leaf.error.message)
    text = one_line(str(leaf))
    return f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__


def _describe_parse_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            first = errors()[0]
            bad = first.get("input")
            if isinstance(bad, str | bytes):
                shown = bad.decode("utf-8", "replace") if isinstance(bad, bytes) else bad
                return f"{first.get('msg', 'invalid')}: {shown[: params.MCP_INPUT_SHOWN_CHARS]!r}"
            return str(first.get("msg", exc))
    return str(exc)


_NPM_PREFIXES = ("npm error ", "npm ERR! ")


def _telling_line(lines: list[str]) -> str:
    """The stderr line that says why a server failed: npm's error code with the line that
    explains it (`npm error code E404: 404 Not Found - GET ...`: npm ends with a pointer to
    its debug log, which says nothing), else the last line."""
    bodies = [
        line[len(prefix) :].strip()
        for line in lines
        for prefix in _NPM_PREFIXES
        if line.startswith(prefix)
    ]
    if bodies:
        code = next((b for b in bodies if b.startswith("code ")), "")
        after = bodies[bodies.index(code) + 1 :] if code else bodies
        detail = next(
            (b for b in after if len(b.split()) > 1 and not b.startswith(params.NPM_LOG_NOTE)),
            "",
        )
        telling = ": ".join(part for part in (code, detail) if part)
        if telling:
            return f"npm error {telling}"
    return lines[-1] if lines else ""


def one_line(text: str) -> str:
    line = " ".join(text.split())
    if len(line) > params.MCP_MESSAGE_MAX_CHARS:
        line = line[: params.MCP_MESSAGE_MAX_CHARS - 3] + "..."
    return line
