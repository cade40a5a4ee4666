"""The `shell` device: one allowlisted command, run in the python device's bwrap sandbox.

Off unless granted (`default_on = False`). The command line is split with `shlex` and run
directly with `execvp`, never through a shell: pipes, redirects, `;`, `&&`, `$(...)`, globs
and variables are plain characters in an argument. The first word must be in the allowlist,
`ctx.options["allow"]` or `SHELL_ALLOW` (ls, cat, echo, wc, head, tail, grep, date, pwd).

Invariants:
- Programs that can run other programs (shells, interpreters, env, xargs, nice, timeout, git,
  awk, sed, ...; `SHELL_EXEC_CAPABLE`) are refused even when an allowlist names them, and so is
  any program without an argument grammar in `GRAMMARS`.
- Each argument is parsed by its program's grammar: short options (bundled, with an attached
  value as in `-f/etc/passwd`), long options (`--file=X` or `--file X`), operands. Unknown
  options are refused; every path-like value (option values of kind path, file operands) must
  be relative, without `..` or `~`, so it stays inside the run's directory. find's actions
  that run programs, delete or write files (-exec, -execdir, -ok, -okdir, -delete, -fprint*,
  -fls) are refused.
- The same launcher, limits and working directory as `python` (`llmos.hw.dev.sandbox`): the
  bwrap sandbox with its fresh uid, namespaces, seccomp filter and rlimits; refused with one
  line when that sandbox cannot be set up.

What it does NOT cover: the argument check is a second layer, the sandbox is the boundary
(a grammar that misses an option of some program version is caught by the view, which holds
only the run's directory and read-only system files); an allowed program can read the
world-readable system files under /usr through its operands only if they pass the path check.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from llmos import params
from llmos.hw.dev.base import CallContext, Device, DeviceResult
from llmos.hw.dev.fs import FsError
from llmos.hw.dev.sandbox import Limits, SandboxUnavailable, run_sandboxed, workspace

_SHELL_CHARS = ("|", "&", ";", ">", "<", "`", "$(")


@dataclass(frozen=True)
class Grammar:
    """How one program takes its arguments (GNU style)."""

    flags: str = ""  # short options without a value
    short: dict[str, str] = field(default_factory=dict)  # short option -> "path" or "value"
    long_flags: frozenset[str] = frozenset()  # long options without a value
    long: dict[str, str] = field(default_factory=dict)  # long option -> "path" or "value"
    operands: str = "path"  # "path": files; "text": not files; "none"; "pattern": first is text


def _g(
    flags: str = "",
    short: str = "",
    paths: str = "",
    lf: str = "",
    lv: str = "",
    lp: str = "",
    operands: str = "path",
) -> Grammar:
    long = dict.fromkeys(lv.split(), "value") | dict.fromkeys(lp.split(), "path")
    shorts = dict.fromkeys(short, "value") | dict.fromkeys(paths, "path")
    return Grammar(flags, shorts, frozenset(lf.split()), long, operands)


_DIGITS = "0123456789"
GRAMMARS: dict[str, Grammar] = {
    "ls": _g(
        "aAbBcCdfFghHiklLmnNopqQrRsStuUvxX1Z",
        "IT",
        "",
        "all almost-all human-readable "
        "recursive reverse size inode directory classify dereference numeric-uid-gid "
        "literal escape no-group",
        "color sort time time-style format width ignore hide "
        "indicator-style quoting-style block-size",
    ),
    "cat": _g(
        "AbeEnstTuv",
        lf="show-all number-nonblank number squeeze-blank show-tabs show-nonprinting show-ends",
    ),
    "wc": _g("clmwL", lf="bytes chars lines words max-line-length", lv="total"),
    "head": _g("qvz" + _DIGITS, "nc", lf="quiet silent verbose zero-terminated", lv="lines bytes"),
    "tail": _g(
        "qvzrF" + _DIGITS, "nc", lf="quiet silent verbose zero-terminated retry", lv="lines bytes"
    ),
    "grep": _g(
        "EFGPiywxcLlnhHoqsrRvIabTUz" + _DIGITS,
        "emABCd",
        "f",
        "extended-regexp "
        "fixed-strings basic-regexp perl-regexp ignore-case no-ignore-case word-regexp "
        "line-regexp count files-with-matches files-without-match line-number "
        "with-filename no-filename only-matching quiet silent no-messages recursive "
        "dereference-recursive invert-match byte-offset text null null-data initial-tab",
        "regexp max-count after-context before-context context color colour label "
        "include exclude exclude-dir binary-files devices directories",
        "file",
        operands="pattern",
    ),
    "date": _g(
        "uRI",
        "dI",
        "fr",
        "utc universal rfc-email",
        "date iso-8601 rfc-3339",
        "file reference",
        operands="text",
    ),
    "pwd": _g("LP", operands="none"),
    "sort": _g(
        "bdfgiMhnRrVsucz",
        "ktS",
        "",
        "ignore-leading-blanks dictionary-order "
        "ignore-case general-numeric-sort human-numeric-sort numeric-sort reverse "
        "unique stable check zero-terminated",
        "key field-separator buffer-size",
    ),
    "uniq": _g(
        "cdDiuz",
        "fsw",
        lf="count repeated unique ignore-case zero-terminated",
        lv="skip-fields skip-chars check-chars",
    ),
    "cut": _g(
        "nsz",
        "bcfd",
        lf="only-delimited complement zero-terminated",
        lv="bytes characters fields delimiter output-delimiter",
    ),
    "nl": _g(
        "p",
        "bdfhilnsvw",
        lv="body-numbering section-delimiter footer-numbering "
        "header-numbering line-increment join-blank-lines number-format number-separator "
        "starting-line-number number-width",
    ),
    "tac": _g("br", "s", lf="before regex", lv="separator"),
    "tr": _g("cCdst", lf="complement delete squeeze-repeats truncate-set1", operands="text"),
}

# find: options that take a value (which are paths), flags, and what is refused.
_FIND_VALUE = frozenset(
    [
        "-name",
        "-iname",
        "-path",
        "-ipath",
        "-wholename",
        "-iwholename",
        "-regex",
        "-iregex",
        "-type",
        "-xtype",
        "-size",
        "-mtime",
        "-mmin",
        "-atime",
        "-amin",
        "-ctime",
        "-cmin",
        "-perm",
        "-maxdepth",
        "-mindepth",
        "-user",
        "-group",
        "-uid",
        "-gid",
        "-links",
        "-inum",
        "-printf",
        "-regextype",
        "-newermt",
    ]
)
_FIND_PATH = frozenset(["-newer", "-anewer", "-cnewer", "-samefile"])
_FIND_FLAG = frozenset(
    [
        "-print",
        "-print0",
        "-ls",
        "-empty",
        "-true",
        "-false",
        "-prune",
        "-quit",
        "-depth",
        "-xdev",
        "-mount",
        "-follow",
        "-readable",
        "-writable",
        "-executable",
        "-nouser",
        "-nogroup",
        "-a",
        "-o",
        "-and",
        "-or",
        "-not",
        "!",
        "(",
        ")",
        ",",
        "-daystart",
        "-noleaf",
    ]
)
_FIND_REFUSED = frozenset(
    ["-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf", "-fls"]
)


def _outside(value: str) -> bool:
    parts = value.replace("\\", "/").split("/")
    return value.startswith(("/", "~")) or ".." in parts or "\0" in value


def _check_find(args: list[str]) -> str | None:
    i = 0
    while i < len(args) and args[i] in ("-H", "-L", "-P"):
        i += 1
    while i < len(args) and not args[i].startswith("-") and args[i] not in ("!", "(", ")"):
        if _outside(args[i]):
            return f"argument {args[i]!r} points outside the working directory"
        i += 1
    while i < len(args):
        arg = args[i]
        if arg in _FIND_REFUSED:
            return f"find {arg} is refused (it runs programs, deletes or writes files)"
        if arg in _FIND_VALUE or arg in _FIND_PATH:
            if i + 1 >= len(args):
                return f"find {arg} needs a value"
            if arg in _FIND_PATH and _outside(args[i + 1]):
                return f"argument {args[i + 1]!r} points outside the working directory"
            i += 2
            continue
        if arg not in _FIND_FLAG:
            return f"find: {arg!r} is not an expression this sandbox knows"
        i += 1
    return None


def _check_value(prog: str, opt: str, kind: str, value: str | None) -> str | None:
    if value is None:
        return f"{prog} option {opt} needs a value"
    if kind == "path" and _outside(value):
        return f"argument {value!r} points outside the working directory"
    return None


def _check_args(prog: str, g: Grammar, args: list[str]) -> str | None:
    operands: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            operands += args[i:]
            break
        if arg.startswith("--"):
            name, eq, attached = arg[2:].partition("=")
            if name in g.long:
                value = attached if eq else (args[i] if i < len(args) else None)
                i += 0 if eq else 1
                refusal = _check_value(prog, f"--{name}", g.long[name], value)
                if refusal:
                    return refusal
            elif name not in g.long_flags or eq:
                return f"{prog}: option --{name} is not allowed here"
            if name in ("regexp", "file"):
                operands.insert(0, "")  # grep: the pattern came from an option
            continue
        if arg.startswith("-") and len(arg) > 1:
            for j, c in enumerate(arg[1:], 1):
                if c in g.flags:
                    continue
                if c not in g.short:
                    return f"{prog}: option -{c} is not allowed here"
                value = arg[j + 1 :] or (args[i] if i < len(args) else None)
                i += 0 if arg[j + 1 :] else 1
                refusal = _check_value(prog, f"-{c}", g.short[c], value)
                if refusal:
                    return refusal
                if c in "ef" and prog == "grep":
                    operands.insert(0, "")
                break
            continue
        operands.append(arg)
    if g.operands == "none" and operands:
        return f"{prog} takes no operands"
    files = operands[1:] if g.operands == "pattern" else operands
    if g.operands in ("path", "pattern"):
        for f in files:
            if _outside(f):
                return f"argument {f!r} points outside the working directory"
    return None


def check_argv(argv: list[str], allow: list[str]) -> str | None:
    """Why `argv` is refused, or None when it may run."""
    if not argv:
        return "empty command"
    prog = argv[0]
    if "/" in prog or prog not in allow:
        return f"command {prog!r} is not allowed (allowed: {', '.join(allow)})"
    if prog in params.SHELL_EXEC_CAPABLE or prog.startswith(("python", "perl", "ruby")):
        return f"command {prog!r} can run other programs and is never allowed"
    if prog == "echo":
        return None  # echo reads nothing: every argument is text
    if prog == "find":
        return _check_find(argv[1:])
    grammar = GRAMMARS.get(prog)
    if grammar is None:
        return f"command {prog!r} has no argument grammar here, so it cannot run"
    return _check_args(prog, grammar, argv[1:])


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
            with workspace(ctx) as space:
                limits = Limits.from_context(ctx)
                result = run_sandboxed("exec", space, limits=limits, argv=argv)
        except SandboxUnavailable as exc:
            return DeviceResult.failure(f"shell sandbox unavailable: {exc}")
        except FsError as exc:
            return DeviceResult.failure(f"shell: {exc}")
        except OSError as exc:
            return DeviceResult.failure(f"shell: could not start the sandbox: {exc}")
        return DeviceResult.success(result.output(), truncated=result.truncated)
