"""The `python` device: a Python 3 program run in the sandbox (`llmos.hw.dev.sandbox`), with
only its own empty working directory plus the files its program was granted.

Invariants: the code never runs outside the sandbox: a machine where the sandbox cannot be set
up gets `python sandbox unavailable: <why>`, one line, and nothing runs; the result is
`{stdout, stderr, exit_status, timed_out, killed_reason}`, each stream capped.

What this module does not do: build or check the sandbox (see `llmos.hw.dev.sandbox`, which
also says what it does not cover).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from llmos import params
from llmos.hw.dev.base import CallContext, Device, DeviceResult
from llmos.hw.dev.fs import FsError
from llmos.hw.dev.sandbox import Limits, SandboxUnavailable, run_sandboxed, workspace


class PythonDevice(Device):
    name = "python"
    description = (
        "Run a Python 3 program in a sandbox and get its output. Print what you want to see. "
        "Only the standard library; no network; no files outside its own empty working "
        "directory (plus any files this program was granted); limited CPU time, memory, "
        "processes and output. Returns {stdout, stderr, exit_status, timed_out, killed_reason}."
    )
    schema: dict[str, Any] = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "code": {
                "type": "string",
                "description": "The Python source to run, e.g. 'print(sum(range(10)))'.",
                "minLength": 1,
                "maxLength": params.PYTHON_CODE_MAX_BYTES,
            }
        },
        "required": ["code"],
        "additionalProperties": False,
    }

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        code = args.get("code")
        if not isinstance(code, str) or not code.strip():
            return DeviceResult.failure("python: 'code' must be a non-empty string")
        data = code.encode("utf-8")
        if len(data) > params.PYTHON_CODE_MAX_BYTES:
            return DeviceResult.failure(
                f"python: code too long (limit {params.PYTHON_CODE_MAX_BYTES} bytes)"
            )
        limits = Limits.from_context(ctx)
        try:
            with workspace(ctx) as space:
                code_path = space.run_dir / "main.py"
                fd = os.open(code_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                result = run_sandboxed("python", space, limits=limits, code_path=code_path)
        except SandboxUnavailable as exc:
            return DeviceResult.failure(f"python sandbox unavailable: {exc}")
        except FsError as exc:
            return DeviceResult.failure(f"python: {exc}")
        except OSError as exc:
            return DeviceResult.failure(f"python: could not start the sandbox: {exc}")
        return DeviceResult.success(result.output(), truncated=result.truncated)
