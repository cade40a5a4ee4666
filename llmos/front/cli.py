"""The `llmos` command line.

stdout carries only answers (so commands pipe); diagnostics go to stderr. Every error is one
line, `llmos: error: <message>`, and a distinct exit code (see `llmos.errors`); a traceback is
shown only with `LLMOS_DEBUG=1`.

    llmos run PROGRAM [-i key=value ...] [--model M] [--json] [-v]
    llmos models [add NAME SOURCE [--default] | default NAME | rm NAME]   (llmos.front.cli_models)
    llmos programs
    llmos devices [NAME] [--probe] [--json]   devices, call formats, MCP servers (cli_devices)
    llmos logs [RUN_ID] [-q QUERY] [-n N] [--program P] [--status S] [--json]
                                           (your own runs; root and admins see every owner's)
    llmos logs -f PID                      follow a kernel process's output as it is generated
    llmos logs off|on|status               stop or resume journalling runs (config.json)
    llmos memory remember|recall|forget|list|page    llmos shm ls|create|read|write|chmod|rm
                                           (see llmos.front.cli_memory)

The kernel daemon (see `llmos.front.kerneld`); these talk to it over its socket:

    llmos kernel start [--policy P] [--max-resident N] [--max-processes N] | stop | status
    llmos run -d PROGRAM ...               start a background process; prints its pid
    llmos ps [--all] [--json]    llmos kill PID...    llmos stop PID    llmos cont PID
    llmos renice PRIORITY PID    llmos wait PID [--timeout S]    llmos top [--once]
    llmos migrate PID CPU
    llmos approve PID    llmos deny PID    decide a syscall waiting for approval
    llmos audit [--pid P] [--device D] [--decision X] [-n N] [--verify] [--json]

Who you are is the OS user (its uid's name, never $USER; see
`llmos.kernel.security.principals`): in-process commands take it from this process, the daemon
from its socket. Processes, runs, memories and shared segments are all scoped to it.

Exit codes of `wait` and `logs -f`: 0 the process ended ok, 14 it was killed, ran out of
budget or failed, 124 `wait --timeout` ran out; 13 there is no kernel to ask.

What this module does not do: any work of its own. It parses arguments, calls the modules that
do the work, and formats what they return.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from llmos import config, params
from llmos.errors import (
    EXIT_INTERRUPTED,
    AuditError,
    InputError,
    KernelError,
    LlmosError,
    NoSuchRunError,
)
from llmos.front import cli_logs, cli_prompt
from llmos.front.cli_chat import chat
from llmos.front.cli_devices import devices
from llmos.front.cli_memory import memory, shm
from llmos.front.cli_models import models
from llmos.front.cli_serve import serve, user
from llmos.front.clikit import fail, handle_errors, local_call, read_stdin
from llmos.front.progress import ProgressLine
from llmos.front.shell.command import shell

if TYPE_CHECKING:
    from llmos.front.kclient import KernelClient
    from llmos.store.log import RunRecord


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmos")
def cli() -> None:
    """llmos: an operating system for the LLM computer."""


cli.add_command(memory)
cli.add_command(models)
cli.add_command(shm)
cli.add_command(serve)
cli.add_command(user)
cli.add_command(chat)
cli.add_command(shell)
cli.add_command(devices)


@cli.command()
@click.argument("program_ref", metavar="[PROGRAM]", required=False)
@click.option("-p", "--prompt", help="An ad-hoc prompt to run without a program file.")
@click.option("-s", "--system", "system_prompt", help="With -p: a system prompt.")
@click.option(
    "-c", "--continue", "continue_", is_flag=True, help="With -p: continue the last -p run."
)
@click.option("--cid", metavar="RUN_ID", help="With -p: continue the conversation of this run.")
@click.option(
    "-o",
    "--option",
    "option_pairs",
    type=(str, str),
    multiple=True,
    metavar="KEY VALUE",
    help="A model option (a config key), e.g. -o temperature 0.2 (repeatable).",
)
@click.option(
    "-i",
    "--input",
    "input_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A program input (repeatable). Piped stdin is the input named 'input'.",
)
@click.option("-m", "--model", help="CPU to run on: embedded, openai/<model>, PATH.gguf, alias.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the result.")
@click.option("-v", "--verbose", is_flag=True, help="Print run statistics on stderr.")
@click.option("--trace", is_flag=True, help="Show each agent step (syscalls) on stderr.")
@click.option(
    "-d",
    "--detach",
    is_flag=True,
    help="Run as a background process of the kernel daemon; print its pid.",
)
@click.option(
    "--priority",
    type=click.IntRange(params.MIN_PRIORITY, params.MAX_PRIORITY),
    help="With -d: scheduling priority (0-39; out of range is refused, exit 2).",
)
@click.option("--budget", type=click.IntRange(min=0), help="With -d: most tokens it may use.")
@handle_errors
def run(
    program_ref: str | None,
    prompt: str | None,
    system_prompt: str | None,
    continue_: bool,
    cid: str | None,
    option_pairs: tuple[tuple[str, str], ...],
    input_pairs: tuple[str, ...],
    model: str | None,
    as_json: bool,
    verbose: bool,
    trace: bool,
    detach: bool,
    priority: int | None,
    budget: int | None,
) -> None:
    """Run PROGRAM (a .prompt, SKILL.md folder, .md file, or an installed name), or -p PROMPT."""
    config = cli_prompt.options(option_pairs)
    if (program_ref is None) == (prompt is None):
        raise click.UsageError("give either PROGRAM or -p PROMPT")
    if prompt is not None and (detach or input_pairs):
        raise click.UsageError("-p runs in this process and takes no -i inputs (no -d)")
    if (continue_ or cid) and prompt is None:
        raise click.UsageError("-c and --cid continue a conversation: they need -p")
    if system_prompt is not None and prompt is None:
        raise click.UsageError("-s needs -p (a program file has its own system prompt)")
    if detach and config:
        raise click.UsageError("-o is not available with -d")
    if detach:
        assert program_ref is not None
        _run_detached(program_ref, input_pairs, model, priority, budget, as_json)
        return
    if priority is not None or budget is not None:
        raise click.UsageError("--priority and --budget need -d (a kernel process)")
    from llmos.kernel import api, boot, cpus, plugins  # the kernel only for commands that run
    from llmos.kernel.core import Kernel
    from llmos.kernel.security import principals

    caller = api.Caller.of(principals.current())
    system = boot.boot()
    kernel = Kernel(system)
    inputs: dict[str, Any] = {}
    if prompt is not None:
        history = (
            cli_prompt.conversation(system, caller, cid, continue_) if cid or continue_ else None
        )
        prog = cli_prompt.adhoc(prompt, system_prompt, read_stdin(), config, history)
    else:
        assert program_ref is not None
        request = api.SpawnRequest(
            program=program_ref, cwd=os.getcwd(), input_pairs=list(input_pairs)
        )
        prog, inputs = api.spawn_request(kernel, caller, request)
        if config:
            prog = dataclasses.replace(prog, config={**prog.config, **config})
    progress = ProgressLine()  # notices, and on a terminal the work before the first token
    try:
        if prompt is None:
            inputs = api.with_stdin(inputs, read_stdin())  # read once the program has loaded
        plugins.size_window(prog.window_needed(inputs))  # KV for what this one run needs
        progress.show(cpus.slow_start(model or prog.model, system.config))
        cpu = kernel.cpu(model or prog.model)
    except LlmosError as exc:
        system.log_failure(prog.name, exc, str(prog.path), caller.owner)
        raise
    finally:
        progress.clear()

    wrote_newline = True
    # stdout and stderr on one terminal: a diagnostic line must not start mid-answer.
    shared_tty = sys.stdout.isatty() and sys.stderr.isatty()

    def emit(text: str) -> None:
        nonlocal wrote_newline
        progress.clear()
        sys.stdout.write(text)
        sys.stdout.flush()
        if text:
            wrote_newline = text.endswith("\n")

    def on_trace(step: dict[str, Any]) -> None:
        nonlocal wrote_newline
        progress.clear()
        if shared_tty and not wrote_newline:
            sys.stdout.write("\n")
            sys.stdout.flush()
            wrote_newline = True
        _trace(step)

    try:
        result = api.run(
            kernel,
            caller,
            prog,
            inputs,
            cpu=cpu,
            on_text=None if as_json else emit,
            on_trace=on_trace if trace else None,
            on_event=progress.event,
        )
    finally:
        progress.clear()
    if as_json:
        click.echo(json.dumps(result.to_json(prog, cpu.name), ensure_ascii=False))
    elif not wrote_newline:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if verbose:
        click.echo(
            f"llmos: run {result.run_id} on {cpu.name}: {result.prompt_tokens} prompt + "
            f"{result.completion_tokens} generated tokens, first token "
            f"{(result.ttft_ms or 0):.0f} ms, {result.tokens_per_s:.1f} tok/s, "
            f"window {cpu.n_ctx} tokens",
            err=True,
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def programs(as_json: bool) -> None:
    """List installed programs and skills."""
    from llmos.kernel import boot

    system = boot.boot(open_log=False)
    problems: list[LlmosError] = []
    found = system.discover_programs(problems)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": p.name,
                        "kind": p.kind,
                        "description": p.description,
                        "path": str(p.path),
                    }
                    for p in found
                ]
            )
        )
    else:
        for p in found:
            click.echo(f"{p.name:<24} {p.kind:<10} {p.description}")
        if not found:
            dirs = ", ".join(str(d) for d in system.search_dirs)
            click.echo(f"llmos: no programs installed (searched {dirs})", err=True)
    for problem in problems:
        click.echo(f"llmos: warning: {problem}", err=True)


@cli.command("mcp")
def mcp_cmd() -> None:
    """Serve the installed programs as MCP tools over stdio (for MCP clients)."""
    from llmos.front.mcpserver import serve_stdio

    serve_stdio()


def _trace(step: dict[str, Any]) -> None:
    """One agent step on stderr, as `llmos run --trace` shows it."""
    click.echo(f"llmos: {cli_logs.step_line(step)}", err=True)


def _run_row(r: RunRecord) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started_at))
    tokens = f"{r.prompt_tokens}+{r.completion_tokens}"
    summary = (r.response or r.error or "").replace("\n", " ")
    if len(summary) > 60:
        summary = summary[:57] + "..."
    return f"{r.id[:12]}  {when}  {r.status:<9} {r.program[:20]:<20} {tokens:>9}  {summary}"


@cli.command()
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
        _follow(follow_pid)
        return
    if run_id in cli_logs.SWITCH_WORDS:
        cli_logs.switch(run_id)
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
        click.echo("\n".join(cli_logs.run_text(record, messages)))
        return
    rows = log.list_runs(
        limit=limit, query=query, program=program, status=status, owner=owner, cpu=cpu_name
    )
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], ensure_ascii=False))
        return
    for r in rows:
        click.echo(_run_row(r))


# --- The kernel daemon and its processes ---------------------------------------------------------


def _client() -> KernelClient:
    from llmos.front.kclient import KernelClient  # sockets and subprocesses: only when used

    return KernelClient(config.home(create=False))


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _lost_line(lost: list[dict[str, Any]]) -> str:
    items = ", ".join(
        f"run {x.get('run_id', '?')[:12]} {x.get('program')} (owner {x.get('owner') or '-'})"
        for x in lost
    )
    n = len(lost)
    were = "process was" if n == 1 else "processes were"
    return f"llmos: kernel restarted; {n} {were} lost: {items}"


def _run_detached(
    program_ref: str,
    input_pairs: tuple[str, ...],
    model: str | None,
    priority: int | None,
    budget: int | None,
    as_json: bool,
) -> None:
    client = _client()
    client.connect().close()  # no kernel: say so before reading stdin
    fields: dict[str, Any] = {"input_pairs": list(input_pairs)}
    stdin = read_stdin()
    if stdin is not None:
        fields["stdin"] = stdin
    for key, value in (("model", model), ("priority", priority), ("budget", budget)):
        if value is not None:
            fields[key] = value
    pid = client.spawn(program_ref, **fields)
    click.echo(json.dumps({"pid": pid}) if as_json else str(pid))


def _policy(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A scheduling policy name: a built-in (fifo, rr, priority, fair) or a plugin's."""
    from llmos.kernel import plugins

    known = list(plugins.sched_policies())
    if value is not None and value not in known:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(known)}")
    return value


