"""Per-process quotas on syscalls: how many, for how long, and what `fs` may write.

`GuardedTable` is the syscall table as one process sees it: before each call it checks the
process's quotas (from its owner's policy, `llmos.kernel.security.policy`), and after a successful
`fs` write it counts what was written. Over a quota, the call is refused with an error result
the model reads (like any refused syscall); past its wall time the process is also killed.

- syscalls: at most `quota.syscalls` calls; later ones are refused;
- wall time: a call after `quota.wall_s` seconds of the process's life is refused and the
  process is killed (it ends at its next step);
- fs bytes: an `fs` write whose content would take the process past `quota.fs_bytes` bytes
  written (appends count only what they add) is refused before it reaches the device;
- fs files: an `fs` write to a path that does not exist yet counts as a file created; one past
  `quota.fs_files` is refused.

Invariants: a refused call never reaches its device; only writes that succeeded are counted.

What this module does not cover: files written by other devices (the `python` sandbox writes
into its own working directory; its limits are its own), a namespace's total size across
processes or users (each process has its own quota; a user running many processes writes
many quotas), or deleting files (fs cannot).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from llmos.hw.cpu.base import ToolCall, ToolSpec
from llmos.hw.dev.base import CallContext, Device
from llmos.hw.dev.fs import FsError, split_path
from llmos.kernel.sched.policy import Entity
from llmos.kernel.security.policy import Quota
from llmos.kernel.syscall import SyscallResult, SyscallTable


class GuardedTable(SyscallTable):
    """`table` behind one process's quotas; shares the table's devices and workers (and
    never closes them: the system does)."""

    def __init__(self, table: SyscallTable, quota: Quota, entity: Entity) -> None:
        self.inner = table
        self.devices = table.devices
        self.quota = quota
        self.entity = entity
        self.started = time.monotonic()
        self.calls = 0
        self.fs_bytes = 0
        self.fs_files = 0
        self._lock = threading.Lock()

    def specs(self, grants: dict[str, Device]) -> list[ToolSpec]:
        return self.inner.specs(grants)

    def dispatch(
        self,
        call: ToolCall,
        grants: dict[str, Device],
        ctx: CallContext,
        device_options: dict[str, Any] | None = None,
    ) -> SyscallResult:
        with self._lock:
            refusal, created, written = self._check(call, ctx)
            if refusal is None:
                self.calls += 1
        if refusal is not None:
            return SyscallResult(name=call.name, ok=False, error=f"quota: {refusal}")
        result = self.inner.dispatch(call, grants, ctx, device_options)
        if result.ok and written is not None:
            with self._lock:
                self.fs_bytes += written
                self.fs_files += int(created)
        return result

    def close(self) -> None:
        """Nothing to release: the wrapped table belongs to the system."""

    def _check(self, call: ToolCall, ctx: CallContext) -> tuple[str | None, bool, int | None]:
        """Why the call is refused (None if it is not), whether it would create a file, and
        the bytes it would write (None for a call that is not an fs write)."""
        q = self.quota
        if time.monotonic() - self.started > q.wall_s:
            self.entity.killed = True
            self.entity.poke()
            return f"the process ran past its wall time of {q.wall_s:g} s", False, None
        if self.calls >= q.syscalls:
            return f"the process has made its {q.syscalls} syscalls", False, None
        write = _fs_write(call)
        if write is None or ctx.root is None:
            return None, False, None
        path, content = write
        written = len(content.encode("utf-8"))
        if self.fs_bytes + written > q.fs_bytes:
            return (
                f"fs write of {written} bytes would pass the process's {q.fs_bytes} bytes "
                f"({self.fs_bytes} written)",
                False,
                None,
            )
        try:
            created = not os.path.lexists(ctx.root.joinpath(*split_path(path)))
        except FsError:
            return None, False, None  # the device refuses the path itself
        if created and self.fs_files >= q.fs_files:
            return f"the process has created its {q.fs_files} files", False, None
        return None, created, written


def _fs_write(call: ToolCall) -> tuple[str, str] | None:
    """(path, content) of an fs write call, else None."""
    if call.name != "fs":
        return None
    try:
        args = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return None
    if not isinstance(args, dict) or args.get("op") != "write":
        return None
    path, content = args.get("path", "."), args.get("content")
    if not isinstance(path, str) or not isinstance(content, str):
        return None
    return path, content
