"""The `shell` device: one allowlisted command, run in the python device's sandbox.

Off unless granted (`default_on = False`). The command line is split with `shlex` and run
directly with `execvp`, never through a shell: pipes, redirects, `;`, `&&`, `$(...)`, globs
and variables are plain characters in an argument. The first word must be in the allowlist,
`ctx.options["allow"]` or `SHELL_ALLOW` (ls, cat, echo, wc, head, tail, grep, date, pwd).

Invariants:
- The same launcher, limits and working directory as `python` (`llmos.hw.dev.python`):
  a fresh temp dir holding only the granted files (`ctx.options["files"]`), rlimits, network
  and pid namespaces when available, the uid drop when root, the process-group kill.
- Arguments naming a path outside the working directory (absolute, `..`, `~`, also after
  `--opt=`) are refused before anything runs.

What it does NOT cover: an allowlisted program is trusted with its own flags (for example
`grep -f FILE` reads FILE; the path check above refuses outside paths but cannot know every
program's syntax). The audit hook of the python device does not apply to other programs; for
them the uid drop and namespaces are the protection.
"""

from __future__ import annotations

import shlex
from typing import Any

from llmos import params
from llmos.hw.dev.base import CallContext, Device, DeviceResult
from llmos.hw.dev.fs import FsError
from llmos.hw.dev.python import Limits, run_sandboxed, workspace

_SHELL_CHARS = ("|", "&", ";", ">", "<", "`", "$(")


def check_argv(argv: list[str], allow: list[str]) -> str | None:
    """Why `argv` is refused, or None when it may run."""
    if not argv:
        return "empty command"
    prog = argv[0]
    if "/" in prog or prog not in allow:
        return f"command {prog!r} is not allowed (allowed: {', '.join(allow)})"
    for arg in argv[1:]:
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        parts = value.replace("\\", "/").split("/")
        if value.startswith(("/", "~")) or ".." in parts:
            return f"argument {arg!r} points outside the working directory"
    return None


class ShellDevice(Device):
    name = "shell"
    description = (
        "Run one command from an allowlist (by default: ls, cat, echo, wc, head, tail, grep, "
        "date, pwd) in a private sandbox folder holding only the files you were granted. No "
        "shell: pipes, redirects, ';', '&&' and variables are not interpreted; paths must be "
        "relative. Returns {stdout, stderr, exit_status, timed_out, killed_reason}."
    )
    schema: dict[str, Any] = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "command": {
                "type": "string",
                "description": 'One command line, e.g. "grep -n TODO notes.txt".',
                "minLength": 1,
                "maxLength": params.SHELL_MAX_COMMAND_CHARS,
            }
        },
        "required": ["command"],
        "additionalProperties": False,
    }
    default_on = False

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        command = args.get("command")
        if not isinstance(command, str) or not command.strip():
            return DeviceResult.failure("shell: 'command' must be a non-empty string")
        if len(command) > params.SHELL_MAX_COMMAND_CHARS:
            return DeviceResult.failure("shell: command too long")
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            return DeviceResult.failure(f"shell: cannot parse the command: {exc}")
        allow = [str(a) for a in ctx.options.get("allow", params.SHELL_ALLOW)]
        refusal = check_argv(argv, allow)
        if refusal is not None:
            note = ""
            if any(c in command for c in _SHELL_CHARS):
                note = " (no shell: | ; & > < and $() are not interpreted)"
            return DeviceResult.failure(f"shell: {refusal}{note}")
        try:
            with workspace(ctx) as (_run_dir, work):
                limits = Limits.from_context(ctx)
                result = run_sandboxed("exec", work=work, limits=limits, argv=argv)
        except FsError as exc:
            return DeviceResult.failure(f"shell: {exc}")
        except OSError as exc:
            return DeviceResult.failure(f"shell: could not start the sandbox: {exc}")
        return DeviceResult.success(result.output(), truncated=result.truncated)