@cli.group()
def kernel() -> None:
    """Start, stop and inspect the kernel daemon (programs as background processes)."""


@kernel.command("start")
@click.option("--policy", callback=_policy, help="Scheduling policy: fifo, rr, priority, fair.")
@click.option("--max-resident", type=click.IntRange(min=1), help="Processes resident in KV.")
@click.option("--max-processes", type=click.IntRange(min=1), help="Live processes allowed.")
@handle_errors
def kernel_start(policy: str | None, max_resident: int | None, max_processes: int | None) -> None:
    """Start the kernel daemon in the background; print its pid."""
    from llmos.front import kclient

    home = config.home()
    pid = kclient.start_daemon(
        home, policy=policy, max_resident=max_resident, max_processes=max_processes
    )
    status = kclient.KernelClient(home).request("status")
    click.echo(str(pid))
    click.echo(f"llmos: kernel started (pid {pid}, policy {status.get('policy')})", err=True)
    lost = status.get("lost") or []
    if lost:
        click.echo(_lost_line(lost), err=True)


@kernel.command("serve")
@click.option("--policy", callback=_policy, default=params.SCHED_POLICY)
@click.option("--max-resident", type=click.IntRange(min=1), default=params.MAX_RESIDENT)
@click.option("--max-processes", type=click.IntRange(min=1), default=params.MAX_PROCESSES)
@handle_errors
def kernel_serve(policy: str, max_resident: int, max_processes: int) -> None:
    """Run the kernel daemon in the foreground (`kernel start` runs this)."""
    config.home()
    from llmos.front import kerneld  # the server side, only for `kernel serve`
    from llmos.kernel import boot

    system = boot.boot(open_log=False)
    kerneld.serve(system, policy=policy, max_resident=max_resident, max_processes=max_processes)


