"""Ad-hoc prompts for `llmos run`: `-p PROMPT` without a program file, `-s SYSTEM`, `-o KEY VALUE`,
and `-c` / `--cid RUN_ID` to continue a logged conversation (its messages, then the prompt).

`-p` makes a one-off chat program (`llmos.kernel.program.chat`): an optional system message,
then one user message (piped stdin first, then the prompt, as `llm` does). `-o` sets a
`config` key (`temperature`, `maxOutputTokens`, ...) on the ad-hoc program or on a program
file; values are read as JSON when they parse (`0.2`, `64`, `["\\n"]`), else as text.

Invariants: an unknown `-o` key or a value of the wrong type is a usage error (exit 2) naming
the key; nothing is written to disk. What this does not do: run anything (`cli.run` does).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from llmos.errors import InputError, LlmosError

if TYPE_CHECKING:
    from llmos.kernel import boot
    from llmos.kernel.program import Program

PROGRAM_NAME = "prompt"  # how -p runs are named in the log


# `-o KEY VALUE` (repeatable), the option `options` reads, shared by `run` and `chat`.
option_pairs = click.option(
    "-o",
    "--option",
    "option_pairs",
    type=(str, str),
    multiple=True,
    metavar="KEY VALUE",
    help="A model option (a config key), e.g. -o temperature 0.2 (repeatable).",
)


def options(pairs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """`-o KEY VALUE` pairs as a checked `config` mapping (a usage error if one is bad)."""
    from llmos.kernel import programconfig  # loaded only by the commands that run

    known = programconfig.config_keys()
    config: dict[str, Any] = {}
    for key, raw in pairs:
        if key not in known:
            raise click.BadParameter(
                f"unknown model option '{key}' (known: {', '.join(known)})", param_hint="-o"
            )
        try:
            config[key] = json.loads(raw)
        except json.JSONDecodeError:
            config[key] = raw
    try:
        return programconfig.check_config("-o", config)
    except LlmosError as exc:
        raise click.BadParameter(str(exc).removeprefix("-o: "), param_hint="-o") from exc


def adhoc(
    prompt: str,
    system: str | None,
    stdin: str | None,
    config: dict[str, Any],
    history: list[dict[str, Any]] | None = None,
) -> Program:
    """The one-off program `llmos run -p PROMPT [-s SYSTEM]` runs; with `history` (a logged
    conversation's messages, for -c/--cid) the prompt continues it."""
    user = f"{stdin.rstrip()}\n\n{prompt}" if stdin and stdin.strip() else prompt
    messages: list[dict[str, Any]] = [
        {"role": m["role"], "content": m.get("content") or ""}
        for m in history or []
        if m.get("role") in ("system", "user", "assistant")
    ]
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    from llmos.kernel import program as program_mod

    prog = program_mod.chat(messages, config=config)
    prog.name = PROGRAM_NAME
    return prog


def conversation(
    system: boot.System, caller: Any, cid: str | None, last: bool
) -> list[dict[str, Any]]:
    """The messages of run `cid`, or of the newest `-p`/chat run, to continue (-c / --cid)."""
    owner = None if caller.admin else caller.owner
    if cid:
        record = system.log.get_run(cid, owner)
        if record is None:
            raise InputError(f"no run with id '{cid}' in {system.log.path}")
    else:
        found = system.log.list_runs(limit=1, program=PROGRAM_NAME, owner=owner)
        if not found:
            raise InputError(f"no -p conversation to continue in {system.log.path}")
        record = found[0]
    return system.log.messages(record.id, owner)
