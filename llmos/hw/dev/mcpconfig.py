"""The configuration of MCP servers: which servers, how each is reached, its timeouts.

The Claude Desktop convention, read from any mapping that holds it (a config.json, say):
`{"mcpServers": {"NAME": {"command": ..., "args": [...], "env": {...}, "cwd": ...}}}` for a
server run as a child process over stdio, or `{"NAME": {"url": "http://...", "headers":
{...}}}` for one reached over streamable HTTP (`"type": "sse"`: the legacy SSE transport; other
`type` spellings in `params.MCP_TRANSPORT_TYPES`). `headers` (say `Authorization`) go with
every request to a remote server. `start_timeout_s` and `call_timeout_s` override the defaults
for one server. An entry with `"disabled": true` is skipped; any other key is a `ConfigError`.

Invariants: a `ServerSpec` has exactly one of `command` and `url`, a `transport` that fits it,
and a name without `params.MCP_TOOL_NAME_SEP` (a tool's device name is `server.tool`); every
problem is a `ConfigError` whose one line names the offending key (`mcpServers.NAME.key`).

What this module does not do: read config files (callers pass the mapping), check that a
command exists or a URL answers (the supervisor finds out when it starts the server), or
start anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmos import params
from llmos.errors import ConfigError

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