@kernel.command("stop")
@handle_errors
def kernel_stop() -> None:
    """Kill every process and stop the kernel daemon."""
    from llmos.front import kclient

    reply = kclient.stop_daemon(config.home(create=False))
    killed = int(reply.get("killed", 0))
    click.echo(
        f"llmos: kernel stopped (pid {reply.get('pid')}, {killed} "
        f"{'process' if killed == 1 else 'processes'} killed)",
        err=True,
    )


@kernel.command("status")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def kernel_status(as_json: bool) -> None:
    """Is the kernel running: pid, uptime, policy, processes, processes lost at its start."""
    st = _client().request("status")
    st.pop("ok", None)
    if as_json:
        click.echo(json.dumps(st, ensure_ascii=False))
        return
    counts = st.get("counts") or {}
    detail = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    click.echo(
        f"kernel running: pid {st.get('pid')}, up {_duration(float(st.get('uptime_s', 0)))}, "
        f"policy {st.get('policy')}"
    )
    click.echo(
        f"processes: {st.get('live', 0)} live"
        + (f" ({detail})" if detail else "")
        + f", {st.get('exited', 0)} exited; limits {st.get('max_processes')} processes, "
        f"{st.get('max_resident')} resident"
    )
    click.echo(f"socket: {st.get('socket')}")
    lost = st.get("lost") or []
    if lost:
        click.echo(f"lost at start: {len(lost)} process{'es' if len(lost) != 1 else ''}")
        for x in lost:
            click.echo(f"  run {x.get('run_id')} {x.get('program')} (owner {x.get('owner')})")


