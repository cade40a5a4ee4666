"""The `llmos` command line.

stdout carries only answers (so commands pipe); diagnostics go to stderr. Every error is one
line, `llmos: error: <message>`, and a distinct exit code (see `llmos.errors`); a traceback is
shown only with `LLMOS_DEBUG=1`.

    llmos run PROGRAM [-i key=value ...] [--model M] [--json] [-v]
    llmos models
    llmos programs
    llmos logs [RUN_ID] [-q QUERY] [-n N] [--program P] [--status S] [--json]

What this module does not do: any work of its own. It parses arguments, calls the modules that
do the work, and formats what they return.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from llmos import boot, params
from llmos import program as programs_mod
from llmos.errors import EXIT_INTERRUPTED, InputError, LlmosError
from llmos.log import RunRecord

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    click.echo(f"llmos: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turn every error into one line on stderr and its exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LlmosError as exc:
            if os.environ.get("LLMOS_DEBUG"):
                raise
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            click.echo("llmos: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            # The reader went away (`llmos run ... | head`): not an error of ours.
            sys.stderr.close()
            sys.exit(0)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmos")
def cli() -> None:
    """llmos: an operating system for the LLM computer."""


def _read_stdin() -> str | None:
    if sys.stdin is None or sys.stdin.isatty():
        return None
    data = sys.stdin.buffer.read()
    if not data.strip():
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"stdin is not UTF-8 text (bad byte at offset {exc.start})") from exc


@cli.command()
@click.argument("program_ref", metavar="PROGRAM")
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
@handle_errors
def run(
    program_ref: str, input_pairs: tuple[str, ...], model: str | None, as_json: bool, verbose: bool
) -> None:
    """Run PROGRAM (a .prompt, SKILL.md folder, .md file, or an installed name)."""
    system = boot.boot()
    try:
        prog = system.load_program(program_ref)
    except LlmosError as exc:
        system.log_failure(program_ref, exc)
        raise
    try:
        inputs = programs_mod.parse_cli_inputs(list(input_pairs), prog.input_schema)
        stdin = _read_stdin()
        if stdin is not None and "input" not in inputs:
            inputs["input"] = stdin
        cpu = system.cpu(model or prog.model)
    except LlmosError as exc:
        system.log_failure(prog.name, exc, program_path=str(prog.path))
        raise

    wrote_newline = True

    def emit(text: str) -> None:
        nonlocal wrote_newline
        sys.stdout.write(text)
        sys.stdout.flush()
        wrote_newline = text.endswith("\n")

    result = system.run(prog, inputs, cpu, on_text=None if as_json else emit)
    if as_json:
        click.echo(json.dumps(result.to_json(prog, cpu), ensure_ascii=False))
    elif not wrote_newline:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if verbose:
        click.echo(
            f"llmos: run {result.run_id} on {cpu.name}: {result.prompt_tokens} prompt + "
            f"{result.completion_tokens} generated tokens, first token "
            f"{(result.ttft_ms or 0):.0f} ms, {result.tokens_per_s:.1f} tok/s",
            err=True,
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def models(as_json: bool) -> None:
    """List the CPUs llmos can run programs on."""
    system = boot.boot(open_log=False)
    rows = system.list_models()
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        click.echo(f"{row['name']:<28} {row['kind']:<10} {row['detail']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def programs(as_json: bool) -> None:
    """List installed programs and skills."""
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
@click.option("--status", type=click.Choice(["running", "ok", "failed", "cancelled"]))
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def logs(
    run_id: str | None,
    query: str | None,
    limit: int,
    program: str | None,
    status: str | None,
    as_json: bool,
) -> None:
    """List logged runs, search them, or show one run in full."""
    system = boot.boot()
    log = system.log
    if run_id:
        record = log.get_run(run_id)
        if record is None:
            raise InputError(f"no run with id '{run_id}' in {log.path}")
        messages = log.messages(record.id)
        if as_json:
            click.echo(
                json.dumps({**_record_json(record), "messages": messages}, ensure_ascii=False)
            )
            return
        click.echo(f"run {record.id}  {record.program}  on {record.cpu}  [{record.status}]")
        if record.inputs:
            click.echo(f"inputs: {json.dumps(record.inputs, ensure_ascii=False)}")
        for m in messages:
            click.echo(f"--- {m.get('role')}\n{m.get('content')}")
        if record.error:
            click.echo(f"--- error ({record.error_kind})\n{record.error}")
        click.echo(
            f"--- {record.prompt_tokens} prompt + {record.completion_tokens} generated "
            f"tokens, {record.duration_ms or 0:.0f} ms"
        )
        return
    rows = log.list_runs(limit=limit, query=query, program=program, status=status)
    if as_json:
        click.echo(json.dumps([_record_json(r) for r in rows], ensure_ascii=False))
        return
    for r in rows:
        click.echo(_run_row(r))


def _record_json(r: RunRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "program": r.program,
        "program_path": r.program_path,
        "cpu": r.cpu,
        "status": r.status,
        "inputs": r.inputs,
        "response": r.response,
        "error_kind": r.error_kind,
        "error": r.error,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "started_at": r.started_at,
        "duration_ms": r.duration_ms,
        "ttft_ms": r.ttft_ms,
    }


def main() -> None:
    try:
        cli.main(prog_name="llmos", standalone_mode=True)
    except Exception as exc:  # last resort: a bug, reported as one line unless debugging
        if os.environ.get("LLMOS_DEBUG"):
            raise
        click.echo(
            f"llmos: internal error: {type(exc).__name__}: {exc} "
            "(set LLMOS_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(1)


__all__ = ["cli", "main"]
