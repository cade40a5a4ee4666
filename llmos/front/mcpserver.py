"""`llmos mcp`: llmos as an MCP server over stdio, each installed program one MCP tool.

Any MCP client (Claude Desktop, an IDE, another agent) can then run llmos programs:

- `tools/list`: every program `System.discover_programs()` finds (installed programs and
  project skills), discovered afresh on each request so newly installed programs appear. Tool
  name = program name, description = program description, `inputSchema` = the program's input
  JSON Schema, or `{"type": "object", "properties": {"input": {"type": "string"}}}` when it has
  none. A JSON program whose output schema is an object also declares it as `outputSchema`.
- `tools/call`: runs the program as a process of this server's kernel, through the kernel's
  API (`llmos.kernel.api.run`), on its own CPU (loaded once per process), with its devices,
  paging, auto-recall, shared segments and budget, journalled in the log like any run, owned by
  the OS user running `llmos mcp` (its uid's name, `llmos.kernel.security.principals`). The result
  is the reply text; for JSON programs the JSON text, plus the parsed value as
  `structuredContent` when it is an object.

Invariants:
- A call of an unknown tool (no such program for this caller) is a JSON-RPC error, Invalid
  params (-32602), as the MCP specification asks. Every other failure of a call (bad input, a
  model or backend error, a bug) is an MCP tool result with `isError: true` and a one-line
  message; the server never crashes on a call.
- The program runs in a worker thread, so the protocol loop keeps answering (pings,
  cancellations, other calls) while a model generates; the embedded CPU batches concurrent
  calls itself.
- Nothing but JSON-RPC reaches stdout: the SDK's `stdio_server` points fd 1 at stderr while it
  serves, so stray prints (llama.cpp's included) cannot corrupt the wire.

The tools, and as whom they run, come from a `Catalog`: over stdio the local one (above); on
`llmos serve` the HTTP mount's (`llmos.front.serve.mcp_http`: the bearer token's user, their
installed programs and the system's). Both use this one server.

What this module does not do: expose resources or prompts, stream partial output (MCP tool
results are whole), or authenticate (the HTTP mount does).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import mcp_types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, INVALID_REQUEST

from llmos import params
from llmos.errors import LlmosError
from llmos.kernel import api
from llmos.kernel.boot import System, boot
from llmos.kernel.core import Kernel
from llmos.kernel.program import Program
from llmos.kernel.security import principals

DEFAULT_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string"}},
}


def tool_for(program: Program) -> mcp_types.Tool:
    """The MCP tool that runs `program`."""
    output_schema = None
    if (
        program.json_mode
        and program.output_schema is not None
        and program.output_schema.get("type") == "object"
    ):
        output_schema = program.output_schema
    return mcp_types.Tool(
        name=program.name,
        description=program.description or f"Run the llmos program {program.name}.",
        input_schema=program.input_schema or DEFAULT_INPUT_SCHEMA,
        output_schema=output_schema,
    )


@dataclass(frozen=True)
class Catalog:
    """What a caller sees and as whom their calls run: the programs offered as tools, the one
    a tool name names (None if none), and the kernel caller. Each takes the request's MCP
    context, so a catalog can depend on who is asking (the HTTP mount's bearer token)."""

    programs: Callable[[Any], list[Program]]
    find: Callable[[Any, str], Program | None]
    caller: Callable[[Any], api.Caller]


def local_catalog(system: System) -> Catalog:
    """`llmos mcp` over stdio: installed programs and project skills, run as the OS user."""

    def find(ctx: Any, name: str) -> Program | None:
        return _find(system, name)

    return Catalog(
        programs=lambda ctx: system.discover_programs(),
        find=find,
        caller=lambda ctx: api.Caller.of(principals.current()),
    )


def call_program(
    kernel: Kernel, catalog: Catalog, ctx: Any, name: str, arguments: dict[str, Any]
) -> mcp_types.CallToolResult:
    """Run program `name` with `arguments` as the catalog's caller and make an MCP tool
    result; raises only `MCPError` (Invalid params) when there is no such program."""
    system = kernel.system
    try:
        caller = catalog.caller(ctx)
    except LlmosError as exc:
        return _error(str(exc))
    try:
        program = catalog.find(ctx, name)
    except LlmosError as exc:
        return _error(str(exc))
    except Exception as exc:
        return _error(f"cannot list programs: {exc}")
    if program is None:
        raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: no program named '{name}'")
    try:
        # Inputs are checked before the CPU is resolved, so a bad call costs no model load;
        # it is journalled as a failed run all the same.
        program.render(dict(arguments))
    except LlmosError as exc:
        with contextlib.suppress(LlmosError):
            system.log_failure(program.name, exc, str(program.path), caller.owner)
        return _error(str(exc))
    except Exception as exc:
        return _error(f"internal error: {type(exc).__name__}: {exc}")
    try:
        result = api.run(kernel, caller, program, dict(arguments), cpu=kernel.cpu(program.model))
    except LlmosError as exc:
        return _error(str(exc))
    except Exception as exc:  # a bug: still an answer, not a dead server
        return _error(f"internal error: {type(exc).__name__}: {exc}")
    if not program.json_mode:
        return mcp_types.CallToolResult(content=[_text(result.text)])
    structured = result.output if isinstance(result.output, dict) else None
    return mcp_types.CallToolResult(
        content=[_text(json.dumps(result.output, ensure_ascii=False))],
        structured_content=structured,
    )


def build_server(kernel: Kernel, catalog: Catalog | None = None) -> Server[Any]:
    """The low-level MCP server over the programs `catalog` offers (by default the local
    one: what `kernel`'s system discovers, run as the OS user)."""
    cat = catalog or local_catalog(kernel.system)

    async def list_tools(
        ctx: Any, request: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListToolsResult:
        try:
            programs = await anyio.to_thread.run_sync(cat.programs, ctx)
        except LlmosError as exc:
            raise MCPError(code=INVALID_REQUEST, message=" ".join(str(exc).split())) from None
        return mcp_types.ListToolsResult(tools=[tool_for(p) for p in programs])

    async def call_tool(
        ctx: Any, request: mcp_types.CallToolRequestParams
    ) -> mcp_types.CallToolResult:
        arguments = dict(request.arguments or {})
        return await anyio.to_thread.run_sync(
            lambda: call_program(kernel, cat, ctx, request.name, arguments),
            abandon_on_cancel=True,
        )

    return Server(
        params.MCP_SERVER_NAME,
        version=_version(),
        instructions="Each tool runs one installed llmos program on its model and returns"
        " its output.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def serve(kernel: Kernel) -> None:
    """Serve MCP over this process's stdin and stdout until the client closes stdin."""
    server = build_server(kernel)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def serve_stdio() -> None:
    """Entry point of `llmos mcp`: boot, then serve over stdio until stdin closes."""
    kernel = Kernel(boot())
    try:
        anyio.run(serve, kernel)
    finally:
        kernel.shutdown()
        kernel.system.close()


def _find(system: System, name: str) -> Program | None:
    for program in system.discover_programs():
        if program.name == name:
            return program
    return None


def _text(text: str) -> mcp_types.TextContent:
    return mcp_types.TextContent(type="text", text=text)


def _error(message: str) -> mcp_types.CallToolResult:
    return mcp_types.CallToolResult(content=[_text(" ".join(message.split()))], is_error=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(params.APP_NAME)
    except PackageNotFoundError:
        return "0"