def _state(info: dict[str, Any]) -> str:
    if info.get("state") == "exited":
        return f"exit:{info.get('exit_status')}"
    return str(info.get("state"))


def _ctx(info: dict[str, Any]) -> str:
    used = info.get("context_used") or (
        int(info.get("prompt_tokens") or 0) + int(info.get("generated_tokens") or 0)
    )
    pages = int(info.get("pages_out") or 0)
    paged = f" +{pages}p" if pages else ""  # segments paged out to the swap store
    return f"{used}/{info.get('context_limit') or '?'}{paged}"


def _budget(info: dict[str, Any]) -> str:
    left = info.get("budget_left")
    return "-" if left is None else str(left)


PS_HEADER = (
    f"{'PID':>6} {'PPID':>5} {'OWNER':<10} {'STATE':<12} {'PRI':>3} {'TOKENS':>7} "
    f"{'CTX':>16} {'BUDGET':>7} PROGRAM"
)


def _ps_row(p: dict[str, Any]) -> str:
    tokens = int(p.get("prompt_tokens") or 0) + int(p.get("generated_tokens") or 0)
    return (
        f"{p['pid']:>6} {p.get('ppid', 0):>5} {str(p.get('owner'))[:10]:<10} "
        f"{_state(p):<12} {p.get('priority'):>3} {tokens:>7} {_ctx(p):>16} "
        f"{_budget(p):>7} {p.get('program')}"
    )


