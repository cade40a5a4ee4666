"""The kernel daemon and its processes from the command line: `llmos kernel start|serve|stop|
status`, `ps`, `kill`, `stop`, `cont`, `renice`, `migrate`, `answer`, `approve`, `deny`,
`wait`, `top`; `audit` (the audit trail, read in this process).

These talk to the daemon over its socket (`llmos.front.kclient`); `llmos kernel serve` is the
daemon itself (`llmos.front.kerneld`). Exit codes of `wait` and `logs -f`: 0 the process ended
ok, 14 it was killed, ran out of budget or failed, 124 `wait --timeout` ran out; 13 there is
no kernel to ask.

What this module does not do: schedule or run anything itself, or import the daemon's client
or the kernel before a command runs.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from llmos import config, params
from llmos.errors import AuditError, KernelError, LlmosError
from llmos.front.clikit import fail, handle_errors, local_call, read_stdin
from llmos.front.progress import ProgressLine

if TYPE_CHECKING:
    from llmos.front.kclient import KernelClient


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


def run_detached(
    program_ref: str,
    input_pairs: tuple[str, ...],
    model: str | None,
    priority: int | None,
    budget: int | None,
    as_json: bool,
) -> None:
    """`llmos run -d`: start PROGRAM as a background process of the daemon; print its pid."""
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


@click.group()
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


@click.command()
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


@click.command()
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


@click.command()
@click.argument("pid", type=int)
@handle_errors
def stop(pid: int) -> None:
    """Stop a process (it is preempted and keeps its place until `cont`)."""
    _client().request("stop", pid=pid)


@click.command()
@click.argument("pid", type=int)
@handle_errors
def cont(pid: int) -> None:
    """Continue a stopped process."""
    _client().request("cont", pid=pid)


@click.command()
@click.argument("priority", type=click.IntRange(params.MIN_PRIORITY, params.MAX_PRIORITY))
@click.argument("pid", type=int)
@handle_errors
def renice(priority: int, pid: int) -> None:
    """Give a process a new priority (0-39, never above its parent's)."""
    reply = _client().request("renice", pid=pid, priority=priority)
    click.echo(f"{pid}: priority {reply.get('old_priority')} -> {reply['process']['priority']}")


@click.command()
@click.argument("pid", type=int)
@click.argument("cpu")
@handle_errors
def migrate(pid: int, cpu: str) -> None:
    """Move a running process to another CPU of its pool (config.json's pools)."""
    reply = _client().request("migrate", pid=pid, cpu=cpu)
    click.echo(f"{pid}: on {reply['process']['cpu']}, moving to {reply['cpu']}")


@click.command()
@click.argument("pid", type=int)
@click.argument("text", nargs=-1, required=True)
@handle_errors
def answer(pid: int, text: tuple[str, ...]) -> None:
    """Answer the question a process is waiting on (its `ask`; `llmos ps` shows it)."""
    _client().request("answer", pid=pid, text=" ".join(text))


@click.command()
@click.argument("pid", type=int)
@handle_errors
def approve(pid: int) -> None:
    """Let the syscall a process waits on (state waiting_approval; `llmos ps`) run."""
    _client().request("approve", pid=pid)


@click.command()
@click.argument("pid", type=int)
@handle_errors
def deny(pid: int) -> None:
    """Refuse the syscall a process waits on (state waiting_approval; `llmos ps`)."""
    _client().request("deny", pid=pid)


@click.command()
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


@click.command()
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


def follow(pid: int) -> None:
    """`llmos logs -f PID`: a process's output as it is generated; exit with how it ended."""
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


@click.command()
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
