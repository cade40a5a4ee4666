"""How `llmos logs` shows a run (its messages, its agent steps, its outcome), and turns
journalling off and on.

One formatter for a step (`step_line`), shared by `llmos run --trace` (as it happens) and
`llmos logs RUN_ID` (afterwards), so both read the same. The formatters print nothing and do
not query the log: `llmos.front.cli` does both.

`llmos logs off|on|status` (`switch`) sets or shows `logging` in config.json. While it is off,
runs are not journalled; the audit trail, the usage ledger, paged-out context (swap pages) and
the kernel daemon's process journal are still kept. A running kernel daemon reads the setting
when it starts.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from llmos import config

if TYPE_CHECKING:
    from llmos.store.log import RunRecord

SWITCH_WORDS = ("off", "on", "status")


def switch(word: str) -> None:
    """`llmos logs off|on|status`: turn journalling off or on in config.json, or say which."""
    home = config.home()
    if word in ("off", "on"):
        wanted = word == "on"

        def change(raw: dict[str, Any]) -> None:
            if wanted:
                raw.pop("logging", None)  # on is the default
            else:
                raw["logging"] = False

        config.update(home, change)
        if wanted:
            click.echo("llmos: logging is on: runs are journalled again", err=True)
        else:
            click.echo(
                "llmos: logging is off: runs are not journalled (the audit trail and usage are"
                " still kept); `llmos logs on` turns it back on",
                err=True,
            )
        return
    from llmos.kernel import boot

    system = boot.boot()
    count = system.log.count_runs()
    state = "on" if system.config.logging else "off"
    runs = f"{count} run{'' if count == 1 else 's'}"
    click.echo(f"logging is {state}: {runs} in {system.log.path}")


def step_line(step: dict[str, Any]) -> str:
    """One agent step as a line: a syscall and its outcome, a malformed call, or the answer."""
    if step.get("kind") == "syscall":
        ok = step.get("ok")
        outcome = json.dumps(step.get("result"), ensure_ascii=False) if ok else step.get("error")
        return (
            f"step {step.get('step')}: {step.get('device')}({step.get('arguments')}) -> "
            f"{'ok' if ok else 'error'}: {outcome} ({float(step.get('ms') or 0):.1f} ms)"
        )
    if step.get("kind") == "malformed":
        return f"step {step.get('step')}: malformed call: {step.get('error')}"
    return f"step {step.get('step')}: answer ({step.get('tokens')} tokens)"


def run_text(record: RunRecord, messages: list[dict[str, Any]]) -> list[str]:
    """A run in full, as lines: header, inputs, messages, steps, error, token counts."""
    lines = [f"run {record.id}  {record.program}  on {record.cpu}  [{record.status}]"]
    if record.inputs:
        lines.append(f"inputs: {json.dumps(record.inputs, ensure_ascii=False)}")
    for m in messages:
        lines.append(f"--- {m.get('role')}\n{m.get('content')}")
    steps = (record.extra or {}).get("steps") or []
    if steps:
        lines.append("--- steps")
        lines.extend(step_line(s) for s in steps)
    if record.error:
        lines.append(f"--- error ({record.error_kind})\n{record.error}")
    lines.append(
        f"--- {record.prompt_tokens} prompt + {record.completion_tokens} generated "
        f"tokens, {record.duration_ms or 0:.0f} ms"
    )
    return lines
