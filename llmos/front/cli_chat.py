"""`llmos chat`: an interactive conversation with a CPU, one prompt per line.

Each line of stdin is a turn: the conversation so far plus the line run as a `-p` program
(`llmos.front.cli_prompt`), its reply streamed to stdout. Every turn is logged as a run that
holds the whole conversation, so `llmos run -c -p ...` or `llmos chat -c` continue it later.
On a terminal a `> ` prompt is shown; `exit`, `quit` or end of input ends the chat.

What this does not do: devices (a chat has none), or keep state outside the run log.
"""

from __future__ import annotations

import sys

import click

from llmos.front import cli_prompt
from llmos.front.clikit import handle_errors

_QUIT = ("exit", "quit")


@click.command("chat")
@click.option("-m", "--model", help="CPU to chat with (as for run).")
@click.option("-s", "--system", "system_prompt", help="A system prompt.")
@cli_prompt.option_pairs
@click.option("-c", "--continue", "continue_", is_flag=True, help="Continue the last conversation.")
@click.option("--cid", metavar="RUN_ID", help="Continue the conversation of this run.")
@handle_errors
def chat(
    model: str | None,
    system_prompt: str | None,
    option_pairs: tuple[tuple[str, str], ...],
    continue_: bool,
    cid: str | None,
) -> None:
    """Chat with a model: each line is a prompt; exit, quit or end of input ends it."""
    from llmos.kernel import api, boot  # the kernel only when a chat starts
    from llmos.kernel.core import Kernel
    from llmos.kernel.security import principals

    config = cli_prompt.options(option_pairs)
    caller = api.Caller.of(principals.current())
    system = boot.boot()
    kernel = Kernel(system)
    history = cli_prompt.conversation(system, caller, cid, continue_) if cid or continue_ else []
    cpu = kernel.cpu(model)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            click.echo("> ", nl=False)
        line = sys.stdin.readline()
        if not line or line.strip() in _QUIT:
            return
        if not line.strip():
            continue
        prog = cli_prompt.adhoc(line.strip(), system_prompt, None, config, history)

        def emit(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        result = api.run(kernel, caller, prog, {}, cpu=cpu, on_text=emit)
        sys.stdout.write("\n")
        sys.stdout.flush()
        history = [*prog.messages, {"role": "assistant", "content": result.text}]
