"""The `llmos shell` command: pick the backend, then run the loop.

Without `--url` the kernel runs in this process (as the OS user, like `llmos run`); with
`--url` every command goes to that `llmos serve` as the user whose token is in `LLMOS_TOKEN`.
A token the service refuses ends the shell at once (AuthError, exit 20); a service that cannot
be reached at the start is said, and each later command tries again. On leaving, live jobs of
the in-process kernel are killed (they would end with it); a service's go on there.

What this does not do: anything after the start (`repl`).
"""

from __future__ import annotations

import contextlib
import os

import click

from llmos import config, params
from llmos.errors import AuthError, LlmosError, ServiceUnreachableError
from llmos.front.clikit import handle_errors


@click.command("shell")
@click.option("--url", metavar="URL", help="A llmos serve to use (token from $LLMOS_TOKEN).")
@click.option("-m", "--model", help="The CPU of the conversation and of the programs run.")
@click.option("-s", "--system", "system_prompt", help="The conversation's system prompt.")
@handle_errors
def shell(url: str | None, model: str | None, system_prompt: str | None) -> None:
    """An interactive shell: a conversation, programs, pipes, jobs, ps, top, approvals."""
    from llmos.front.shell import backend as backends
    from llmos.front.shell.repl import Shell, loop

    home = config.home()
    backend: backends.Backend
    if url:
        token = os.environ.get(params.SHELL_TOKEN_ENV, "").strip()
        if not token:
            raise AuthError(f"--url needs a token: set {params.SHELL_TOKEN_ENV}")
        backend = backends.Remote(url, token, model)
    else:
        from llmos.kernel import api, boot
        from llmos.kernel.core import Kernel
        from llmos.kernel.security import principals

        caller = api.Caller.of(principals.current())
        backend = backends.Local(Kernel(boot.boot()), caller, model)
    sh = Shell(backend, system=system_prompt)
    try:
        try:
            backend.top()  # a refused token ends here; an unreachable service is only said
        except ServiceUnreachableError as exc:
            sh.error(f"{exc} (each command will try again)")
        except LlmosError as exc:
            if exc.exit_code == AuthError.exit_code:
                raise
        sh.say(f"llmos shell on {backend.where}: help lists the commands, exit or Ctrl-D ends")
        loop(sh, home / params.SHELL_HISTORY_NAME)
    finally:
        for job in sh.jobs.all():
            if not job.live:
                continue
            if isinstance(backend, backends.Local):  # its processes end with this kernel
                with contextlib.suppress(LlmosError):
                    job.kill()
            elif job.pid is not None:
                sh.say(f"[{job.number}] pid {job.pid} goes on at {backend.where} (ps shows it)")
        backend.close()
