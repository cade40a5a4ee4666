"""MCP servers as devices: every tool of a configured server becomes a device `server.tool`.

The parts, inward: `mcpconfig` reads the configuration (the Claude Desktop `mcpServers`
convention, a command over stdio or a URL over streamable HTTP or SSE); `mcpsupervisor` owns one
server (its thread and loop, its session, restarts with backoff, shutdown that leaves no
orphan process); `mcpsession` is one live connection and says what a result or a failure is,
in one line. This module makes each tool a device (`MCPToolDevice`) and holds the configured
servers (`MCPDevices`): servers start in parallel, each within its own start timeout; one
that cannot start is left out, with its one-line reason; `mount` gives only the tools of the
servers a program names (the syscall table's `Mounts`).

Invariants:
- `MCPToolDevice.call` never raises for a server's failure: it returns `DeviceResult.failure`
  with one line naming the server (see `mcpsupervisor`).
- Tool results: text contents joined with newlines (other content as a short placeholder);
  `structuredContent`, when present, is the output instead; `isError` results are failures
  carrying the text. Output is truncated to `ctx.max_output_bytes`.
- A server's stderr goes to a private temporary file, never to the caller's terminal.
- `close_all` returns once every server is stopped and reaped.

What this module does not do: validate arguments against the tool schema (the syscall layer
does), decide which programs may use which servers, or read config files (callers pass the
mapping). Resources, prompts and sampling of MCP are not exposed.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from typing import Any

from llmos import params
from llmos.hw.dev.base import CallContext, Device, DeviceResult
from llmos.hw.dev.mcpconfig import parse_config
from llmos.hw.dev.mcpsession import ToolInfo
from llmos.hw.dev.mcpsupervisor import MCPServerError, MCPSupervisor


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
