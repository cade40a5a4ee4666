"""The `llmos serve` and `llmos user` commands: the kernel as a network service, and its users.

    llmos serve [--host H] [--port P] [--policy P] [--max-resident N] [--max-processes N]
                [--metrics-auth]
    llmos user add NAME [--admin]      prints NAME's token once (store it: it is not kept)
    llmos user rotate NAME             a new token; the old ones stop working at once
    llmos user revoke NAME             every token of NAME stops working
    llmos user remove NAME             the user and their tokens are deleted
    llmos user list [--json]           users, live tokens, when one was last used

`llmos user` works on <home>/users.db directly (no server needed; a running server sees the
change at its next request). Errors are one line: a bad name or unknown user exits 20.

What this module does not do: serve anything itself (see `llmos.front.serve.main`).
"""

from __future__ import annotations

import json
import time

import click

from llmos import params
from llmos.front.clikit import handle_errors


def _users():  # type: ignore[no-untyped-def]
    from llmos import config
    from llmos.store.users import UserStore

    return UserStore.open(config.home(create=True) / params.USERS_DB_NAME)


@click.command()
@click.option("--host", default=params.SERVE_HOST, show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=params.SERVE_PORT, show_default=True)
@click.option(
    "--policy",
    default=params.SERVE_SCHED_POLICY,
    show_default=True,
    help="Scheduling policy (fair: each user gets the same share).",
)
@click.option("--max-resident", type=click.IntRange(1), default=params.MAX_RESIDENT)
@click.option("--max-processes", type=click.IntRange(1), default=params.MAX_PROCESSES)
@click.option("--metrics-auth", is_flag=True, help="/metrics needs an admin's bearer token.")
@handle_errors
def serve(
    host: str, port: int, policy: str, max_resident: int, max_processes: int, metrics_auth: bool
) -> None:
    """Serve the kernel over HTTP: REST, OpenAI-compatible /v1, metrics (until SIGTERM)."""
    from llmos.front.serve.main import serve as run_server
    from llmos.kernel import boot

    run_server(
        boot.boot(),
        host=host,
        port=port,
        policy=policy,
        max_resident=max_resident,
        max_processes=max_processes,
        metrics_auth=metrics_auth,
    )


@click.group()
def user() -> None:
    """Users of `llmos serve` and their bearer tokens."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May act on every user's processes.")
@handle_errors
def user_add(name: str, admin: bool) -> None:
    """Create NAME and print their token (shown only this once)."""
    store = _users()
    try:
        token = store.add(name, admin=admin)
    finally:
        store.close()
    click.echo(token)
    click.echo(
        f"llmos: user {name} added{' (admin)' if admin else ''}; "
        "the token above is not shown again",
        err=True,
    )


@user.command("rotate")
@click.argument("name")
@handle_errors
def user_rotate(name: str) -> None:
    """Print a new token for NAME; their older tokens stop working."""
    store = _users()
    try:
        token = store.rotate(name)
    finally:
        store.close()
    click.echo(token)


@user.command("revoke")
@click.argument("name")
@handle_errors
def user_revoke(name: str) -> None:
    """Revoke every token of NAME (`rotate` gives them a new one)."""
    store = _users()
    try:
        n = store.revoke(name)
    finally:
        store.close()
    click.echo(f"llmos: revoked {n} token{'s' if n != 1 else ''} of {name}", err=True)


@user.command("remove")
@click.argument("name")
@handle_errors
def user_remove(name: str) -> None:
    """Delete NAME and their tokens (their files and memories stay)."""
    store = _users()
    try:
        store.remove(name)
    finally:
        store.close()
    click.echo(f"llmos: user {name} removed", err=True)


@user.command("list")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def user_list(as_json: bool) -> None:
    """The users, whether each is an admin, and their live tokens."""
    store = _users()
    try:
        rows = store.list()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'NAME':<20} {'ADMIN':<6} {'TOKENS':<7} LAST USED")
    for r in rows:
        last = r["last_used_at"]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(last))) if last else "-"
        click.echo(
            f"{r['name']!s:<20} {'yes' if r['admin'] else 'no':<6} {r['live_tokens']!s:<7} {when}"
        )
