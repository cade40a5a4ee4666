"""`llmos logs`: list the logged runs, search them, show one in full (its messages, its agent
steps, its outcome), follow a live process (`-f PID`), turn journalling off and on.

One formatter for a step (`step_line`), shared by `llmos run --trace` (as it happens) and
`llmos logs RUN_ID` (afterwards), so both read the same. A user sees their own runs; root and
admins see every owner's.

`llmos logs off|on|status` (`switch`) sets or shows `logging` in config.json. While it is off,
runs are not journalled; the audit trail, the usage ledger, paged-out context (swap pages) and
the kernel daemon's process journal are still kept. A running kernel daemon reads the setting
when it starts.

What this module does not do: write the log (`llmos.store.log`), or load the kernel before
the command runs.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import click

from llmos import config, params
from llmos.errors import InputError, NoSuchRunError
from llmos.front.clikit import handle_errors

if TYPE_CHECKING:
    from llmos.store.runrecord import RunRecord

SWITCH_WORDS = ("off", "on", "status")


def switch(word: str) -> None:
    """`llmos logs off|on|status`: turn journalling off or on in config.json, or say which."""
    home = config.home()
    if word in ("off", "on"):
        wanted = word == "on"

        def change(raw: dict[str, Any]) -> None:
            if wanted:
                raw.pop("logging", None)  # on is the default
            else:
                raw["logging"] = False

        config.update(home, change)
        if wanted:
            click.echo("llmos: logging is on: runs are journalled again", err=True)
        else:
            click.echo(
                "llmos: logging is off: runs are not journalled (the audit trail and usage are"
                " still kept); `llmos logs on` turns it back on",
                err=True,
            )
        return
    from llmos.kernel import boot

    system = boot.boot()
    count = system.log.count_runs()
    state = "on" if system.config.logging else "off"
    runs = f"{count} run{'' if count == 1 else 's'}"
    click.echo(f"logging is {state}: {runs} in {system.log.path}")


def step_line(step: dict[str, Any]) -> str:
    """One agent step as a line: a syscall and its outcome, a malformed call, or the answer."""
    if step.get("kind") == "syscall":
        ok = step.get("ok")
        outcome = json.dumps(step.get("result"), ensure_ascii=False) if ok else step.get("error")
        return (
            f"step {step.get('step')}: {step.get('device')}({step.get('arguments')}) -> "
            f"{'ok' if ok else 'error'}: {outcome} ({float(step.get('ms') or 0):.1f} ms)"
        )
    if step.get("kind") == "malformed":
        return f"step {step.get('step')}: malformed call: {step.get('error')}"
    return f"step {step.get('step')}: answer ({step.get('tokens')} tokens)"


def run_text(record: RunRecord, messages: list[dict[str, Any]]) -> list[str]:
    """A run in full, as lines: header, inputs, messages, steps, error, token counts."""
    lines = [f"run {record.id}  {record.program}  on {record.cpu}  [{record.status}]"]
    if record.inputs:
        lines.append(f"inputs: {json.dumps(record.inputs, ensure_ascii=False)}")
    for m in messages:
        lines.append(f"--- {m.get('role')}\n{m.get('content')}")
    steps = (record.extra or {}).get("steps") or []
    if steps:
        lines.append("--- steps")
        lines.extend(step_line(s) for s in steps)
    if record.error:
        lines.append(f"--- error ({record.error_kind})\n{record.error}")
    lines.append(
        f"--- {record.prompt_tokens} prompt + {record.completion_tokens} generated "
        f"tokens, {record.duration_ms or 0:.0f} ms"
    )
    for cpu, u in ((record.extra or {}).get("cpus") or {}).items():  # a pool's CPUs
        lines.append(
            f"    on {cpu}: {u.get('requests')} requests, {u.get('prompt_tokens')} prompt + "
            f"{u.get('generated_tokens')} generated tokens, {float(u.get('seconds') or 0):.1f}s, "
            f"cost {float(u.get('cost') or 0):.4f}"
        )
    return lines


def _run_row(r: RunRecord) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started_at))
    tokens = f"{r.prompt_tokens}+{r.completion_tokens}"
    summary = (r.response or r.error or "").replace("\n", " ")
    if len(summary) > 60:
        summary = summary[:57] + "..."
    return f"{r.id[:12]}  {when}  {r.status:<9} {r.program[:20]:<20} {tokens:>9}  {summary}"


@click.command()
@click.argument("run_id", required=False)
@click.option("-q", "--query", help="Full-text search over programs, inputs, prompts, replies.")
@click.option("-n", "--limit", type=int, default=params.LOG_LIST_DEFAULT, show_default=True)
@click.option("--program", help="Only runs of this program.")
@click.option("--model", "cpu_name", help="Only runs on this CPU (as listed, e.g. openai/qwen).")
@click.option("--status", type=click.Choice(["running", "ok", "failed", "cancelled"]))
@click.option("--json", "as_json", is_flag=True)
@click.option("-r", "--reply", is_flag=True, help="Print only the last run's reply.")
@click.option(
    "-f",
    "--follow",
    "follow_pid",
    type=int,
    metavar="PID",
    help="Follow a live kernel process's output until it ends.",
)
@handle_errors
def logs(
    run_id: str | None,
    query: str | None,
    limit: int,
    program: str | None,
    cpu_name: str | None,
    status: str | None,
    as_json: bool,
    reply: bool,
    follow_pid: int | None,
) -> None:
    """List logged runs, search them, or show one run in full; -f PID follows a process.

    `llmos logs path` prints the log database's path; `llmos logs off|on|status` turns
    journalling off or on (stored in config.json) or says which; -r prints the newest
    (matching) run's reply, or RUN_ID's."""
    if follow_pid is not None:
        if run_id is not None:
            raise click.UsageError("give either RUN_ID or -f PID, not both")
        from llmos.front.cli_procs import follow  # the daemon's client

        follow(follow_pid)
        return
    if run_id in SWITCH_WORDS:
        switch(run_id)
        return
    from llmos.kernel import boot
    from llmos.kernel.security import principals

    me = principals.current()
    owner = None if me.admin else me.owner  # a user sees their own runs; an admin sees all
    system = boot.boot()
    log = system.log
    if run_id == "path":
        click.echo(str(log.path))
        return
    if reply and not run_id:
        found = log.list_runs(
            limit=1, query=query, program=program, status=status, owner=owner, cpu=cpu_name
        )
        if not found:
            raise InputError(f"no logged run matches in {log.path}")
        run_id = found[0].id
    if run_id:
        record = log.get_run(run_id, owner)
        if record is None:
            raise NoSuchRunError(f"no run with id '{run_id}' in {log.path}")
        if reply:
            click.echo(record.response or "")
            return
        messages = log.messages(record.id, owner)
        if as_json:
            click.echo(json.dumps({**record.to_json(), "messages": messages}, ensure_ascii=False))
            return
        click.echo("\n".join(run_text(record, messages)))
        return
    rows = log.list_runs(
        limit=limit, query=query, program=program, status=status, owner=owner, cpu=cpu_name
    )
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], ensure_ascii=False))
        return
    for r in rows:
        click.echo(_run_row(r))
