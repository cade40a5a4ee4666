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

- `resources/list`, `resources/read`: each program's source text as a resource
  `llmos://programs/<name>` (`text/markdown` for skills and Markdown programs, `text/plain`
  for Dotprompt files); the server's file paths are never part of a URI or a description.
- `prompts/list`, `prompts/get`: each program as a prompt whose arguments are its inputs
  (strings, coerced by the input schema's types as `-i key=value` is); `prompts/get` renders
  the program's messages (a system message becomes a user message: MCP prompts have none).
- Over stdio, `listChanged` is declared for tools, prompts and resources: the programs are
  rescanned every `params.MCP_LIST_POLL_S` and the client is notified when they change.

Invariants:
- A call of an unknown tool (no such program for this caller) is a JSON-RPC error, Invalid
  params (-32602), as the MCP specification asks. Every other failure of a call (bad input, a
  model or backend error, a bug) is an MCP tool result with `isError: true` and a one-line
  message; the server never crashes on a call.
- Error texts never show the server's file paths: an absolute path in a message is cut to
  its last component (`_redact`).
- The program runs in a worker thread, so the protocol loop keeps answering (pings,
  cancellations, other calls) while a model generates; the embedded CPU batches concurrent
  calls itself.
- Nothing but JSON-RPC reaches stdout: the SDK's `stdio_server` points fd 1 at stderr while it
  serves, so stray prints (llama.cpp's included) cannot corrupt the wire.

The tools, and as whom they run, come from a `Catalog`: over stdio the local one (above); on
`llmos serve` the HTTP mount's (`llmos.front.serve.mcp_http`: the bearer token's user, their
installed programs and the system's). Both use this one server.

What this module does not do: stream partial output (MCP tool results are whole), offer
subscriptions to single resources, or authenticate (the HTTP mount does).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.to_thread
import mcp_types
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, INVALID_REQUEST

from llmos import params
from llmos.errors import LlmosError
from llmos.kernel import api
from llmos.kernel.boot import System, boot
from llmos.kernel.core import Kernel
from llmos.kernel.inputs import parse_cli_inputs
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
        return _error(f"cannot list programs: {type(exc).__name__}")
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


@dataclass
class Watch:
    """The sessions to notify when the programs change (stdio: the one client)."""

    sessions: list[Any] = field(default_factory=list)

    def seen(self, ctx: Any) -> None:
        session = getattr(ctx, "session", None)
        if session is not None and all(s is not session for s in self.sessions):
            self.sessions.append(session)


def resource_for(program: Program) -> mcp_types.Resource:
    """The MCP resource holding `program`'s source."""
    return mcp_types.Resource(
        name=program.name,
        uri=f"{params.MCP_RESOURCE_SCHEME}{program.name}",
        description=program.description or f"The source of the llmos program {program.name}.",
        mime_type=_mime(program),
    )


def prompt_for(program: Program) -> mcp_types.Prompt:
    """The MCP prompt that renders `program`'s messages; its arguments are its inputs."""
    schema = program.input_schema
    arguments: list[mcp_types.PromptArgument] = []
    if schema is not None:
        required = set(schema.get("required") or [])
        for key, prop in (schema.get("properties") or {}).items():
            described = prop.get("description") if isinstance(prop, dict) else None
            arguments.append(
                mcp_types.PromptArgument(
                    name=key,
                    description=described if isinstance(described, str) else None,
                    required=key in required and key not in program.input_defaults,
                )
            )
    elif program.takes_input:
        arguments.append(mcp_types.PromptArgument(name="input", required=False))
    return mcp_types.Prompt(
        name=program.name,
        description=program.description or f"The llmos program {program.name}.",
        arguments=arguments,
    )


def render_prompt(program: Program, arguments: dict[str, str]) -> mcp_types.GetPromptResult:
    """`program`'s messages for `arguments` (InputError for bad ones)."""
    pairs = [f"{k}={v}" for k, v in arguments.items()]
    messages = program.render(parse_cli_inputs(pairs, program.input_schema))
    out = []
    for message in messages:
        role: Literal["user", "assistant"] = (
            "assistant" if message.get("role") in ("assistant", "model") else "user"
        )
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        out.append(mcp_types.PromptMessage(role=role, content=_text(text)))
    return mcp_types.GetPromptResult(description=program.description or None, messages=out)


def build_server(
    kernel: Kernel, catalog: Catalog | None = None, watch: Watch | None = None
) -> Server[Any]:
    """The low-level MCP server over the programs `catalog` offers (by default the local
    one: what `kernel`'s system discovers, run as the OS user); `watch` collects the sessions
    to notify of changes."""
    cat = catalog or local_catalog(kernel.system)

    async def programs(ctx: Any) -> list[Program]:
        if watch is not None:
            watch.seen(ctx)
        try:
            return await anyio.to_thread.run_sync(cat.programs, ctx)
        except LlmosError as exc:
            raise MCPError(code=INVALID_REQUEST, message=_redact(str(exc))) from None

    async def find(ctx: Any, name: str, what: str, code: int) -> Program:
        try:
            program = await anyio.to_thread.run_sync(cat.find, ctx, name)
        except LlmosError as exc:
            raise MCPError(code=INVALID_REQUEST, message=_redact(str(exc))) from None
        if program is None:
            raise MCPError(code=code, message=f"Unknown {what}: no program named '{name}'")
        return program

    async def list_tools(
        ctx: Any, request: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListToolsResult:
        return mcp_types.ListToolsResult(tools=[tool_for(p) for p in await programs(ctx)])

    async def call_tool(
        ctx: Any, request: mcp_types.CallToolRequestParams
    ) -> mcp_types.CallToolResult:
        arguments = dict(request.arguments or {})
        return await anyio.to_thread.run_sync(
            lambda: call_program(kernel, cat, ctx, request.name, arguments),
            abandon_on_cancel=True,
        )

    async def list_resources(
        ctx: Any, request: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListResourcesResult:
        found = await programs(ctx)
        return mcp_types.ListResourcesResult(resources=[resource_for(p) for p in found])

    async def read_resource(
        ctx: Any, request: mcp_types.ReadResourceRequestParams
    ) -> mcp_types.ReadResourceResult:
        uri = str(request.uri)
        name = uri.removeprefix(params.MCP_RESOURCE_SCHEME)
        if name == uri or not name:
            raise MCPError(
                code=params.MCP_RESOURCE_NOT_FOUND,
                message=f"Unknown resource: {uri} (resources are {params.MCP_RESOURCE_SCHEME}NAME)",
            )
        program = await find(ctx, name, "resource", params.MCP_RESOURCE_NOT_FOUND)
        contents = mcp_types.TextResourceContents(
            uri=uri, mime_type=_mime(program), text=program.source or program.template
        )
        return mcp_types.ReadResourceResult(contents=[contents])

    async def list_prompts(
        ctx: Any, request: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListPromptsResult:
        return mcp_types.ListPromptsResult(prompts=[prompt_for(p) for p in await programs(ctx)])

    async def get_prompt(
        ctx: Any, request: mcp_types.GetPromptRequestParams
    ) -> mcp_types.GetPromptResult:
        program = await find(ctx, request.name, "prompt", INVALID_PARAMS)
        try:
            return render_prompt(program, dict(request.arguments or {}))
        except LlmosError as exc:
            raise MCPError(code=INVALID_PARAMS, message=_redact(str(exc))) from None

    return Server(
        params.MCP_SERVER_NAME,
        version=_version(),
        instructions="Each tool runs one installed llmos program on its model and returns"
        " its output; each prompt renders a program's messages; each resource is a program's"
        " source.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
    )


def fingerprint(programs: list[Program]) -> str:
    """What a client sees of the programs (names, descriptions, schemas, sources), hashed."""
    digest = hashlib.sha256()
    for p in sorted(programs, key=lambda p: p.name):
        seen = [p.name, p.description, p.input_schema, p.output_schema, p.source]
        digest.update(json.dumps(seen, sort_keys=True, default=str).encode())
    return digest.hexdigest()


async def watch_programs(system: System, watch: Watch, interval_s: float) -> None:
    """Rescan the programs every `interval_s` and notify `watch`'s sessions of changes."""
    last = fingerprint(await anyio.to_thread.run_sync(system.discover_programs))
    while True:
        await anyio.sleep(interval_s)
        with contextlib.suppress(Exception):  # an unreadable directory: try again next time
            now = fingerprint(await anyio.to_thread.run_sync(system.discover_programs))
            if now == last:
                continue
            last = now
            for session in list(watch.sessions):
                try:
                    await session.send_tool_list_changed()
                    await session.send_prompt_list_changed()
                    await session.send_resource_list_changed()
                except Exception:  # that client has gone
                    watch.sessions.remove(session)


async def serve(kernel: Kernel) -> None:
    """Serve MCP over this process's stdin and stdout until the client closes stdin; the
    client is told when the programs change."""
    watch = Watch()
    server = build_server(kernel, watch=watch)
    changes = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
    async with stdio_server() as (read_stream, write_stream), anyio.create_task_group() as tg:
        tg.start_soon(watch_programs, kernel.system, watch, params.MCP_LIST_POLL_S)
        await server.run(read_stream, write_stream, server.create_initialization_options(changes))
        tg.cancel_scope.cancel()


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
    return mcp_types.CallToolResult(content=[_text(_redact(message))], is_error=True)


# An absolute path (not part of a URL): a run of /segments not preceded by a word, ':' or '/'.
_PATH = re.compile(r"(?<![\w:/.~-])(?:/[^\s/'\"(),:;]+)+/([^\s/'\"(),:;]+)")


def _redact(message: str) -> str:
    """`message` on one line, every absolute path cut to its last component."""
    return _PATH.sub(r"\1", " ".join(message.split()))


def _mime(program: Program) -> str:
    return "text/plain" if program.kind == "dotprompt" else "text/markdown"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(params.APP_NAME)
    except PackageNotFoundError:
        return "0"
