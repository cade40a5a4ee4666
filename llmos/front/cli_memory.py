"""The `llmos memory` and `llmos shm` commands: long-term memory and shared segments by hand.

    llmos memory remember [TEXT] [-t TAG ...]    (TEXT or piped stdin) prints the new id
    llmos memory recall QUERY [-k N] [--json]     hybrid search, best first
    llmos memory forget ID                        ID as m12 or 12
    llmos memory list [-n N] [--json]
    llmos memory page ID                          print a page a process paged out (p7)

    llmos shm ls [--json]
    llmos shm create NAME [TEXT] [--others r|rw] [--grant USER=r|rw ...]
    llmos shm read NAME           llmos shm write NAME [TEXT] [--append] [--if-version V]
    llmos shm chmod NAME [--others MODE] [--grant USER=MODE ...]     llmos shm rm NAME

They act as the OS user running them (the same owner `llmos run` gives its processes), on
<home>/memory.db directly: no kernel is needed, and a running kernel sees the changes.
Errors are one line each: bad input exits 4, a store that is corrupt, locked or full exits 15,
a refused access exits 16.

What this module does not do: store or check anything itself (see `llmos.memory`, `llmos.shm`).
"""

from __future__ import annotations

import getpass
import json
import sys

import click

from llmos import params
from llmos.errors import InputError
from llmos.front.cli import _read_stdin, cli, handle_errors
from llmos.kernel import boot
from llmos.store.shm import SharedMemory


def _text(text: str | None, what: str) -> str:
    if text is None:
        text = _read_stdin()
    if text is None:
        raise InputError(f"no {what}: give it as an argument or on stdin")
    return text


