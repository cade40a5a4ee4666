"""What devices there are, and how to call each: the listing behind `llmos devices`.

A row per device of the syscall table (built-ins and plugins): its name, whether it is on by
default, its description, its JSON Schema and its *call format*, a one-line signature derived
from that schema (`fs {op: "read"|"write"|"list"|"search", path?: string, ...}`: a `?` marks
an optional argument). Derived, never written by hand, so it cannot drift from what the
syscall layer validates. MCP servers appear as one row each (`time.*`), with their command or
URL and a status: `not started`, `disabled`, `running` (then a row per tool) or `failed` (with
its one-line reason).

Invariants:
- `listing(system)` starts no MCP server; only the servers named in `probe` are started
  (concurrently, each within its own start timeout), through the syscall table, so they are
  the same supervised servers a program would use and close with the system.
- Rows are plain JSON values, sorted by name.

What this module does not do: print (the front end does), or call any device.
"""

from __future__ import annotations

from typing import Any

from llmos import params
from llmos.kernel.boot import System


def signature(schema: dict[str, Any]) -> str:
    """A one-line call format for an object schema: `{key: type, key?: type}`."""
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        return "{}"
    required = set(schema.get("required") or [])
    parts = [
        f"{key}{'' if key in required else '?'}: {_type(sub)}"
        for key, sub in props.items()
        if isinstance(sub, dict)
    ]
    return "{" + ", ".join(parts) + "}"


def _type(schema: dict[str, Any]) -> str:
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return "|".join(_literal(v) for v in enum)
    kind = schema.get("type")
    if isinstance(kind, list):
        return "|".join(str(k) for k in kind)
    if kind == "array":
        items = schema.get("items")
        return f"[{_type(items)}]" if isinstance(items, dict) else "array"
    if kind == "object" and isinstance(schema.get("properties"), dict):
        return signature(schema)
    if kind is None:
        options = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(options, list) and options:
            return "|".join(_type(o) for o in options if isinstance(o, dict))
        return "any"
    return str(kind)


def _literal(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower()


def _server_detail(entry: Any) -> str:
    if not isinstance(entry, dict):
        return ""
    if entry.get("url"):
        return str(entry["url"])
    args = entry.get("args") or []
    return " ".join([str(entry.get("command", "")), *(str(a) for a in args)]).strip()


def listing(system: System, probe: list[str] | None = None) -> list[dict[str, Any]]:
    """Every device, and every configured MCP server; the servers in `probe` are started
    (their tools listed), the others are not."""
    table = system.syscalls
    servers: dict[str, Any] = dict(system.config.mcp_servers)
    problems = table.mount(sorted(s for s in (probe or []) if s in servers))
    mounted = set(servers) - set(table.unmounted()) - set(problems)
    sep = params.MCP_TOOL_NAME_SEP
    rows: list[dict[str, Any]] = []
    for name, device in table.devices.items():
        server = name.split(sep, 1)[0] if sep in name else None
        if server is not None and server in servers:
            status = "running"
            kind = "mcp"
        else:
            status = "on" if device.default_on else "off unless granted"
            kind = "device"
        rows.append(
            {
                "name": name,
                "kind": kind,
                "status": status,
                "description": device.description,
                "call": signature(device.schema),
                "schema": device.schema,
            }
        )
    for server, entry in servers.items():
        disabled = isinstance(entry, dict) and entry.get("disabled") is True
        if disabled:
            status = "disabled"
        elif server in problems:
            status = "failed"
        elif server in mounted:
            status = "running"
        else:
            status = "not started"
        row: dict[str, Any] = {
            "name": f"{server}{sep}*",
            "kind": "mcp server",
            "status": status,
            "description": _server_detail(entry),
        }
        if server in problems:
            row["error"] = problems[server]
        rows.append(row)
    return sorted(rows, key=lambda r: str(r["name"]))
