"""The device interface: a peripheral the model reaches through a syscall.

A device is classical software (a calculator, a Python interpreter, files, a terminal, an MCP
server's tool) behind one small contract: a name, a description the model reads, a JSON
Schema for its arguments, limits, and `call(args, ctx)`, which returns a `DeviceResult`.

Invariants:
- `call` receives arguments already validated against `schema` (the syscall layer does it).
- `call` never raises for a failure of the device's own work: it returns
  `DeviceResult(ok=False, error=...)` with a clear one-line message the model can read and
  recover from. Only a bug raises, and the syscall layer turns that into an error result too.
- Output is bounded: a device truncates its result to `ctx.max_output_bytes` and says so.
- A device reaches only what `ctx` grants: the process's file root, the options the program
  declared for it (`llmos.devices`), the caller's identity, and narrow handles onto the
  kernel for the devices that need one (`ProcHandle`, `MemoryHandle`, `ShmHandle`; None
  outside the kernel). Devices never see the kernel itself, and this package imports nothing
  from `llmos.kernel`, `llmos.store` or `llmos.front`: the handles are implemented there
  (`llmos.kernel.handles`), and a test can pass any object with the same methods.

What this module does not do: dispatch, argument validation, access checks or timeouts (see
`llmos.kernel.syscall`), or register devices (see `llmos.kernel.plugins`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from llmos import params


@dataclass(frozen=True)
class Child:
    """A child process that `ProcHandle.spawn` started."""

    pid: int
    program: str  # its program's name
    json_mode: bool  # its program replies in JSON


@dataclass(frozen=True)
class ChildEnd:
    """How waiting for a child ended. `how`: "exited" (on its own; see `exit_status`),
    "killed" (the caller was killed) or "timeout" (the wait's limit passed); in the last two
    the child was killed."""

    how: Literal["exited", "killed", "timeout"]
    exit_status: str | None = None
    error: str | None = None
    text: str = ""


class ProcHandle(Protocol):
    """What the process devices (call, ask) may ask of the kernel, for the calling process."""

    def spawn(self, ref: str, inputs: dict[str, Any]) -> Child:
        """Start program `ref` (a path relative to the caller's program file, else what the
        kernel's search finds) as a child; LlmosError if it cannot start."""
        ...

    def wait(self, child: Child, limit: float) -> ChildEnd:
        """Wait at most `limit` s for `child`, off the caller's CPU; kill it if the caller is
        killed or the limit passes."""
        ...

    def ask(self, question: str, timeout: float) -> str:
        """The answer of the person who runs the process; LlmosError if none in time."""
        ...

    def quarantine(self, text: str, task: str, schema: dict[str, Any]) -> Child:
        """Start a child with no devices that reads `text` for `task` and answers JSON for
        `schema` (the quarantine device); LlmosError if it cannot start."""
        ...


class MemoryHandle(Protocol):
    """Long-term memory and paged-out context, for the calling process and its owner."""

    def remember(self, text: str, tags: list[str]) -> int:
        """Store a memory; its id."""
        ...

    def recall(self, query: str, k: int, source: str) -> list[dict[str, Any]]:
        """At most `k` memories and/or pages (`source`: all, memories, pages), best first, as
        rows for the model ({id, text, score, tags?, snippet?})."""
        ...

    def forget(self, memory_id: int) -> bool:
        """Delete a memory; False if the owner has none with that id."""
        ...

    def page_in(self, page_id: int) -> dict[str, Any] | None:
        """A page of this process's ({kind, text}), or None if there is none."""
        ...


class ShmHandle(Protocol):
    """Shared memory segments, within the caller's rights (errors are LlmosError)."""

    def read(self, name: str) -> dict[str, Any]:
        """{name, version, text}."""
        ...

    def write(
        self, name: str, text: str, *, append: bool, if_version: int | None
    ) -> dict[str, Any]:
        """{name, version} after the write."""
        ...

    def list(self) -> list[dict[str, Any]]:
        """[{name, owner, version, bytes}] of the segments the caller may read."""
        ...


@dataclass
class CallContext:
    """What a device may know and touch during one call."""

    pid: int = 0
    owner: str = "default"
    root: Path | None = None  # the process's private file namespace (a directory)
    options: dict[str, Any] = field(default_factory=dict)  # from the program's llmos.devices
    timeout_s: float = params.DEVICE_TIMEOUT_S
    max_output_bytes: int = params.DEVICE_MAX_OUTPUT_BYTES
    proc: ProcHandle | None = None  # call, ask; None outside the kernel
    memory: MemoryHandle | None = None  # remember, recall, forget, page_in
    shm: ShmHandle | None = None  # shm_read, shm_write, shm_list


@dataclass
class DeviceResult:
    ok: bool
    output: Any = None  # JSON-serialisable result shown to the model
    error: str | None = None  # one line, for the model and the log
    truncated: bool = False

    @classmethod
    def success(cls, output: Any, *, truncated: bool = False) -> DeviceResult:
        return cls(ok=True, output=output, truncated=truncated)

    @classmethod
    def failure(cls, error: str) -> DeviceResult:
        return cls(ok=False, error=error)


class Device(abc.ABC):
    """A peripheral. Subclasses set `name`, `description` and `schema`."""

    name: str = "device"
    description: str = ""  # what the model reads: what it does, when to use it
    schema: dict[str, Any] = {"type": "object", "properties": {}}  # noqa: RUF012
    default_on: bool = True  # False: only when a program both declares and is granted it
    timeout_s: float | None = None  # its own wall-clock limit, when it differs from the default

    @abc.abstractmethod
    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        """Do the work; see the module note for the contract."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (child processes, connections)."""


def truncate_text(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to at most `limit` UTF-8 bytes (on a character boundary), and whether it was."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", errors="ignore"), True
