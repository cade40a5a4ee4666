"""How `llmos logs` shows a run: its messages, its agent steps, its outcome.

One formatter for a step (`step_line`), shared by `llmos run --trace` (as it happens) and
`llmos logs RUN_ID` (afterwards), so both read the same. It prints nothing itself and
does not query the log: `llmos.front.cli` does both.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmos.store.log import RunRecord


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
