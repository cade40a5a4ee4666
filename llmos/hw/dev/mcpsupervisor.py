"""The supervisor of one MCP server: its thread and loop, its session, restarts, shutdown.

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

Invariants: `MCPSupervisor.call` never raises for a server's failure: it returns
`DeviceResult.failure` with one line naming the server (and the command, for a command that
cannot be run; the telling line of its stderr, for a server that failed to start). Only
`tools()` raises, `MCPServerError`, when the server cannot be started or listed.

What this module does not do: read the configuration (`mcpconfig`), describe results and
failures (`mcpsession`), or make devices of the tools (`mcp`).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import shutil
import threading
import time
import weakref
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import mcp_types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.sse import sse_client
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from llmos import params
from llmos.errors import BackendError
from llmos.hw.dev.base import DeviceResult
from llmos.hw.dev.mcpconfig import ServerSpec
from llmos.hw.dev.mcpsession import (
    ServerFailure,
    Session,
    ToolInfo,
    describe,
    leaf_exception,
    list_tools,
    one_line,
    race,
    retrieved,
    to_device_result,
)

# The SDK logs protocol noise (unparseable lines, teardown) at ERROR; without a handler of our
# own, logging's last resort would print it with a traceback on the user's terminal.
logging.getLogger("mcp").addHandler(logging.NullHandler())

_T = TypeVar("_T")
_live: weakref.WeakSet[MCPSupervisor] = weakref.WeakSet()


class MCPServerError(BackendError):
    """An MCP server that cannot be started or listed (raised only by `tools()`)."""


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
        self._current: Session | None = None
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
        except ServerFailure as exc:
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
        except ServerFailure as exc:
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
                raise ServerFailure(f"server {self.name} is closed")
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
        except ServerFailure as exc:
            return DeviceResult.failure(str(exc))
        assert session.client is not None
        try:
            result = await race(session, session.client.call_tool(tool, args), timeout)
        except TimeoutError:
            self._fail(session, f"server {self.name} did not answer within {timeout:g} s")
            return DeviceResult.failure(
                f"server {self.name} did not answer within {timeout:g} s (tool {tool});"
                " its session is restarted"
            )
        except ServerFailure as exc:
            self._fail(session, str(exc))
            return DeviceResult.failure(f"{exc} (tool {tool})")
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                message = self._closed_message(session, "during the call")
                self._fail(session, message)
                return DeviceResult.failure(f"{message} (tool {tool})")
            return DeviceResult.failure(
                f"server {self.name}, tool {tool}: {one_line(exc.error.message)}"
            )
        except Exception as exc:  # a result the SDK cannot parse, or an SDK bug
            message = f"server {self.name} failed: {describe(exc)}"
            self._fail(session, message)
            return DeviceResult.failure(f"{message} (tool {tool})")
        self._failures = 0
        if not isinstance(result, mcp_types.CallToolResult):
            return DeviceResult.failure(
                f"server {self.name}, tool {tool}: unsupported result ({type(result).__name__})"
            )
        return to_device_result(self.name, tool, result, limit)

    def _fail(self, session: Session, reason: str) -> None:
        if self._current is not session:  # already retired by another call's failure
            return
        self._failures += 1
        self._last_error = reason
        self._retire_later(session)

    def _retire_later(self, session: Session) -> None:
        if self._current is session:
            self._current = None
        task = asyncio.ensure_future(self._retire(session))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _ensure(self) -> Session:
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
                raise ServerFailure(
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
            except ServerFailure as exc:
                self._failures += 1
                self._last_error = str(exc)
                raise
            self._current = session
            return session

    async def _start(self) -> Session:
        spec = self.spec
        if spec.command is not None:
            path_env = {**get_default_environment(), **spec.env}.get("PATH")
            if shutil.which(spec.command, path=path_env) is None:
                raise ServerFailure(
                    f"server {self.name}: command '{spec.command}' not found"
                    " (not an executable path, nor on PATH)"
                )
        session = Session(self.name)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ready.add_done_callback(retrieved)  # a start that timed out leaves no one to read it
        session.task = asyncio.ensure_future(self._hold(session, ready))
        self.starts += 1
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout=self.start_timeout_s)
        except TimeoutError:
            tail = session.stderr_tail()
            await self._retire(session)
            raise ServerFailure(
                f"server {self.name} did not start within {self.start_timeout_s:g} s"
                + (f" (stderr: {one_line(tail)})" if tail else "")
            ) from None
        except ServerFailure:
            await self._retire(session)
            raise
        return session

    async def _hold(self, session: Session, ready: asyncio.Future[None]) -> None:
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
                await race(session, client.initialize(), None)
                session.tools = await race(session, list_tools(client), None)
                session.client = client
                ready.set_result(None)
                await session.stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(ServerFailure(self._start_failure(session, exc)))
            session.mark_broken(self._closed_message(session, "unexpectedly"))
            if not isinstance(exc, Exception):
                raise
        finally:
            session.mark_broken(f"server {self.name} was stopped")
            session.stderr.close()

    @contextlib.asynccontextmanager
    async def _transport(self, session: Session) -> AsyncIterator[Any]:
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

    async def _retire(self, session: Session) -> None:
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

    def _start_failure(self, session: Session, exc: BaseException) -> str:
        leaf = leaf_exception(exc)
        if isinstance(leaf, ServerFailure):
            return str(leaf)
        tail = session.stderr_tail()
        stderr = f" (stderr: {one_line(tail)})" if tail else ""
        if isinstance(leaf, FileNotFoundError) and self.spec.command is not None:
            return f"server {self.name}: command '{self.spec.command}' not found"
        if isinstance(leaf, PermissionError) and self.spec.command is not None:
            return f"server {self.name}: command '{self.spec.command}' is not executable"
        if isinstance(leaf, MCPError) and leaf.code == mcp_types.CONNECTION_CLOSED:
            return self._closed_message(session, "during start-up")
        return f"server {self.name} failed to start: {describe(leaf)}{stderr}"

    def _closed_message(self, session: Session, when: str) -> str:
        if session.broken.is_set() and session.broken_reason:
            return session.broken_reason
        tail = session.stderr_tail()
        what = "exited" if self.spec.command is not None else "closed the connection"
        return f"server {self.name} {what} {when}" + (
            f" (stderr: {one_line(tail)})" if tail else ""
        )


@atexit.register
def _close_live() -> None:
    """Close supervisors left open at interpreter exit, so no server outlives llmos."""
    deadline = time.monotonic() + params.MCP_CLOSE_TIMEOUT_S
    for supervisor in list(_live):
        if time.monotonic() > deadline:
            break
        with contextlib.suppress(Exception):
            supervisor.close()
