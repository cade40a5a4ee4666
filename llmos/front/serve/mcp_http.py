"""MCP over HTTP on `llmos serve`: the programs-as-tools server, at `/mcp`, per user.

The same MCP server as `llmos mcp` (`llmos.front.mcpserver.build_server`), served as MCP
streamable HTTP in stateless mode (each request stands alone: no session a second user could
ride). Every request is authenticated like the REST API (`Authorization: Bearer`; otherwise
401 and nothing runs). The tools are the programs that user sees (their own installed programs,
then the system's: the kernel API's `programs.list` / `installed`), and each call runs the
program as a process of that user on the service's one kernel, with its own devices, scheduled,
budgeted and logged with everyone else's.

Invariants: the caller of a tool call is the one whose token came with that HTTP request (read
from the request's scope, never from the MCP payload); a program that another user installed
does not exist for this one.

What this does not do: sessions (stateless), resumable MCP streams, resources or prompts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from llmos.errors import AccessError, LlmosError, NoSuchProgramError
from llmos.front import mcpserver
from llmos.front.serve import auth, errors
from llmos.kernel import api
from llmos.kernel.core import Kernel
from llmos.kernel.program import Program

CALLER_KEY = "llmos_caller"  # where the authenticated caller waits in the ASGI scope's state


def _caller(ctx: Any) -> api.Caller:
    request = getattr(ctx, "request", None)
    scope = getattr(request, "scope", None)
    caller = (scope or {}).get("state", {}).get(CALLER_KEY)
    if not isinstance(caller, api.Caller):
        raise AccessError("no authenticated caller for this MCP request")
    return caller


def catalog(kernel: Kernel) -> mcpserver.Catalog:
    def programs(ctx: Any) -> list[Program]:
        caller = _caller(ctx)
        names = [p["name"] for p in api.call(kernel, caller, "programs.list", {})["programs"]]
        found = []
        for name in names:
            try:
                found.append(api.installed(kernel, caller, name))
            except LlmosError:
                continue  # removed meanwhile, or no longer loads: not offered
        return found

    def find(ctx: Any, name: str) -> Program | None:
        try:
            return api.installed(kernel, _caller(ctx), name)
        except NoSuchProgramError:
            return None

    return mcpserver.Catalog(programs=programs, find=find, caller=_caller)


class MCPEndpoint:
    """The ASGI app at /mcp: authenticate, then hand the request to the MCP transport."""

    def __init__(self, kernel: Kernel) -> None:
        self.manager = StreamableHTTPSessionManager(
            app=mcpserver.build_server(kernel, catalog(kernel)),
            stateless=True,
            json_response=True,
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            user = auth.user_of(request)
        except LlmosError as exc:
            await errors.response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER_KEY] = api.Caller(user.name, user.admin)
        await self.manager.handle_request(scope, receive, send)
