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

This module is the entry point and nothing more: the table of commands (name, module, summary)
and a click group that imports a command's module only when that command is used, so
`llmos --help` loads click and this module, not the commands, let alone the kernel (checked by
tests/front/test_footprint.py, timed by bench/footprint.py). The summaries are the first
sentence of each command's help; tests/front/test_cli_table.py checks that the table and the
commands agree, and that the help reads as an eagerly built group's would.

What this module does not do: any work of its own, or define a command (`cli_run`, `cli_logs`,
`cli_procs`, `cli_chat`, `cli_devices`, `cli_memory`, `cli_models`, `cli_serve` and
`shell.command` do; they parse arguments, call the modules that do the work, and format what
they return).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import NamedTuple

import click

from llmos.errors import EXIT_INTERRUPTED
from llmos.front.clikit import fail


class Entry(NamedTuple):
    """Where a top-level command is defined, and the summary `llmos --help` shows for it."""

    module: str
    attr: str
    summary: str


_RUN = "llmos.front.cli_run"
_LOGS = "llmos.front.cli_logs"
_PROCS = "llmos.front.cli_procs"
_MEMORY = "llmos.front.cli_memory"
_SERVE = "llmos.front.cli_serve"

COMMANDS: dict[str, Entry] = {
    "answer": Entry(
        _PROCS,
        "answer",
        "Answer the question a process is waiting on (its `ask`; `llmos ps` shows it).",
    ),
    "approve": Entry(
        _PROCS,
        "approve",
        "Let the syscall a process waits on (state waiting_approval; `llmos ps`) run.",
    ),
    "audit": Entry(
        _PROCS,
        "audit",
        "Your syscalls and what was decided about each (oldest first), from the audit trail.",
    ),
    "chat": Entry(
        "llmos.front.cli_chat",
        "chat",
        "Chat with a model: each line is a prompt; exit, quit or end of input ends it.",
    ),
    "cont": Entry(_PROCS, "cont", "Continue a stopped process."),
    "deny": Entry(
        _PROCS,
        "deny",
        "Refuse the syscall a process waits on (state waiting_approval; `llmos ps`).",
    ),
    "devices": Entry(
        "llmos.front.cli_devices",
        "devices",
        "List the devices programs can declare, with their call formats, and the MCP servers.",
    ),
    "kernel": Entry(
        _PROCS,
        "kernel",
        "Start, stop and inspect the kernel daemon (programs as background processes).",
    ),
    "kill": Entry(
        _PROCS,
        "kill",
        "Kill processes (each ends at its next token; its output so far is logged).",
    ),
    "logs": Entry(
        _LOGS,
        "logs",
        "List logged runs, search them, or show one run in full; -f PID follows a process.",
    ),
    "mcp": Entry(
        _RUN,
        "mcp_cmd",
        "Serve the installed programs as MCP tools over stdio (for MCP clients).",
    ),
    "memory": Entry(
        _MEMORY,
        "memory",
        "Long-term memory: remember, recall, forget (kept across runs and reboots).",
    ),
    "migrate": Entry(
        _PROCS,
        "migrate",
        "Move a running process to another CPU of its pool (config.json's pools).",
    ),
    "models": Entry(
        "llmos.front.cli_models",
        "models",
        "List the CPUs llmos can run programs on (the default is marked); add one.",
    ),
    "programs": Entry(_RUN, "programs", "List installed programs and skills."),
    "ps": Entry(_PROCS, "ps", "List the kernel's processes."),
    "renice": Entry(
        _PROCS, "renice", "Give a process a new priority (0-39, never above its parent's)."
    ),
    "run": Entry(
        _RUN,
        "run",
        "Run PROGRAM (a .prompt, SKILL.md folder, .md file, or an installed name), or -p PROMPT.",
    ),
    "serve": Entry(
        _SERVE,
        "serve",
        "Serve the kernel over HTTP: REST, OpenAI-compatible /v1, metrics (until SIGTERM).",
    ),
    "shell": Entry(
        "llmos.front.shell.command",
        "shell",
        "An interactive shell: a conversation, programs, pipes, jobs, ps, top, approvals.",
    ),
    "shm": Entry(
        _MEMORY,
        "shm",
        "Shared memory segments: named text that processes and users share, with rights.",
    ),
    "stop": Entry(
        _PROCS, "stop", "Stop a process (it is preempted and keeps its place until `cont`)."
    ),
    "top": Entry(
        _PROCS, "top", "A live view of the kernel: CPUs, users, processes (Ctrl-C to quit)."
    ),
    "user": Entry(_SERVE, "user", "Users of `llmos serve` and their bearer tokens."),
    "wait": Entry(_PROCS, "wait", "Wait for a process to end; print its output."),
}


class LazyGroup(click.Group):
    """The `llmos` group: its commands named by `COMMANDS`, each module imported on first use.

    The help lists the commands from the table as click lays out an eager group's (the same
    width and the same shortening of each summary); an unknown command names the close matches
    from the table, as an eager group does from its commands."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        command = getattr(importlib.import_module(entry.module), entry.attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{entry.module}.{entry.attr} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)  # click.Group's layout
        rows = [
            (name, click.Command(name, help=entry.summary).get_short_help_str(limit))
            for name, entry in sorted(COMMANDS.items())
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.NoSuchCommand as exc:  # "Did you mean ...?" from the table
            raise click.NoSuchCommand(exc.command_name, possibilities=COMMANDS, ctx=ctx) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmos")
def cli() -> None:
    """llmos: an operating system for the LLM computer."""


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
