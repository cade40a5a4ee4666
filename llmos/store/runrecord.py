"""A run as the log returns it: one row of `runs`, its JSON columns decoded.

`RunRecord` is what `Log.get_run` and `Log.list_runs` return and what `llmos logs`, the daemon
and the API show (`to_json`); `RUN_COLUMNS` is the column list the log selects to build one.

Invariants: the fields are exactly the `runs` table's columns (`from_row` builds a record from
a row selected with `RUN_COLUMNS`); `to_json` leaves out the program's file path when asked
to, for callers that are not shown the server's files.

What this module does not do: read or write the log (see `llmos.store.log`), or format a run
for a terminal (see the front ends).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any


@dataclass
class RunRecord:
    """One row of `runs`, with its JSON columns decoded."""

    id: str
    started_at: float
    ended_at: float | None
    program: str
    program_path: str | None
    cpu: str
    inputs: dict[str, Any]
    prompt_head: str | None
    response_head: str | None
    response: str | None
    status: str
    error_kind: str | None
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None
    duration_ms: float | None
    pid: int | None
    owner: str | None
    parent_run: str | None
    extra: dict[str, Any] | None

    @property
    def tokens_per_s(self) -> float | None:
        """Generation speed, where the run has both a duration and generated tokens."""
        if not self.duration_ms or self.duration_ms <= 0 or self.completion_tokens <= 0:
            return None
        return self.completion_tokens / (self.duration_ms / 1000.0)

    def to_json(self, *, with_path: bool = True) -> dict[str, Any]:
        """The run as `llmos logs --json` and the API show it; `with_path=False` leaves out
        the program's file path (a remote caller is not shown the server's files)."""
        out: dict[str, Any] = {
            "id": self.id,
            "owner": self.owner,
            "program": self.program,
            "cpu": self.cpu,
            "status": self.status,
            "inputs": self.inputs,
            "response": self.response,
            "error_kind": self.error_kind,
            "error": self.error,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_ms": self.duration_ms,
            "ttft_ms": self.ttft_ms,
            "parent_run": self.parent_run,
            "context": (self.extra or {}).get("context"),  # accounting, page ids if it paged
            "steps": (self.extra or {}).get("steps", []),  # a tool-using run's syscalls
            "cpus": (self.extra or {}).get("cpus"),  # a pool's CPUs that served it, metered
        }
        if with_path:
            out["program_path"] = self.program_path
        return out

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> RunRecord:
        values = dict(row)
        values["inputs"] = json.loads(values["inputs"]) if values["inputs"] else {}
        values["extra"] = json.loads(values["extra"]) if values["extra"] else None
        return cls(**values)


RUN_COLUMNS = ", ".join(f"runs.{name}" for name in RunRecord.__dataclass_fields__)
