"""`llmos shell` on an in-process kernel whose CPU is scripted, for the pty tests.

    python -m tests.front.shell_harness SCENARIO.json

The scenario: `replies` (what the CPU answers, in order: a string, or {"call": DEVICE,
"args": {...}} for a tool call), `delay` (seconds per streamed word, so a job can be caught
while it runs), `programs` ({name: source}, installed for the OS user), `approve` (devices
whose calls wait for approval). The shell is the real one (`Shell` and `loop` over the `Local`
backend, the kernel's API as the OS user); only the CPU is a test double.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from llmos import config, params
from llmos.front.shell.backend import Local
from llmos.front.shell.repl import Shell, loop
from llmos.hw.cpu.base import Chunk, GenRequest, ToolCall
from llmos.hw.cpu.scripted import Reply, ScriptedCPU
from llmos.kernel import api
from llmos.kernel.boot import boot
from llmos.kernel.core import Kernel
from llmos.kernel.security import principals
from llmos.kernel.security.policy import UserPolicy


class PacedCPU(ScriptedCPU):
    def __init__(self, replies: list[Reply], delay: float) -> None:
        super().__init__(replies)
        self.delay = delay

    def generate(self, request: GenRequest) -> Iterator[Chunk]:
        for chunk in super().generate(request):
            if chunk.text and self.delay:
                time.sleep(self.delay)
            yield chunk


def reply(item: object) -> Reply:
    if isinstance(item, dict):
        return [ToolCall(f"call-{id(item)}", item["call"], json.dumps(item.get("args", {})))]
    return str(item)


def main(path: str) -> None:
    scenario = json.loads(Path(path).read_text())
    kernel = Kernel(boot())
    kernel.add_cpu(
        PacedCPU([reply(r) for r in scenario.get("replies", [])], scenario.get("delay", 0))
    )
    if scenario.get("approve"):
        policy = UserPolicy(approve=list(scenario["approve"]))
        kernel.user_policy = lambda owner: policy
    caller = api.Caller.of(principals.current())
    for name, source in scenario.get("programs", {}).items():
        api.call(kernel, caller, "programs.install", {"name": name, "source": source})
    shell = Shell(Local(kernel, caller, "scripted"))
    shell.say("llmos shell on this machine (scripted CPU)")
    try:
        loop(shell, config.home() / params.SHELL_HISTORY_NAME)
    finally:
        kernel.shutdown()
        kernel.system.close()


if __name__ == "__main__":
    main(sys.argv[1])