@cli.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Include exited processes.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def ps(show_all: bool, as_json: bool) -> None:
    """List the kernel's processes."""
    procs = _client().request("ps", all=show_all)["processes"]
    if as_json:
        click.echo(json.dumps(procs, ensure_ascii=False))
        return
    click.echo(PS_HEADER)
    for p in procs:
        click.echo(_ps_row(p))
        if p.get("progress"):  # long work before its first token: prefill, paging...
            click.echo(f"{'':>6} doing: {p['progress']}")
        if p.get("question"):  # waiting on `ask`: answer with `llmos answer PID TEXT`
            click.echo(f"{'':>6} asks: {p['question']}")
        if p.get("approval"):  # waiting_approval: `llmos approve PID` / `llmos deny PID`
            click.echo(f"{'':>6} wants: {p['approval']['call']} ({p['approval']['reason']})")


@cli.command()
@click.argument("pids", metavar="PID...", nargs=-1, required=True, type=int)
@handle_errors
def kill(pids: tuple[int, ...]) -> None:
    """Kill processes (each ends at its next token; its output so far is logged). A process
    that has already exited is not an error: a note says how it ended, exit 0."""
    client = _client()
    failed: LlmosError | None = None
    for pid in pids:
        try:
            reply = client.request("kill", pid=pid)
            if reply.get("already_exited"):
                status = (reply.get("process") or {}).get("exit_status")
                click.echo(f"llmos: process {pid} had already exited ({status})", err=True)
        except KernelError:
            raise
        except LlmosError as exc:
            if failed is not None:
                click.echo(f"llmos: error: {failed}", err=True)
            failed = exc
    if failed is not None:
        raise failed


@cli.command()
@click.argument("pid", type=int)
@handle_errors
def stop(pid: int) -> None:
    """Stop a process (it is preempted and keeps its place until `cont`)."""
    _client().request("stop", pid=pid)


@cli.command()
@click.argument("pid", type=int)
@handle_errors
def cont(pid: int) -> None:
    """Continue a stopped process."""
    _client().request("cont", pid=pid)


@cli.command()
@click.argument("priority", type=click.IntRange(params.MIN_PRIORITY, params.MAX_PRIORITY))
@click.argument("pid", type=int)
@handle_errors
def renice(priority: int, pid: int) -> None:
    """Give a process a new priority (0-39, never above its parent's)."""
    reply = _client().request("renice", pid=pid, priority=priority)
    click.echo(f"{pid}: priority {reply.get('old_priority')} -> {reply['process']['priority']}")


@cli.command()
@click.argument("pid", type=int)
@click.argument("cpu")
@handle_errors
def migrate(pid: int, cpu: str) -> None:
    """Move a running process to another CPU of its pool (config.json's pools)."""
    reply = _client().request("migrate", pid=pid, cpu=cpu)
    click.echo(f"{pid}: on {reply['process']['cpu']}, moving to {reply['cpu']}")


