"""`llmos devices`: the devices a program can declare, how to call each, and the MCP servers.

    llmos devices [--probe] [--json]      every device with its status and call format, and
                                          every configured MCP server (not started: --probe
                                          starts them all and lists their tools)
    llmos devices NAME [--json]           one device in full (description, call format, JSON
                                          Schema); NAME an MCP server (`time` or `time.*`)
                                          starts it and lists its tools with their schemas

The call format is derived from the device's schema (`llmos.kernel.devinfo`): `?` marks an
optional argument. Errors are one line: an unknown NAME exits 21, an MCP server that cannot
start exits 6. Servers started here are stopped before the command returns.

What this module does not do: call a device, or start a server it was not asked to.
"""

from __future__ import annotations

import json
from typing import Any

import click

from llmos import params
from llmos.errors import BackendError, NotFoundError
from llmos.front.clikit import handle_errors


@click.command()
@click.argument("name", required=False)
@click.option("--probe", is_flag=True, help="Start every MCP server to list its tools.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def devices(name: str | None, probe: bool, as_json: bool) -> None:
    """List the devices programs can declare, with their call formats, and the MCP servers."""
    from llmos.kernel import boot, devinfo  # the kernel only when the command runs

    system = boot.boot(open_log=False)
    try:
        servers = list(system.config.mcp_servers)
        if name is None:
            rows = devinfo.listing(system, servers if probe else None)
            _show_all(rows, as_json)
            return
        server = name.removesuffix(f"{params.MCP_TOOL_NAME_SEP}*")
        if server not in servers and params.MCP_TOOL_NAME_SEP in name:
            server = name.split(params.MCP_TOOL_NAME_SEP, 1)[0]
        rows = devinfo.listing(system, [server] if server in servers else None)
        if server in servers:
            (head,) = [r for r in rows if r["name"] == f"{server}{params.MCP_TOOL_NAME_SEP}*"]
            if head["status"] != "running":
                raise BackendError(head.get("error") or f"server {server} is {head['status']}")
        if server in servers and name in (server, f"{server}{params.MCP_TOOL_NAME_SEP}*"):
            prefix = f"{server}{params.MCP_TOOL_NAME_SEP}"
            chosen = [r for r in rows if str(r["name"]).startswith(prefix)]
        else:
            chosen = [r for r in rows if r["name"] == name]
        if not chosen:
            raise NotFoundError(f"no device or MCP server '{name}' (see llmos devices)")
        if as_json:
            click.echo(json.dumps(chosen))
            return
        for i, row in enumerate(chosen):
            if i:
                click.echo("")
            _show_one(row)
    finally:
        system.close()


def _show_all(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows))
        return
    width = max((len(str(r["name"])) for r in rows), default=0)
    for row in rows:
        detail = row["call"] if "call" in row else row["description"]
        if "error" in row:
            detail = f"{detail}: {row['error']}"
        click.echo(f"{row['name']:<{width}}  {row['status']:<18}  {detail}")


def _show_one(row: dict[str, Any]) -> None:
    click.echo(f"{row['name']} ({row['kind']}, {row['status']})")
    if row.get("description"):
        click.echo(f"  {row['description']}")
    if "call" in row:
        click.echo(f"  call: {row['name']} {row['call']}")
        schema = json.dumps(row["schema"], indent=2, ensure_ascii=False)
        click.echo("  schema: " + schema.replace("\n", "\n  "))
