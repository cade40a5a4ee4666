"""The shell's command line grammar: words, quotes, `<`, `|`, `&`, `%N`.

    line      := pipeline ["&"]
    pipeline  := command ("|" command)*
    command   := word+ ["<" word]     (the redirection may stand anywhere after the name)
    word      := bare characters | '...' (literal) | "..." (backslash escapes \\ \" only)

A command's first word is its name (a builtin or an installed program); `key=value` words are
the program's inputs; the other words are joined by spaces into its input text. A job is named
`%N`; a bare number is a pid.

Invariants: operators are recognised only outside quotes (`"a|b"` is one word); a parse
error is a `RequestError` with one line saying what is wrong and where.

What this does not do: run anything, expand variables or globs, or redirect output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmos import params
from llmos.errors import RequestError

OPERATORS = "|&<"


@dataclass(frozen=True)
class Token:
    text: str
    op: bool = False  # an operator outside quotes, not a word


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...] = ()  # the words after the name that are not key=value
    inputs: dict[str, str] = field(default_factory=dict)
    stdin_file: str | None = None

    @property
    def text(self) -> str:
        """The command's words after its name, as one input text."""
        return " ".join(self.args)


@dataclass(frozen=True)
class Line:
    commands: tuple[Command, ...]
    background: bool = False

    @property
    def source(self) -> str:
        """The line as `jobs` shows it."""
        parts = []
        for c in self.commands:
            words = [c.name, *c.args, *(f"{k}={v}" for k, v in c.inputs.items())]
            if c.stdin_file is not None:
                words += ["<", c.stdin_file]
            parts.append(" ".join(words))
        return " | ".join(parts) + (" &" if self.background else "")


def tokenize(line: str) -> list[Token]:
    """Split a line into words and operators; RequestError for an unclosed quote."""
    if len(line) > params.SHELL_LINE_MAX:
        raise RequestError(f"the line is longer than {params.SHELL_LINE_MAX} characters")
    tokens: list[Token] = []
    word: list[str] = []
    quoted = False  # the current word had quotes (so '' is a word)
    i = 0
    while i < len(line):
        ch = line[i]
        if ch in "'\"":
            end = i + 1
            while end < len(line) and line[end] != ch:
                if ch == '"' and line[end] == "\\" and end + 1 < len(line):
                    if line[end + 1] in '\\"':
                        end += 1
                    word.append(line[end])
                    end += 1
                    continue
                word.append(line[end])
                end += 1
            if end >= len(line):
                raise RequestError(f"unclosed {ch} quote at column {i + 1}")
            quoted = True
            i = end + 1
            continue
        if ch.isspace() or ch in OPERATORS:
            if word or quoted:
                tokens.append(Token("".join(word)))
                word, quoted = [], False
            if ch in OPERATORS:
                tokens.append(Token(ch, op=True))
            i += 1
            continue
        word.append(ch)
        i += 1
    if word or quoted:
        tokens.append(Token("".join(word)))
    return tokens


def parse(line: str) -> Line | None:
    """The line as commands, or None for an empty line; RequestError if it is malformed."""
    tokens = tokenize(line)
    if not tokens:
        return None
    background = False
    if tokens[-1].op and tokens[-1].text == "&":
        background = True
        tokens = tokens[:-1]
    groups: list[list[Token]] = [[]]
    for tok in tokens:
        if tok.op and tok.text == "|":
            groups.append([])
        elif tok.op and tok.text == "&":
            raise RequestError("'&' may only end a line")
        else:
            groups[-1].append(tok)
    return Line(tuple(_command(g) for g in groups), background)


def _command(tokens: list[Token]) -> Command:
    if not tokens:
        raise RequestError("a command is missing (around '|' or '&')")
    if tokens[0].op:
        raise RequestError(f"a command must start with a name, not {tokens[0].text!r}")
    args: list[str] = []
    inputs: dict[str, str] = {}
    stdin_file: str | None = None
    rest = iter(tokens[1:])
    for tok in rest:
        if tok.op:  # only '<' is left
            target = next(rest, None)
            if target is None or target.op:
                raise RequestError("'<' must be followed by a file name")
            if stdin_file is not None:
                raise RequestError("only one '<' per command")
            stdin_file = target.text
        elif "=" in tok.text and tok.text.split("=", 1)[0].isidentifier():
            key, value = tok.text.split("=", 1)
            inputs[key] = value
        else:
            args.append(tok.text)
    return Command(tokens[0].text, tuple(args), inputs, stdin_file)


def job_or_pid(word: str) -> tuple[str, int]:
    """`%N` as ("job", N), a bare number as ("pid", N); RequestError otherwise."""
    kind, digits = ("job", word[1:]) if word.startswith("%") else ("pid", word)
    if not digits.isdigit():
        raise RequestError(f"{word!r} is neither a job (%N) nor a pid")
    return kind, int(digits)