def _grants(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        user, sep, mode = pair.partition("=")
        if not sep or not user:
            raise InputError(f"bad --grant {pair!r}: use USER=r, USER=rw or USER= (revoke)")
        out[user] = mode
    return out


@cli.group()
def memory() -> None:
    """Long-term memory: remember, recall, forget (kept across runs and reboots)."""


@memory.command("remember")
@click.argument("text", required=False)
@click.option("-t", "--tag", "tags", multiple=True, help="A tag (repeatable).")
@handle_errors
def memory_remember(text: str | None, tags: tuple[str, ...]) -> None:
    """Store TEXT (or stdin) as a memory; prints its id."""
    mid = boot.boot(open_log=False).memory.remember(
        getpass.getuser(), _text(text, "memory text"), list(tags), source="cli"
    )
    click.echo(f"m{mid}")


@memory.command("recall")
@click.argument("query")
@click.option("-k", type=click.IntRange(1, params.RECALL_MAX_K), default=params.RECALL_DEFAULT_K)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def memory_recall(query: str, k: int, as_json: bool) -> None:
    """The memories most relevant to QUERY, best first."""
    hits = boot.boot(open_log=False).memory.recall(getpass.getuser(), query, k)
    if as_json:
        click.echo(json.dumps([h.to_json() for h in hits], ensure_ascii=False))
        return
    for hit in hits:
        tags = f"  [{', '.join(hit.tags)}]" if hit.tags else ""
        click.echo(f"{hit.ref}\t{hit.score:.4f}\t{hit.text}{tags}")


@memory.command("forget")
@click.argument("memory_id", metavar="ID")
@handle_errors
def memory_forget(memory_id: str) -> None:
    """Delete one of your memories."""
    raw = memory_id[1:] if memory_id.startswith("m") else memory_id
    if not raw.isdigit():
        raise InputError(f"bad memory id {memory_id!r} (expected m<number>)")
    if not boot.boot(open_log=False).memory.forget(getpass.getuser(), int(raw)):
        raise InputError(f"no memory m{raw} of {getpass.getuser()}")
    click.echo(f"forgot m{raw}")


@memory.command("list")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def memory_list(limit: int, as_json: bool) -> None:
    """Your newest memories."""
    hits = boot.boot(open_log=False).memory.memories(getpass.getuser(), limit)
    if as_json:
        click.echo(json.dumps([h.to_json() for h in hits], ensure_ascii=False))
        return
    for hit in hits:
        click.echo(f"{hit.ref}\t{hit.text}")


@memory.command("page")
@click.argument("page_id", metavar="ID")
@handle_errors
def memory_page(page_id: str) -> None:
    """Print a page that one of your processes paged out."""
    raw = page_id[1:] if page_id.startswith("p") else page_id
    if not raw.isdigit():
        raise InputError(f"bad page id {page_id!r} (expected p<number>)")
    page = boot.boot(open_log=False).memory.page(getpass.getuser(), int(raw))
    if page is None:
        raise InputError(f"no page p{raw} of {getpass.getuser()}")
    sys.stdout.write(page["text"])


@cli.group()
def shm() -> None:
    """Shared memory segments: named text that processes and users share, with rights."""


def _shm() -> SharedMemory:
    return SharedMemory(boot.boot(open_log=False).memory)


@shm.command("ls")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def shm_ls(as_json: bool) -> None:
    """The segments you may read."""
    segs = _shm().list(getpass.getuser())
    if as_json:
        click.echo(json.dumps([s.info() for s in segs]))
        return
    for s in segs:
        acl = ",".join(f"{u}={m}" for u, m in sorted(s.acl.items())) or "-"
        click.echo(
            f"{s.name}\towner={s.owner}\tothers={s.others or '-'}\tacl={acl}\tv{s.version}"
            f"\t{s.info()['bytes']}B"
        )


@shm.command("create")
@click.argument("name")
@click.argument("text", required=False)
@click.option("--others", type=click.Choice(["", "r", "rw"]), default="", show_default=True)
@click.option("--grant", "grants", multiple=True, help="USER=r or USER=rw (repeatable).")
@handle_errors
def shm_create(name: str, text: str | None, others: str, grants: tuple[str, ...]) -> None:
    """Create segment NAME, owned by you."""
    seg = _shm().create(
        getpass.getuser(),
        name,
        text if text is not None else (_read_stdin() or ""),
        others=others,
        acl=_grants(grants),
    )
    click.echo(f"{seg.name} v{seg.version}")


@shm.command("read")
@click.argument("name")
@handle_errors
def shm_read(name: str) -> None:
    """Print segment NAME's text."""
    sys.stdout.write(_shm().read(getpass.getuser(), name).text)


@shm.command("write")
@click.argument("name")
@click.argument("text", required=False)
@click.option("--append", is_flag=True, help="Add to the end instead of replacing.")
@click.option("--if-version", type=click.IntRange(min=0), help="Fail unless at this version.")
@handle_errors
def shm_write(name: str, text: str | None, append: bool, if_version: int | None) -> None:
    """Write segment NAME (TEXT or stdin)."""
    seg = _shm().write(
        getpass.getuser(), name, _text(text, "segment text"), append=append, if_version=if_version
    )
    click.echo(f"{seg.name} v{seg.version}")


@shm.command("chmod")
@click.argument("name")
@click.option("--others", type=click.Choice(["", "r", "rw"]))
@click.option("--grant", "grants", multiple=True, help="USER=r, USER=rw, or USER= to revoke.")
@handle_errors
def shm_chmod(name: str, others: str | None, grants: tuple[str, ...]) -> None:
    """Change who may read and write segment NAME (owner only)."""
    seg = _shm().chmod(getpass.getuser(), name, others=others, grant=_grants(grants))
    acl = ",".join(f"{u}={m}" for u, m in sorted(seg.acl.items())) or "-"
    click.echo(f"{seg.name} others={seg.others or '-'} acl={acl}")


@shm.command("rm")
@click.argument("name")
@handle_errors
def shm_rm(name: str) -> None:
    """Remove segment NAME (owner only)."""
    _shm().remove(getpass.getuser(), name)
    click.echo(f"removed {name}")
