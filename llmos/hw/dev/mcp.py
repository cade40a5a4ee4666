"""MCP servers as devices: every tool of a configured server becomes a device `server.tool`.

Configuration is the Claude Desktop convention, read from any mapping that holds it (a
config.json, say): `{"mcpServers": {"NAME": {"command": ..., "args": [...], "env": {...},
"cwd": ...}}}` for a server run as a child process over stdio, or `{"NAME": {"url":
"http://...", "headers": {...}}}` for one reached over streamable HTTP (`"type": "sse"`: the
legacy SSE transport; other `type` spellings in `params.MCP_TRANSPORT_TYPES`). `headers` (say
`Authorization`) go with every request to a remote server. `start_timeout_s` and
`call_timeout_s` override the defaults for one server. An entry with `"disabled": true` is
skipped; any other key is a `ConfigError`.

Supervision (one `MCPSupervisor` per server):
- The supervisor owns a daemon thread running its own asyncio loop. One long-lived task on
  that loop (the *holder*) enters the transport (`stdio_client` / `streamable_http_client`)
  and the `ClientSession`, initializes, lists the tools, then waits to be told to stop. The
  SDK's anyio cancel scopes are therefore always entered and left by the same task, which is
  what avoids the SDK's "cancel scope in a different task" errors; nothing ever cancels the
  holder natively except as a last resort after `params.MCP_CLOSE_TIMEOUT_S`.
- Callers on any thread hand coroutines to that loop (`run_coroutine_threadsafe`). Each tool
  call runs as its own task racing three events: its answer, the session breaking (the server
  wrote a line that is not JSON-RPC, or closed the connection) and the session being stopped,
  under `params.MCP_CALL_TIMEOUT_S` (or the caller's shorter `ctx.timeout_s`).
- The server starts lazily, on the first `tools()` or `call()`. A call that times out, a
  server that dies or writes garbage, fails that call (a `DeviceResult` failure naming the
  server) and retires the session in the background; the next call starts a fresh one.
  Consecutive failures (failed starts, crashes, hangs) are counted; the 2nd and later restarts
  wait `MCP_RESTART_BACKOFF_S`, doubling up to `MCP_RESTART_BACKOFF_MAX_S`; after more than
  `MCP_MAX_RESTARTS` of them the server is given up on and calls fail at once. A successful
  call resets the count.
- Retiring a session tells the holder to stop; the SDK's stdio shutdown closes the server's
  stdin, waits, then SIGTERMs and SIGKILLs its whole process group (servers are spawned in a
  new session), and reaps it. `close()` retires everything, waits for that, and stops the
  thread: no orphan processes. Supervisors still open at interpreter exit are closed by an
  atexit hook.

Invariants:
- `MCPToolDevice.call` and `MCPSupervisor.call` never raise for a server's failure: they
  return `DeviceResult.failure` with one line naming the server (and the command, for a
  command that cannot be run; the telling line of its stderr, for a server that failed to
  start: its last line, or npm's error code and reason for an `npx` server).
- Tool results: text contents joined with newlines (other content as a short placeholder);
  `structuredContent`, when present, is the output instead; `isError` results are failures
  carrying the text. Output is truncated to `ctx.max_output_bytes`.
- A server's stderr goes to a private temporary file, never to the caller's terminal.

What this module does not do: validate arguments against the tool schema (the syscall layer
does), decide which programs may use which servers, or read config files (callers pass the
mapping). Resources, prompts and sampling of MCP are not exposed.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar, cast

import mcp_types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.sse import sse_client
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from llmos import params
from llmos.errors import BackendError, ConfigError
from llmos.hw.dev.base import CallContext, Device, DeviceResult, truncate_text

# The SDK logs protocol noise (unparseable lines, teardown) at ERROR; without a handler of our
# own, logging's last resort would print it with a traceback on the user's terminal.
logging.getLogger("mcp").addHandler(logging.NullHandler())

_T = TypeVar("_T")
_SPEC_KEYS = frozenset(
    {
        "command",
        "args",
        "env",
        "cwd",
        "url",
        "headers",
        "disabled",
        "type",
        "start_timeout_s",
        "call_timeout_s",
    }
)
_live: weakref.WeakSet[MCPSupervisor] = weakref.WeakSet()


class MCPServerError(BackendError):
    """An MCP server that cannot be started or listed (raised only by `tools()`)."""


@dataclass
class ServerSpec:
    """One entry of `mcpServers`: a command to run over stdio, or a URL."""

    name: str
    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    transport: str = "stdio"  # "stdio", "http" (streamable HTTP) or "sse" (the legacy transport)
    start_timeout_s: float | None = None  # None: the supervisor's default
    call_timeout_s: float | None = None

    @classmethod
    def from_config(cls, name: str, entry: Any) -> ServerSpec:
        where = f"{params.MCP_CONFIG_KEY}.{name}"
        if not name or params.MCP_TOOL_NAME_SEP in name:
            raise ConfigError(
                f"{where}: a server name must be non-empty and not contain"
                f" '{params.MCP_TOOL_NAME_SEP}'"
            )
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a mapping with 'command' or 'url'")
        unknown = sorted(str(k) for k in entry if k not in _SPEC_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}'")
        command, url = entry.get("command"), entry.get("url")
        if (command is None) == (url is None):
            raise ConfigError(f"{where}: give exactly one of 'command' or 'url'")
        if command is not None and (not isinstance(command, str) or not command.strip()):
            raise ConfigError(f"{where}.command: expected a non-empty string")
        if url is not None and (
            not isinstance(url, str) or not url.startswith(("http://", "https://"))
        ):
            raise ConfigError(f"{where}.url: expected an http:// or https:// URL")
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ConfigError(f"{where}.args: expected a list of strings")
        env = entry.get("env", {})
        if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ConfigError(f"{where}.env: expected a mapping of strings to strings")
        cwd = entry.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise ConfigError(f"{where}.cwd: expected a string")
        headers = entry.get("headers", {})
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ConfigError(f"{where}.headers: expected a mapping of strings to strings")
        if headers and url is None:
            raise ConfigError(f"{where}.headers: only a server given by 'url' takes headers")
        kind = entry.get("type")
        transport = "stdio" if command is not None else "http"
        if kind is not None:
            transport = params.MCP_TRANSPORT_TYPES.get(str(kind), "")
            if not transport:
                known = ", ".join(sorted(params.MCP_TRANSPORT_TYPES))
                raise ConfigError(f"{where}.type: unknown transport '{kind}' (known: {known})")
            if (transport == "stdio") != (command is not None):
                need = "'command'" if transport == "stdio" else "'url'"
                raise ConfigError(f"{where}.type: a '{kind}' server is given by {need}")
        timeouts: dict[str, float | None] = {}
        for key in ("start_timeout_s", "call_timeout_s"):
            value = entry.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
            ):
                raise ConfigError(f"{where}.{key}: expected a positive number of seconds")
            timeouts[key] = None if value is None else float(value)
        return cls(
            name=name,
            command=command,
            args=list(args),
            env=dict(env),
            cwd=cwd,
            url=url,
            headers=dict(headers),
            transport=transport,
            start_timeout_s=timeouts["start_timeout_s"],
            call_timeout_s=timeouts["call_timeout_s"],
        )


def parse_config(config: Mapping[str, Any]) -> list[ServerSpec]:
    """The enabled servers of `config[params.MCP_CONFIG_KEY]` (none when the key is absent)."""
    servers = config.get(params.MCP_CONFIG_KEY, {})
    if not isinstance(servers, Mapping):
        raise ConfigError(f"{params.MCP_CONFIG_KEY}: expected a mapping of server names")
    specs = []
    for name, entry in servers.items():
        if isinstance(entry, Mapping) and entry.get("disabled") is True:
            continue
        specs.append(ServerSpec.from_config(str(name), entry))
    return specs


@dataclass
class ToolInfo:
    name: str
    description: str
    input_schema: dict[str, Any]


class _Failure(Exception):
    """A server-level failure, with its one-line message (counts towards restarts)."""


class _Session:
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
                f" ({_one_line(_describe_parse_error(message))})"
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


class MCPSupervisor:
    """Owns one MCP server: its thread and loop, its session, restarts. See the module note."""

    def __init__(
        self,
        spec: ServerSpec,
        *,
        start_timeout_s: float = params.MCP_START_TIMEOUT_S,
        call_timeout_s: float = params.MCP_CALL_TIMEOUT_S,
        max_restarts: int = params.MCP_MAX_RESTARTS,
        close_timeout_s: float = params.MCP_CLOSE_TIMEOUT_S,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.start_timeout_s = spec.start_timeout_s or start_timeout_s
        self.call_timeout_s = spec.call_timeout_s or call_timeout_s
        self.max_restarts = max_restarts
        self.close_timeout_s = close_timeout_s
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        # Loop-only state:
        self._start_lock: asyncio.Lock | None = None
        self._current: _Session | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._failures = 0  # consecutive failed starts, crashes and hangs
        self._last_error = ""
        self.starts = 0  # sessions started so far (for tests and `llmos` diagnostics)
        _live.add(self)

    # --- Public, thread-safe ---------------------------------------------------------------

    def tools(self) -> list[ToolInfo]:
        """The server's tools, starting it if needed; MCPServerError when it cannot start."""
        try:
            return self._submit(self._tools(), self._start_budget() + self.close_timeout_s)
        except _Failure as exc:
            raise MCPServerError(str(exc)) from None
        except concurrent.futures.TimeoutError:
            raise MCPServerError(
                f"server {self.name} did not start within {self.start_timeout_s:g} s"
            ) from None

    def call(
        self,
        tool: str,
        args: dict[str, Any],
        *,
        timeout_s: float | None = None,
        max_output_bytes: int = params.DEVICE_MAX_OUTPUT_BYTES,
    ) -> DeviceResult:
        """Call `tool` with `args`; never raises for the server's failures."""
        timeout = self.call_timeout_s if timeout_s is None else min(timeout_s, self.call_timeout_s)
        try:
            return self._submit(
                self._call(tool, args, timeout, max_output_bytes),
                self._start_budget() + timeout + self.close_timeout_s,
            )
        except _Failure as exc:
            return DeviceResult.failure(str(exc))
        except concurrent.futures.TimeoutError:
            return DeviceResult.failure(
                f"server {self.name} did not answer within {timeout:g} s (tool {tool})"
            )

    def close(self) -> None:
        """Stop the server (killing and reaping its process) and the supervisor's thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        _live.discard(self)
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=self.close_timeout_s * 2 + params.MCP_SHUTDOWN_MARGIN_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=self.close_timeout_s)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- Thread and loop -------------------------------------------------------------------

    def _start_budget(self) -> float:
        return self.start_timeout_s + params.MCP_RESTART_BACKOFF_MAX_S + self.close_timeout_s

    def _submit(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        with self._lock:
            if self._closed:
                coro.close()
                raise _Failure(f"server {self.name} is closed")
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._run_loop, name=f"mcp-{self.name}", daemon=True
                )
                self._thread.start()
            loop = self._loop
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def _run_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    # --- On the loop -----------------------------------------------------------------------

    async def _tools(self) -> list[ToolInfo]:
        session = await self._ensure()
        return list(session.tools)

    async def _call(
        self, tool: str, args: dict[str, Any], timeout: float, limit: int
    ) -> DeviceResult:
        try:
            session = await self._ensure()
        except _Failure as exc:
            return DeviceResult.failure(str(exc))
        assert session.client is not None
        try:
            result = await _race(session, session.client.call_tool(tool, args), timeout)
        except TimeoutError:
            self._fail(session, f"server {self.name} did not answer within {timeout:g} s")
            return DeviceResult.failure(
                f"server {self.name} did not answer within {timeout:g} s (tool {tool});"
                " its session is restarted"
            )
        except _Failure as exc:
            self._fail(session, str(exc))
            return DeviceResult.failure(f"{exc} (tool {tool})")
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                message = self._closed_message(session, "during the call")
                self._fail(session, message)
                return DeviceResult.failure(f"{message} (tool {tool})")
            return DeviceResult.failure(
                f"server {self.name}, tool {tool}: {_one_line(exc.error.message)}"
            )
        except Exception as exc:  # a result the SDK cannot parse, or an SDK bug
            message = f"server {self.name} failed: {_describe(exc)}"
            self._fail(session, message)
            return DeviceResult.failure(f"{message} (tool {tool})")
        self._failures = 0
        if not isinstance(result, mcp_types.CallToolResult):
            return DeviceResult.failure(
                f"server {self.name}, tool {tool}: unsupported result ({type(result).__name__})"
            )
        return _to_device_result(self.name, tool, result, limit)

    def _fail(self, session: _Session, reason: str) -> None:
        if self._current is not session:  # already retired by another call's failure
            return
        self._failures += 1
        self._last_error = reason
        self._retire_later(session)

    def _retire_later(self, session: _Session) -> None:
        if self._current is session:
            self._current = None
        task = asyncio.ensure_future(self._retire(session))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _ensure(self) -> _Session:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            current = self._current
            if current is not None and current.alive:
                return current
            if current is not None:  # died since the last call: a crash
                self._current = None
                self._failures += 1
                self._last_error = current.broken_reason or f"server {self.name} stopped"
                await self._retire(current)
            if self._retiring:
                await asyncio.wait(set(self._retiring), timeout=self.close_timeout_s)
            if self._failures > self.max_restarts:
                raise _Failure(
                    f"server {self.name} failed {self._failures} times in a row and is not"
                    f" restarted (last error: {self._last_error})"
                )
            if self._failures >= 2:
                await asyncio.sleep(
                    min(
                        params.MCP_RESTART_BACKOFF_S * 2 ** (self._failures - 2),
                        params.MCP_RESTART_BACKOFF_MAX_S,
                    )
                )
            try:
                session = await self._start()
            except _Failure as exc:
                self._failures += 1
                self._last_error = str(exc)
                raise
            self._current = session
            return session

    async def _start(self) -> _Session:
        spec = self.spec
        if spec.command is not None:
            path_env = {**get_default_environment(), **spec.env}.get("PATH")
            if shutil.which(spec.command, path=path_env) is None:
                raise _Failure(
                    f"server {self.name}: command '{spec.command}' not found"
                    " (not an executable path, nor on PATH)"
                )
        session = _Session(self.name)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ready.add_done_callback(_retrieved)  # a start that timed out leaves no one to read it
        session.task = asyncio.ensure_future(self._hold(session, ready))
        self.starts += 1
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout=self.start_timeout_s)
        except TimeoutError:
            tail = session.stderr_tail()
            await self._retire(session)
            raise _Failure(
                f"server {self.name} did not start within {self.start_timeout_s:g} s"
                + (f" (stderr: {_one_line(tail)})" if tail else "")
            ) from None
        except _Failure:
            await self._retire(session)
            raise
        return session

    async def _hold(self, session: _Session, ready: asyncio.Future[None]) -> None:
        """The holder task: enter transport and session, serve until told to stop."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport(session))
                client = await stack.enter_async_context(
                    ClientSession(
                        read,
                        write,
                        message_handler=session.on_message,
                        client_info=mcp_types.Implementation(
                            name=params.MCP_SERVER_NAME, version="0"
                        ),
                    )
                )
                await _race(session, client.initialize(), None)
                session.tools = await _race(session, _list_tools(client), None)
                session.client = client
                ready.set_result(None)
                await session.stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(_Failure(self._start_failure(session, exc)))
            session.mark_broken(self._closed_message(session, "unexpectedly"))
            if not isinstance(exc, Exception):
                raise
        finally:
            session.mark_broken(f"server {self.name} was stopped")
            session.stderr.close()

    @contextlib.asynccontextmanager
    async def _transport(self, session: _Session) -> AsyncIterator[Any]:
        spec = self.spec
        if spec.url is not None and spec.transport == "sse":
            async with sse_client(spec.url, headers=spec.headers or None) as streams:
                yield streams
            return
        if spec.url is not None:
            client = create_mcp_http_client(headers=spec.headers or None)
            async with client, streamable_http_client(spec.url, http_client=client) as streams:
                yield streams
            return
        assert spec.command is not None
        server = StdioServerParameters(
            command=spec.command, args=spec.args, env=spec.env or None, cwd=spec.cwd
        )
        async with stdio_client(server, errlog=session.stderr) as streams:
            yield streams

    async def _retire(self, session: _Session) -> None:
        """Stop a session's holder and wait for its server to be gone."""
        session.stop.set()
        task = session.task
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=self.close_timeout_s)
        if not done:  # last resort: the SDK's shutdown is bounded, so this should not happen
            task.cancel()
            await asyncio.wait({task}, timeout=self.close_timeout_s)

    async def _shutdown(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            self._retire_later(current)
        if self._retiring:
            await asyncio.wait(set(self._retiring), timeout=self.close_timeout_s * 2)

    def _start_failure(self, session: _Session, exc: BaseException) -> str:
        leaf = _leaf(exc)
        if isinstance(leaf, _Failure):
            return str(leaf)
        tail = session.stderr_tail()
        stderr = f" (stderr: {_one_line(tail)})" if tail else ""
        if isinstance(leaf, FileNotFoundError) and self.spec.command is not None:
            return f"server {self.name}: command '{self.spec.command}' not found"
        if isinstance(leaf, PermissionError) and self.spec.command is not None:
            return f"server {self.name}: command '{self.spec.command}' is not executable"
        if isinstance(leaf, MCPError) and leaf.code == mcp_types.CONNECTION_CLOSED:
            return self._closed_message(session, "during start-up")
        return f"server {self.name} failed to start: {_describe(leaf)}{stderr}"

    def _closed_message(self, session: _Session, when: str) -> str:
        if session.broken.is_set() and session.broken_reason:
            return session.broken_reason
        tail = session.stderr_tail()
        what = "exited" if self.spec.command is not None else "closed the connection"
        return f"server {self.name} {what} {when}" + (
            f" (stderr: {_one_line(tail)})" if tail else ""
        )


class MCPToolDevice(Device):
    """One tool of an MCP server, as a device named `server.tool`."""

    def __init__(self, supervisor: MCPSupervisor, tool: ToolInfo) -> None:
        self.supervisor = supervisor
        self.tool = tool.name
        self.name = f"{supervisor.name}{params.MCP_TOOL_NAME_SEP}{tool.name}"
        self.description = tool.description or f"Tool {tool.name} of MCP server {supervisor.name}"
        self.schema = tool.input_schema or {"type": "object", "properties": {}}

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        return self.supervisor.call(
            self.tool, args, timeout_s=ctx.timeout_s, max_output_bytes=ctx.max_output_bytes
        )


class MCPDevices:
    """The configured MCP servers: one supervisor each, their tools as devices."""

    def __init__(self, config: Mapping[str, Any], **supervisor_options: Any) -> None:
        self.supervisors: dict[str, MCPSupervisor] = {
            spec.name: MCPSupervisor(spec, **supervisor_options) for spec in parse_config(config)
        }

    def names(self) -> list[str]:
        """The configured (enabled) servers, started or not."""
        return list(self.supervisors)

    def mount(self, groups: list[str], problems: dict[str, str]) -> dict[str, Device]:
        """The tools of the servers `groups` only, by device name (the syscall table's
        `Mounts`); a server that cannot start has its one-line reason in `problems[name]`."""
        return self.devices(servers=groups, problems_by_server=problems)

    def devices(
        self,
        problems: list[str] | None = None,
        *,
        servers: list[str] | None = None,
        problems_by_server: dict[str, str] | None = None,
    ) -> dict[str, Device]:
        """Every tool of every server (or of `servers` only), by device name. Servers start
        in parallel, each within its own start timeout; one that cannot start is left out,
        its one-line reason appended to `problems` when given."""
        chosen = {
            name: sup
            for name, sup in self.supervisors.items()
            if servers is None or name in servers
        }
        found: dict[str, Device] = {}
        if not chosen:
            return found
        with concurrent.futures.ThreadPoolExecutor(len(chosen)) as pool:
            futures = {name: pool.submit(sup.tools) for name, sup in chosen.items()}
            for name, future in futures.items():
                try:
                    tools = future.result()
                except MCPServerError as exc:
                    if problems is not None:
                        problems.append(str(exc))
                    if problems_by_server is not None:
                        problems_by_server[name] = str(exc)
                    continue
                for tool in tools:
                    device = MCPToolDevice(self.supervisors[name], tool)
                    found[device.name] = device
        return found

    def close_all(self) -> None:
        """Close every server, in parallel; returns once all are stopped and reaped."""
        if not self.supervisors:
            return
        with concurrent.futures.ThreadPoolExecutor(len(self.supervisors)) as pool:
            list(pool.map(lambda sup: sup.close(), self.supervisors.values()))

    def __enter__(self) -> MCPDevices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()


# --- Helpers ------------------------------------------------------------------------------------


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a finished future's exception as read: its outcome is reported elsewhere (as a
    `_Failure`), and asyncio's "exception was never retrieved" traceback is noise to a user."""
    if not future.cancelled():
        future.exception()


