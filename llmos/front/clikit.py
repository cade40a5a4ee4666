"""What every `llmos` command shares: one-line errors with their exit codes, stdin, and the
kernel's API called in this process as the OS user (`local_call`).

Invariants: an LlmosError becomes `llmos: error: <message>` on stderr and its exit code (a
traceback only with LLMOS_DEBUG=1); an interrupt exits 130; a closed output pipe exits 0.

What this module does not do: define commands (see the table in `llmos.front.cli`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from llmos.errors import EXIT_INTERRUPTED, InputError, LlmosError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> None:
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
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            click.echo("llmos: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            # The reader went away (`llmos run ... | head`): not an error of ours.
            sys.stderr.close()
            sys.exit(0)

    return wrapper  # type: ignore[return-value]


def read_stdin() -> str | None:
    if sys.stdin is None or sys.stdin.isatty():
        return None
    data = sys.stdin.buffer.read()
    if not data.strip():
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"stdin is not UTF-8 text (bad byte at offset {exc.start})") from exc


def local_call(op: str, **payload: Any) -> dict[str, Any]:
    """Operation `op` of the kernel's API in this process, as the OS user running llmos (for
    what needs no daemon: memory, shared segments, the audit trail)."""
    from llmos.kernel import api, boot  # the kernel only when a command runs
    from llmos.kernel.core import Kernel
    from llmos.kernel.security import principals

    kernel = Kernel(boot.boot(open_log=False))
    try:
        reply: dict[str, Any] = api.call(kernel, api.Caller.of(principals.current()), op, payload)
    finally:
        kernel.system.close()
    return reply
