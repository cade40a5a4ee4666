"""Running a program written in a test, once, on a scripted CPU with the built-in devices.

Shared by the kernel tests that check what the kernel does around the CPU (routes, checks,
votes): the CPU's replies are scripted, the devices and the run log are real.
"""

from __future__ import annotations

from pathlib import Path

from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.hw.dev.base import CallContext
from llmos.kernel.calls import Devices
from llmos.kernel.loop import run_process
from llmos.kernel.plugins import devices as builtin_devices
from llmos.kernel.program import Program, load
from llmos.kernel.reply import RunResult
from llmos.kernel.syscall import SyscallTable, grants_for
from llmos.store.log import Log


def program(tmp_path: Path, front: str, body: str = "{{input}}") -> Program:
    """A program of front matter `front` and template `body`, loaded from a file."""
    path = tmp_path / "p.prompt"
    path.write_text(f"---\n{front}\n---\n{body}\n")
    return load(path)


def run(tmp_path: Path, prog: Program, cpu: ScriptedCPU, text: str) -> tuple[RunResult, str]:
    """Run `prog` on input `text` with the devices it is granted; its result and the text
    it streamed."""
    table = SyscallTable(builtin_devices())
    devices = Devices(table, grants_for(prog.tools, {}, table.devices, "t"), CallContext())
    seen: list[str] = []
    try:
        with Log.open(tmp_path / "logs.db") as log:
            result = run_process(prog, {"input": text}, cpu, log, seen.append, devices=devices)
    finally:
        table.close()
    return result, "".join(seen)