async def _race(session: _Session, awaitable: Awaitable[_T], timeout: float | None) -> _T:
    """`awaitable`'s result, unless the session breaks (_Failure), is stopped (_Failure) or
    `timeout` runs out (TimeoutError) first; the loser is cancelled."""
    task = asyncio.ensure_future(awaitable)
    task.add_done_callback(_retrieved)  # cancelled with its holder, its error is still read
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
        raise _Failure(session.broken_reason)
    if stopped in done:
        raise _Failure(f"server {session.server} was stopped")
    raise TimeoutError


async def _list_tools(client: ClientSession) -> list[ToolInfo]:
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


def _to_device_result(
    server: str, tool: str, result: mcp_types.CallToolResult, limit: int
) -> DeviceResult:
    text = "\n".join(_content_text(block) for block in result.content)
    if result.is_error:
        return DeviceResult.failure(
            f"server {server}, tool {tool}: {_one_line(text) or 'the tool reported an error'}"
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


def _leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    leaf = _leaf(exc)
    if isinstance(leaf, MCPError):
        return _one_line(leaf.error.message)
    text = _one_line(str(leaf))
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


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    if len(line) > params.MCP_MESSAGE_MAX_CHARS:
        line = line[: params.MCP_MESSAGE_MAX_CHARS - 3] + "..."
    return line


@atexit.register
def _close_live() -> None:
    """Close supervisors left open at interpreter exit, so no server outlives llmos."""
    deadline = time.monotonic() + params.MCP_CLOSE_TIMEOUT_S
    for supervisor in list(_live):
        if time.monotonic() > deadline:
            break
        with contextlib.suppress(Exception):
            supervisor.close()
