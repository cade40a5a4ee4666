"""MCP servers mount lazily: a run starts only the servers whose tools its program declares.

Real servers, written here with the MCP SDK: one that answers (`echo`), one that records that it
was started and then hangs before answering `initialize`, one that crashes at start with a
message on stderr. The CPU is scripted, so the runs are deterministic.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos.errors import BackendError, ProgramError
from llmos.hw.cpu.base import ToolCall
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel.boot import boot
from llmos.kernel.core import Kernel
from tests.hw.dev.test_mcp import _assert_no_new_children, _descendants

ECHO_SERVER = textwrap.dedent(
    """
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("echo")

    @app.tool(structured_output=False)
    def echo(text: str) -> str:
        \"\"\"Return the text unchanged.\"\"\"
        return text

    if __name__ == "__main__":
        app.run()
    """
)

# Records its pid, then never answers: a server that hangs at start.
HANG_SERVER = (
    "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(3600)\n"
)

CRASH_SERVER = "import sys\nsys.exit('cannot open the frobnicator')\n"


@pytest.fixture
def no_orphans() -> Iterator[None]:
    before = _descendants(os.getpid())
    yield
    _assert_no_new_children(before)


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LLMOS_HOME", str(home))
    paths = {"echo": ECHO_SERVER, "hang": HANG_SERVER, "crash": CRASH_SERVER}
    found: dict[str, Path] = {}
    for name, text in paths.items():
        found[name] = tmp_path / f"{name}_server.py"
        found[name].write_text(text)
    marker = tmp_path / "hang.pid"
    config = {
        "mcpServers": {
            "echo": {"command": sys.executable, "args": [str(found["echo"])]},
            "hang": {
                "command": sys.executable,
                "args": [str(found["hang"]), str(marker)],
                "start_timeout_s": 60,
            },
            "crash": {"command": sys.executable, "args": [str(found["crash"])]},
        }
    }
    (home / "config.json").write_text(json.dumps(config))
    return {"marker": marker, **found}


@pytest.fixture
def kernel(servers: dict[str, Path], no_orphans: None) -> Iterator[Kernel]:
    k = Kernel(boot())
    yield k
    k.shutdown()
    k.system.close()


def _program(tmp: Path, tools: list[str]) -> str:
    path = tmp / "p.prompt"
    path.write_text(f"---\nname: p\ntools: [{', '.join(tools)}]\n---\n{{{{input}}}}\n")
    return str(path)


def _call(name: str, args: dict[str, str]) -> ToolCall:
    return ToolCall(id="c1", name=name, arguments=json.dumps(args))


def test_a_calc_only_run_starts_no_server(
    kernel: Kernel, servers: dict[str, Path], tmp_path: Path
) -> None:
    cpu = ScriptedCPU([[_call("calc", {"expression": "6*7"})], "42"])
    proc = kernel.spawn(_program(tmp_path, ["calc"]), {"input": "6*7?"}, cpu=cpu)
    assert proc.wait(60)
    assert proc.exit_status == "ok", proc.error
    assert not servers["marker"].exists(), "the hanging server was started"
    table = kernel.system.syscalls
    assert sorted(table.unmounted()) == ["crash", "echo", "hang"]


def test_only_the_declared_server_starts(
    kernel: Kernel, servers: dict[str, Path], tmp_path: Path
) -> None:
    cpu = ScriptedCPU([[_call("echo.echo", {"text": "ping"})], "pong"])
    proc = kernel.spawn(_program(tmp_path, ["calc", "echo.echo"]), {"input": "go"}, cpu=cpu)
    assert proc.wait(60)
    assert proc.exit_status == "ok", proc.error
    tool_reply = cpu.requests[-1].messages[-1]
    assert tool_reply["role"] == "tool" and json.loads(tool_reply["content"])["result"] == "ping"
    assert not servers["marker"].exists(), "the hanging server was started"
    assert sorted(kernel.system.syscalls.unmounted()) == ["crash", "hang"]


def test_a_server_crashing_at_start_is_named_with_its_stderr(
    kernel: Kernel, tmp_path: Path
) -> None:
    with pytest.raises(BackendError) as info:
        kernel.spawn(_program(tmp_path, ["crash.anything"]), {"input": "go"}, cpu=ScriptedCPU())
    message = str(info.value)
    assert "device 'crash.anything'" in message
    assert "server crash exited during start-up" in message
    assert "cannot open the frobnicator" in message
    assert "unknown device" not in message


def test_an_unknown_tool_of_a_running_server_is_an_unknown_device(
    kernel: Kernel, tmp_path: Path
) -> None:
    with pytest.raises(ProgramError) as info:
        kernel.spawn(_program(tmp_path, ["echo.nope"]), {"input": "go"}, cpu=ScriptedCPU())
    assert "declares unknown device 'echo.nope'" in str(info.value)
    assert "echo.echo" in str(info.value) and "hang.*" in str(info.value)
