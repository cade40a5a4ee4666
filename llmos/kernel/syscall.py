"""Syscalls: one table from names to devices, and the path every call takes through it.

`SyscallTable.dispatch(call, grants, ctx)` is the whole path, in order:

    1. look the name up        unknown device              -> error result
    2. access check            device not granted          -> error result
    3. parse the arguments     not a JSON object           -> error result
    4. validate them           fails the device's schema   -> error result (field and reason)
    5. run the device          off the caller's thread, with a wall-clock timeout; a device
                               that raises, hangs or prints too much -> error or truncated result
    6. label the result        a `SyscallResult`, which becomes a context segment the process
                               reads as a `tool` message

Nothing raises out of `dispatch`: every failure is a result the model sees and can recover
from, and the process continues. A syscall's result is never silently dropped.

Mounts: devices that run elsewhere (the tools of configured MCP servers, named
`server.tool`) are not started with the table. `resolve(names)` mounts, concurrently, only the
servers whose tools a program declares, the first time one is declared. A server that cannot
start is that server's problem (its name and its stderr; tried again on the next declaration,
within its supervisor's restart bounds), and `grants_for` reports it as a `BackendError`, not
as an unknown device. A server no program declares is never started, so one that hangs costs
nothing to a program that does not use it.

Grants: a program gets only the devices it declares (Dotprompt `tools:`, or keys of
`llmos.devices`, whose values are per-device options). Devices that are off by default
(`shell`) need both the declaration and `llmos.devices.<name>.grant: true`.

What this module does not do: decide which devices exist (see `llmos.kernel.plugins`), or
loop generate/trap/syscall (see `llmos.kernel.loop`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema

from llmos import params
from llmos.errors import BackendError, ProgramError
from llmos.hw.cpu.base import ToolCall, ToolSpec
from llmos.hw.dev.base import CallContext, Device, DeviceResult


@dataclass
class SyscallResult:
    name: str
    ok: bool
    output: Any = None
    error: str | None = None
    truncated: bool = False
    duration_ms: float = 0.0

    def segment(self) -> str:
        """The text the process reads back (a `tool` message)."""
        if self.ok:
            body: dict[str, Any] = {"ok": True, "result": self.output}
            if self.truncated:
                body["truncated"] = True
        else:
            body = {"ok": False, "error": self.error}
        return json.dumps(body, ensure_ascii=False, default=str)


class Mounts(Protocol):
    """Devices mounted on demand, a group (an MCP server) at a time; see `llmos.hw.dev.mcp`."""

    def names(self) -> list[str]:
        """The groups that can be mounted (server names)."""
        ...

    def mount(self, groups: list[str], problems: dict[str, str]) -> dict[str, Device]:
        """Start `groups` concurrently; their devices by name. A group that cannot start is
        left out, its one-line reason in `problems[group]`."""
        ...

    def close_all(self) -> None: ...


def grants_for(
    declared: list[str],
    options: dict[str, Any],
    table: dict[str, Device] | SyscallTable,
    program: str,
) -> dict[str, Device]:
    """The devices a program may call; ProgramError for a declared device that does not exist
    or one that is off by default and not explicitly granted; BackendError for one whose
    server cannot start. Given the table itself, first mounts the servers the program
    declares (`SyscallTable.resolve`)."""
    names = list(dict.fromkeys([*declared, *options]))
    problems: dict[str, str] = {}
    if isinstance(table, SyscallTable):
        problems = table.resolve(names)
        devices, unmounted = table.devices, table.unmounted()
    else:
        devices, unmounted = table, []
    grants: dict[str, Device] = {}
    for name in names:
        device = devices.get(name)
        if device is None:
            if name in problems:
                raise BackendError(f"{program}: device '{name}': {problems[name]}")
            known = ", ".join([*sorted(devices), *(f"{g}.*" for g in unmounted)]) or "none"
            raise ProgramError(f"{program}: declares unknown device '{name}' (known: {known})")
        opts = options.get(name) or {}
        if not device.default_on and not (isinstance(opts, dict) and opts.get("grant") is True):
            raise ProgramError(
                f"{program}: device '{name}' is off by default; grant it with "
                f"llmos.devices.{name}.grant: true"
            )
        grants[name] = device
    return grants


class SyscallTable:
    def __init__(
        self,
        devices: dict[str, Device],
        workers: int = params.SYSCALL_WORKERS,
        mounts: Mounts | None = None,
    ):
        self.devices = dict(devices)
        self.mounts = mounts
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="llmos-syscall"
        )
        self._validators = {
            name: jsonschema.validators.validator_for(d.schema)(d.schema)
            for name, d in self.devices.items()
        }
        self._mount_lock = threading.Lock()
        self._mounted: dict[str, str] = {}  # group -> "" (mounted) or its one-line problem

    def unmounted(self) -> list[str]:
        """The groups (MCP servers) not started yet."""
        if self.mounts is None:
            return []
        return [g for g in self.mounts.names() if g not in self._mounted]

    def resolve(self, names: Iterable[str]) -> dict[str, str]:
        """Mount the groups that `names` (device names `group.tool`) need and that are not
        mounted yet, concurrently; returns {device name: its group's problem} for the names
        whose group could not start (now or earlier)."""
        if self.mounts is None:
            return {}
        groups = set(self.mounts.names())
        wanted = {
            name: name.split(params.MCP_TOOL_NAME_SEP, 1)[0]
            for name in names
            if name not in self.devices and params.MCP_TOOL_NAME_SEP in name
        }
        wanted = {n: g for n, g in wanted.items() if g in groups}
        problems = self.mount(sorted(set(wanted.values())))
        return {n: problems[g] for n, g in wanted.items() if problems.get(g)}

    def mount(self, groups: list[str]) -> dict[str, str]:
        """Start the groups (MCP servers) not mounted yet, concurrently, and add their
        devices; returns {group: its one-line problem} for those that could not start (now or
        earlier: a group that failed is tried again, within its supervisor's restart bounds)."""
        if self.mounts is None:
            return {}
        with self._mount_lock:
            todo = [g for g in groups if self._mounted.get(g) != ""]
            if todo:
                problems: dict[str, str] = {}
                found = self.mounts.mount(todo, problems)
                for name, device in found.items():
                    self.devices.setdefault(name, device)
                    self._validators.setdefault(
                        name, jsonschema.validators.validator_for(device.schema)(device.schema)
                    )
                for group in todo:
                    self._mounted[group] = problems.get(group, "")
            return {g: self._mounted[g] for g in groups if self._mounted.get(g)}

    def specs(self, grants: dict[str, Device]) -> list[ToolSpec]:
        return [ToolSpec(d.name, d.description, d.schema) for d in grants.values()]

    def dispatch(
        self,
        call: ToolCall,
        grants: dict[str, Device],
        ctx: CallContext,
        device_options: dict[str, Any] | None = None,
    ) -> SyscallResult:
        """Run one call; `device_options` maps a device name to the options the program
        declared for it (`llmos.devices`), which that device sees as `ctx.options`."""
        started = time.perf_counter()
        opts = (device_options or {}).get(call.name)
        if isinstance(opts, dict):
            ctx = dataclasses.replace(ctx, options=opts)
        result = self._dispatch(call, grants, ctx)
        result.duration_ms = (time.perf_counter() - started) * 1000
        return result

    def _dispatch(
        self, call: ToolCall, grants: dict[str, Device], ctx: CallContext
    ) -> SyscallResult:
        name = call.name
        device = self.devices.get(name)
        if device is None:
            return _fail(name, f"unknown device '{name}'")
        if name not in grants:
            return _fail(name, f"device '{name}' is not granted to this program")
        try:
            args = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as exc:
            return _fail(name, f"arguments are not valid JSON ({exc.msg} at char {exc.pos})")
        if not isinstance(args, dict):
            return _fail(name, "arguments must be a JSON object")
        error = jsonschema.exceptions.best_match(self._validators[name].iter_errors(args))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(arguments)"
            return _fail(name, f"invalid arguments at {where}: {error.message}")
        if device.timeout_s is not None:  # a device that waits on purpose (call, ask)
            ctx = dataclasses.replace(ctx, timeout_s=device.timeout_s)
        future = self._pool.submit(device.call, args, ctx)
        try:
            out: DeviceResult = future.result(timeout=ctx.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return _fail(name, f"device '{name}' did not answer within {ctx.timeout_s:g} s")
        except Exception as exc:  # a device bug: the process still gets a result
            return _fail(name, f"device '{name}' failed: {type(exc).__name__}: {exc}")
        if not isinstance(out, DeviceResult):
            return _fail(name, f"device '{name}' returned {type(out).__name__}, not a result")
        if not out.ok:
            return _fail(name, out.error or "failed")
        text = json.dumps(out.output, ensure_ascii=False, default=str)
        if len(text.encode("utf-8")) > ctx.max_output_bytes:
            cut = text.encode("utf-8")[: ctx.max_output_bytes].decode("utf-8", "ignore")
            return SyscallResult(name=name, ok=True, output=cut, truncated=True)
        return SyscallResult(name=name, ok=True, output=out.output, truncated=out.truncated)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for device in self.devices.values():
            device.close()
        if self.mounts is not None:
            self.mounts.close_all()


def _fail(name: str, error: str) -> SyscallResult:
    return SyscallResult(name=name, ok=False, error=error)
