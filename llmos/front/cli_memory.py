"""The `llmos memory` and `llmos shm` commands: long-term memory and shared segments by hand.

    llmos memory remember [TEXT] [-t TAG ...]    (TEXT or piped stdin) prints the new id
    llmos memory recall QUERY [-k N] [--json]     hybrid search, best first
    llmos memory forget ID                        ID as m12 or 12
    llmos memory list [-n N] [--json]
    llmos memory page ID                          print a page a process paged out (p7)

    llmos shm ls [--json]
    llmos shm create NAME [TEXT] [--others r|rw] [--grant USER=r|rw ...]
    llmos shm read NAME [--raw]   llmos shm write NAME [TEXT] [--append] [--if-version V]
    llmos shm chmod NAME [--others MODE] [--grant USER=MODE ...]     llmos shm rm NAME

They act as the OS user running them (its uid's user name, never $USER: the same owner
`llmos run` gives its processes), on
<home>/memory.db directly: no kernel is needed, and a running kernel sees the changes.
Errors are one line each: bad input exits 4, a store that is corrupt, locked or full exits 15,
a refused access exits 16, no memory, page or segment by that id or name exits 21. `shm read`
ends its text with a newline (unless `--raw`); `shm write --append` adds its text as a new line.

What this module does not do: store or check anything itself (the kernel's API does,
`llmos.kernel.api`).
"""

from __future__ import annotations

import json
import sys

import click

from llmos import params
from llmos.errors import InputError
from llmos.front.clikit import handle_errors, local_call, read_stdin


def _text(text: str | None, what: str) -> str:
    if text is None:
        text = read_stdin()
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


@click.group()
def memory() -> None:
    """Long-term memory: remember, recall, forget (kept across runs and reboots)."""


@memory.command("remember")
@click.argument("text", required=False)
@click.option("-t", "--tag", "tags", multiple=True, help="A tag (repeatable).")
@handle_errors
def memory_remember(text: str | None, tags: tuple[str, ...]) -> None:
    """Store TEXT (or stdin) as a memory; prints its id."""
    reply = local_call("memory.remember", text=_text(text, "memory text"), tags=list(tags))
    click.echo(f"m{reply['id']}")


@memory.command("recall")
@click.argument("query")
@click.option("-k", type=click.IntRange(1, params.RECALL_MAX_K), default=params.RECALL_DEFAULT_K)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def memory_recall(query: str, k: int, as_json: bool) -> None:
    """The memories most relevant to QUERY, best first."""
    hits = local_call("memory.recall", query=query, k=k)["hits"]
    if as_json:
        click.echo(json.dumps(hits, ensure_ascii=False))
        return
    for hit in hits:
        tags = f"  [{', '.join(hit['tags'])}]" if hit.get("tags") else ""
        click.echo(f"{hit['id']}\t{hit['score']:.4f}\t{hit['text']}{tags}")


@memory.command("forget")
@click.argument("memory_id", metavar="ID")
@handle_errors
def memory_forget(memory_id: str) -> None:
    """Delete one of your memories."""
    raw = memory_id[1:] if memory_id.startswith("m") else memory_id
    if not raw.isdigit():
        raise InputError(f"bad memory id {memory_id!r} (expected m<number>)")
    local_call("memory.forget", id=int(raw))
    click.echo(f"forgot m{raw}")


@memory.command("list")
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=1),
    default=params.MEMORY_LIST_DEFAULT,
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def memory_list(limit: int, as_json: bool) -> None:
    """Your newest memories."""
    hits = local_call("memory.list", limit=limit)["hits"]
    if as_json:
        click.echo(json.dumps(hits, ensure_ascii=False))
        return
    for hit in hits:
        click.echo(f"{hit['id']}\t{hit['text']}")


@memory.command("page")
@click.argument("page_id", metavar="ID")
@handle_errors
def memory_page(page_id: str) -> None:
    """Print a page that one of your processes paged out."""
    raw = page_id[1:] if page_id.startswith("p") else page_id
    if not raw.isdigit():
        raise InputError(f"bad page id {page_id!r} (expected p<number>)")
    sys.stdout.write(local_call("memory.page", id=int(raw))["page"]["text"])


@click.group()
def shm() -> None:
    """Shared memory segments: named text that processes and users share, with rights."""


@shm.command("ls")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def shm_ls(as_json: bool) -> None:
    """The segments you may read."""
    segs = local_call("shm.ls")["segments"]
    if as_json:
        click.echo(json.dumps(segs))
        return
    for s in segs:
        acl = ",".join(f"{u}={m}" for u, m in sorted(s["acl"].items())) or "-"
        click.echo(
            f"{s['name']}\towner={s['owner']}\tothers={s['others'] or '-'}\tacl={acl}"
            f"\tv{s['version']}\t{s['bytes']}B"
        )


@shm.command("create")
@click.argument("name")
@click.argument("text", required=False)
@click.option("--others", type=click.Choice(["", "r", "rw"]), default="", show_default=True)
@click.option("--grant", "grants", multiple=True, help="USER=r or USER=rw (repeatable).")
@handle_errors
def shm_create(name: str, text: str | None, others: str, grants: tuple[str, ...]) -> None:
    """Create segment NAME, owned by you."""
    body = text if text is not None else (read_stdin() or "")
    seg = local_call("shm.create", name=name, text=body, others=others, acl=_grants(grants))[
        "segment"
    ]
    click.echo(f"{seg['name']} v{seg['version']}")


@shm.command("read")
@click.argument("name")
@click.option("--raw", is_flag=True, help="Exactly the stored text (no newline added).")
@handle_errors
def shm_read(name: str, raw: bool) -> None:
    """Print segment NAME's text, ending in a newline (unless --raw)."""
    text = local_call("shm.read", name=name)["text"]
    if not raw and text and not text.endswith("\n"):
        text += "\n"
    sys.stdout.write(text)


@shm.command("write")
@click.argument("name")
@click.argument("text", required=False)
@click.option(
    "--append", is_flag=True, help="Add TEXT as a new line at the end instead of replacing."
)
@click.option("--if-version", type=click.IntRange(min=0), help="Fail unless at this version.")
@handle_errors
def shm_write(name: str, text: str | None, append: bool, if_version: int | None) -> None:
    """Write segment NAME (TEXT or stdin)."""
    seg = local_call(
        "shm.write",
        name=name,
        text=_text(text, "segment text"),
        append=append,
        if_version=if_version,
    )["segment"]
    click.echo(f"{seg['name']} v{seg['version']}")


@shm.command("chmod")
@click.argument("name")
@click.option("--others", type=click.Choice(["", "r", "rw"]))
@click.option("--grant", "grants", multiple=True, help="USER=r, USER=rw, or USER= to revoke.")
@handle_errors
def shm_chmod(name: str, others: str | None, grants: tuple[str, ...]) -> None:
    """Change who may read and write segment NAME (owner only)."""
    seg = local_call("shm.chmod", name=name, others=others, grant=_grants(grants))["segment"]
    acl = ",".join(f"{u}={m}" for u, m in sorted(seg["acl"].items())) or "-"
    click.echo(f"{seg['name']} others={seg['others'] or '-'} acl={acl}")


@shm.command("rm")
@click.argument("name")
@handle_errors
def shm_rm(name: str) -> None:
    """Remove segment NAME (owner only)."""
    local_call("shm.rm", name=name)
    click.echo(f"removed {name}")