@cli.command()
@click.argument("pid", type=int)
@click.argument("text", nargs=-1, required=True)
@handle_errors
def answer(pid: int, text: tuple[str, ...]) -> None:
    """Answer the question a process is waiting on (its `ask`; `llmos ps` shows it)."""
    _client().request("answer", pid=pid, text=" ".join(text))


@cli.command()
@click.argument("pid", type=int)
@handle_errors
def approve(pid: int) -> None:
    """Let the syscall a process waits on (state waiting_approval; `llmos ps`) run."""
    _client().request("approve", pid=pid)


@cli.command()
@click.argument("pid", type=int)
@handle_errors
def deny(pid: int) -> None:
    """Refuse the syscall a process waits on (state waiting_approval; `llmos ps`)."""
    _client().request("deny", pid=pid)


@cli.command()
@click.option("--pid", type=int, help="Only this process's records.")
@click.option("--device", help="Only calls to this device.")
@click.option(
    "--decision",
    type=click.Choice(["allowed", "denied", "approved", "denied-timeout", "refused"]),
    help="Only records with this decision.",
)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=params.AUDIT_LIST_DEFAULT)
@click.option("--verify", is_flag=True, help="Check the whole hash chain; exit 17 if broken.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def audit(
    pid: int | None,
    device: str | None,
    decision: str | None,
    limit: int,
    verify: bool,
    as_json: bool,
) -> None:
    """Your syscalls and what was decided about each (oldest first), from the audit trail."""
    reply = local_call(
        "audit",
        pid=pid,
        device=device,
        decision=decision,
        limit=limit,
        verify=verify,
    )
    if as_json:
        click.echo(json.dumps(reply, ensure_ascii=False))
    elif not verify:
        for r in reply["records"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts"]))
            click.echo(
                f"{r['id']:>6} {when} pid {r['pid']:<5} {r['device']:<14} "
                f"{r['decision']:<14} by {r['by']}: {r['reason']}"
            )
    if verify:
        v = reply["verify"]
        if not v["ok"]:
            raise AuditError(
                f"audit chain broken at record {v['broken_at']}: {v['reason']} "
                f"({v['records']} records before it verify)"
            )
        if not as_json:
            click.echo(f"audit chain intact: {v['records']} records verify")


def _end_code(info: dict[str, Any]) -> int:
    if info.get("exit_status") == "ok":
        return 0
    click.echo(
        f"llmos: error: process {info.get('pid')} ended {info.get('exit_status')}"
        + (f": {info.get('error')}" if info.get("error") else ""),
        err=True,
    )
    return params.EXIT_PROCESS_NOT_OK


@cli.command()
@click.argument("pid", type=int)
@click.option("--timeout", type=click.FloatRange(min=0), help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def wait(pid: int, timeout: float | None, as_json: bool) -> None:
    """Wait for a process to end; print its output. Exit 0 if it ended ok, 14 if it was
    killed, ran out of budget or failed, 124 on --timeout."""
    reply = _client().request("wait", pid=pid, timeout=timeout)
    info = reply["process"]
    if reply.get("timed_out"):
        fail(
            f"process {pid} is still {info.get('state')} after {timeout:g} s",
            params.EXIT_WAIT_TIMEOUT,
        )
    text = str(reply.get("text") or "")
    if as_json:
        click.echo(json.dumps({**info, "text": text}, ensure_ascii=False))
    elif text:
        click.echo(text if text.endswith("\n") else text + "\n", nl=False)
    sys.exit(_end_code(info))


def _follow(pid: int) -> None:
    client = _client()
    wrote_newline = True
    progress = ProgressLine()  # its notices, and on a terminal its progress (prefill...)
    for text in client.follow(pid, on_event=progress.event):
        progress.clear()
        sys.stdout.write(text)
        sys.stdout.flush()
        wrote_newline = text.endswith("\n")
    progress.clear()
    if not wrote_newline:
        sys.stdout.write("\n")
        sys.stdout.flush()
    sys.exit(_end_code((client.last_exit or {}).get("process") or {}))


def _pool_lines(name: str, st: dict[str, Any]) -> list[str]:
    lines = [
        f"cpu {name}: failovers {st.get('failovers', 0)} brownouts {st.get('brownouts', 0)} "
        f"migrations {st.get('migrations', 0)} kv_resumes {st.get('kv_resumes', 0)}"
    ]
    for cpu, m in st["members"].items():
        fb = " fallback" if m.get("fallback") else ""
        err = f" ({m['error']})" if m.get("error") and m.get("state") != "up" else ""
        lines.append(
            f"  {cpu}: {m.get('state')}{fb} model {m.get('model')} in_flight {m.get('in_flight')} "
            f"queued {m.get('queued')} failures {m.get('failures')}{err}"
        )
    for u in st.get("usage", []):
        lines.append(
            f"  {u['cpu']} {u['user']}: {u['requests']} requests, {u['prompt_tokens']} prompt + "
            f"{u['generated_tokens']} generated tokens, {u['seconds']:.1f}s, cost {u['cost']:.4f}"
        )
    return lines


def _top_text(snap: dict[str, Any]) -> str:
    procs = [p for p in snap.get("processes", []) if p.get("state") != "exited"]
    states: dict[str, int] = {}
    for p in procs:
        states[p["state"]] = states.get(p["state"], 0) + 1
    lines = [
        f"llmos top - pid {snap.get('pid')}, up {_duration(float(snap.get('uptime_s', 0)))}, "
        f"policy {snap.get('policy')}, {len(procs)} processes"
        + (" (" + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")" if states else "")
    ]
    for name, st in sorted((snap.get("cpus") or {}).items()):
        if "members" in st:  # a pool (llmos.kernel.pool): one line per CPU, then its metering
            lines.extend(_pool_lines(name, st))
            continue
        stats = " ".join(f"{k} {v}" for k, v in st.items())
        lines.append(f"cpu {name}: {stats}" if stats else f"cpu {name}")
    lines.append("")
    lines.append(f"{'USER':<16} {'TOKENS':>9} {'BUDGET':>9} {'PROCS':>5}")
    for owner, u in sorted((snap.get("users") or {}).items()):
        budget = "-" if u.get("budget") is None else str(u["budget"])
        lines.append(
            f"{owner[:16]:<16} {u.get('tokens', 0):>9} {budget:>9} {u.get('processes', 0):>5}"
        )
    lines.append("")
    lines.append(
        f"{'PID':>6} {'OWNER':<10} {'STATE':<9} {'PRI':>3} {'TOK/S':>6} {'TOKENS':>7} "
        f"{'CTX':>16} {'BUDGET-LEFT':>11} PROGRAM"
    )
    for p in procs:
        tokens = int(p.get("prompt_tokens") or 0) + int(p.get("generated_tokens") or 0)
        lines.append(
            f"{p['pid']:>6} {str(p.get('owner'))[:10]:<10} {p.get('state'):<9} "
            f"{p.get('priority'):>3} {p.get('tokens_per_s', 0.0):>6.1f} {tokens:>7} "
            f"{_ctx(p):>16} {_budget(p):>11} {p.get('program')}"
        )
    return "\n".join(lines)


@cli.command()
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=params.TOP_INTERVAL_S,
    show_default=True,
    help="Seconds between refreshes.",
)
@handle_errors
def top(once: bool, interval: float) -> None:
    """A live view of the kernel: CPUs, users, processes (Ctrl-C to quit)."""
    client = _client()
    if once:
        click.echo(_top_text(client.request("top")))
        return
    try:
        while True:
            text = _top_text(client.request("top"))
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        sys.stdout.write("\n")


def main() -> None:
    try:
        code = cli.main(prog_name="llmos", standalone_mode=False)
    except click.UsageError as exc:  # one line, not click's usage block; exit 2
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `llmos` or group: its help
            click.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        fail(exc.format_message().rstrip(".") + hint, exc.exit_code)
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except click.Abort:  # Ctrl-C or EOF at a prompt
        click.echo("llmos: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # last resort: a bug, reported as one line unless debugging
        if os.environ.get("LLMOS_DEBUG"):
            raise
        click.echo(
            f"llmos: internal error: {type(exc).__name__}: {exc} "
            "(set LLMOS_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["cli", "main"]
