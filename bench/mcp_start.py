"""MCP servers cost only the runs that declare them.

Boots a kernel whose config names MCP servers, spawns one program and waits for it, with a
scripted CPU (one `calc` call, then the answer) so that what is timed is llmos, not a model.
Three configurations: no MCP server; one server that hangs at start (`start_timeout_s` =
HANG_TIMEOUT_S) which the program does not declare; and a real SDK server (`echo`) that the
program does declare and calls. Reported as the median wall time of RUNS boot+run+close
cycles each.

Goal: a calc-only run with a hanging server configured costs no more than one without it
(servers start only when a program declares one of their tools).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, median, quick, table

from llmos.hw.cpu.base import ToolCall
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel.boot import boot
from llmos.kernel.core import Kernel

RUNS = 2 if quick() else 5
HANG_TIMEOUT_S = 10

ECHO = """
from mcp.server.mcpserver import MCPServer

app = MCPServer("echo")

@app.tool(structured_output=False)
def echo(text: str) -> str:
    \"\"\"Return the text.\"\"\"
    return text

if __name__ == "__main__":
    app.run()
"""


def _once(home: Path, servers: dict[str, Any], tools: list[str], call: ToolCall) -> float:
    (home / "config.json").write_text(json.dumps({"mcpServers": servers}))
    prog = home / "p.prompt"
    prog.write_text(f"---\nname: p\ntools: [{', '.join(tools)}]\n---\n{{{{input}}}}\n")
    started = time.perf_counter()
    kernel = Kernel(boot())
    try:
        proc = kernel.spawn(str(prog), {"input": "go"}, cpu=ScriptedCPU([[call], "done"]))
        proc.wait(120)
        assert proc.exit_status == "ok", proc.error
    finally:
        kernel.shutdown()
        kernel.system.close()
    return time.perf_counter() - started


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="llmos-bench-mcp-"))
    home = work / "home"
    home.mkdir()
    os.environ["LLMOS_HOME"] = str(home)
    (work / "hang.py").write_text("import time\ntime.sleep(3600)\n")
    (work / "echo.py").write_text(ECHO)
    hang = {
        "command": sys.executable,
        "args": [str(work / "hang.py")],
        "start_timeout_s": HANG_TIMEOUT_S,
    }
    echo = {"command": sys.executable, "args": [str(work / "echo.py")]}
    calc = ToolCall(id="c1", name="calc", arguments=json.dumps({"expression": "6*7"}))
    ping = ToolCall(id="c1", name="echo.echo", arguments=json.dumps({"text": "ping"}))
    cases = [
        ("calc_s", "calc, no MCP server", {}, ["calc"], calc),
        ("calc_hang_s", "calc, a hanging server configured", {"hang": hang}, ["calc"], calc),
        (
            "echo_s",
            "echo.echo declared (its server started)",
            {"hang": hang, "echo": echo},
            ["echo.echo"],
            ping,
        ),
    ]
    rows = []
    result: dict[str, Any] = {"runs": RUNS, "hang_timeout_s": HANG_TIMEOUT_S}
    for key, label, servers, tools, call in cases:
        seconds = median([_once(home, servers, tools, call) for _ in range(RUNS)])
        rows.append((label, seconds))
        result[key] = round(seconds, 3)
    print(table(["run", "median s (boot + run + close)"], rows))
    base, with_hang = rows[0][1], rows[1][1]
    result["hang_overhead_s"] = round(with_hang - base, 3)
    result["goal_met"] = with_hang < base + 1.0
    emit("mcp_start", result)


if __name__ == "__main__":
    main()
