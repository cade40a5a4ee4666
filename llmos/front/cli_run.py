"""`llmos run`, `llmos programs` and `llmos mcp`: programs run in this process, listed, or
served to MCP clients.

`llmos run PROGRAM` or `llmos run -p PROMPT` boots the kernel in this process, runs one process
on its CPU and streams the answer to stdout (notices and, on a terminal, a progress line before
the first token on stderr; `--trace` shows each agent step). `-d` hands the program to the
kernel daemon instead and prints its pid (`llmos.front.cli_procs`).

What this module does not do: load the kernel before a command runs (`llmos --help` and
`llmos run --help` import no part of it), or format a logged run (`llmos.front.cli_logs`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import click

from llmos import params
from llmos.errors import LlmosError
from llmos.front import cli_logs, cli_prompt
from llmos.front.clikit import handle_errors, read_stdin
from llmos.front.progress import ProgressLine


@click.command()
@click.argument("program_ref", metavar="[PROGRAM]", required=False)
@click.option("-p", "--prompt", help="An ad-hoc prompt to run without a program file.")
@click.option("-s", "--system", "system_prompt", help="With -p: a system prompt.")
@click.option(
    "-c", "--continue", "continue_", is_flag=True, help="With -p: continue the last -p run."
)
@click.option("--cid", metavar="RUN_ID", help="With -p: continue the conversation of this run.")
@cli_prompt.option_pairs
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
        from llmos.front.cli_procs import run_detached  # the daemon's client

        run_detached(program_ref, input_pairs, model, priority, budget, as_json)
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


@click.command()
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


@click.command("mcp")
def mcp_cmd() -> None:
    """Serve the installed programs as MCP tools over stdio (for MCP clients)."""
    from llmos.front.mcpserver import serve_stdio

    serve_stdio()


def _trace(step: dict[str, Any]) -> None:
    """One agent step on stderr, as `llmos run --trace` shows it."""
    click.echo(f"llmos: {cli_logs.step_line(step)}", err=True)
