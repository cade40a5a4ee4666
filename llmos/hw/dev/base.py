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
  declared for it (`llmos.devices`), the caller's identity.

What this module does not do: dispatch, argument validation, access checks or timeouts (see
`llmos.kernel.syscall`), or register devices (see `llmos.kernel.plugins`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos import params


@dataclass
class CallContext:
    """What a device may know and touch during one call."""

    pid: int = 0
    owner: str = "default"
    root: Path | None = None  # the process's private file namespace (a directory)
    options: dict[str, Any] = field(default_factory=dict)  # from the program's llmos.devices
    timeout_s: float = params.DEVICE_TIMEOUT_S
    max_output_bytes: int = params.DEVICE_MAX_OUTPUT_BYTES
    kernel: Any = None  # the llmos.kernel.core.Kernel running this process; None in a plain run
    memory: Any = (
        None  # the process's llmos.kernel.mm.paging.Pager (store, owner, swap key); or None
    )


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

    def spec(self) -> dict[str, Any]:
        """The tool description given to the model (OpenAI function shape)."""
        return {"name": self.name, "description": self.description, "parameters": self.schema}


def truncate_text(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to at most `limit` UTF-8 bytes (on a character boundary), and whether it was."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", errors="ignore"), True
