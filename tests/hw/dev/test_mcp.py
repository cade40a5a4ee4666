"""MCP servers as llmos devices: the supervised client, against real servers.

Devices are tested against real servers: `mcp-server-time` (PyPI) and the npm reference server
`@modelcontextprotocol/server-everything`, installed by `scripts/install-test-servers.sh` into
the environment and `<repo>/.mcp-servers` (the session fixture runs the script when they are
missing; the npm tests skip only when npm itself is absent), plus tiny misbehaving servers
written here with the SDK's `MCPServer`: one whose tool kills the server, one whose tool never
answers, one that writes garbage on stdout. Every test checks that no server process outlives
`close_all` (a scan of /proc for this process's descendants).

(llmos itself as an MCP server is tested in tests/front/test_mcpserver.py.)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos.errors import ConfigError
from llmos.hw.dev.base import CallContext
from llmos.hw.dev.mcp import MCPDevices
from llmos.hw.dev.mcpconfig import ServerSpec, parse_config
from llmos.hw.dev.mcpsupervisor import MCPServerError, MCPSupervisor
from tests.servers import assert_no_new_children, descendants

REPO = Path(__file__).resolve().parents[3]
INSTALL_SCRIPT = REPO / "scripts" / "install-test-servers.sh"
EVERYTHING_BIN = REPO / ".mcp-servers" / "node_modules" / ".bin" / "mcp-server-everything"

# A small SDK server with well-behaved and misbehaving tools.
FLAKY_SERVER = textwrap.dedent(
    """
    import os, sys, time
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    app = MCPServer("flaky")

    @app.tool(structured_output=False)
    def echo(text: str) -> str:
        \"\"\"Return the text unchanged.\"\"\"
        return text

    @app.tool(structured_output=False)
    def die() -> str:
        \"\"\"Kill the server process.\"\"\"
        os._exit(1)

    @app.tool(structured_output=False)
    def hang() -> str:
        \"\"\"Never answer.\"\"\"
        while True:
            time.sleep(3600)

    @app.tool(structured_output=False)
    def fail() -> str:
        \"\"\"Report an error.\"\"\"
        raise ToolError("the flaky tool failed on purpose")

    if __name__ == "__main__":
        app.run()
    """
)

# Writes lines that are not JSON-RPC, then waits on stdin as a server would.
GARBAGE_SERVER = textwrap.dedent(
    """
    import sys
    print("hello, I am not JSON-RPC", flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture(scope="session")
def installed_servers() -> None:
    """Run the install script once if the real servers are missing."""
    if shutil.which("mcp-server-time") is None or not EVERYTHING_BIN.exists():
        if shutil.which("npm") is None and shutil.which("mcp-server-time") is not None:
            return
        subprocess.run(["bash", str(INSTALL_SCRIPT)], check=True, timeout=600)


@pytest.fixture
def everything_bin(installed_servers: None) -> str:
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("npm/node not installed: cannot run the npm reference MCP servers")
    assert EVERYTHING_BIN.exists(), "install-test-servers.sh did not install server-everything"
    return str(EVERYTHING_BIN)


@pytest.fixture
def time_bin(installed_servers: None) -> str:
    path = shutil.which("mcp-server-time")
    assert path is not None, "install-test-servers.sh did not install mcp-server-time"
    return path


@pytest.fixture
def no_orphans() -> Iterator[None]:
    before = descendants(os.getpid())
    yield
    assert_no_new_children(before)


@pytest.fixture
def flaky(tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "flaky_server.py"
    script.write_text(FLAKY_SERVER)
    return {"command": sys.executable, "args": [str(script)]}


def _ctx(**kw: Any) -> CallContext:
    return CallContext(**kw)


# --- Configuration ------------------------------------------------------------------------------


def test_parse_config_accepts_the_claude_desktop_shape() -> None:
    specs = parse_config(
        {
            "mcpServers": {
                "a": {"command": "x", "args": ["1"], "env": {"K": "V"}},
                "b": {"url": "http://127.0.0.1:1/mcp"},
                "c": {"command": "y", "disabled": True},
            },
            "other": 1,
        }
    )
    assert [s.name for s in specs] == ["a", "b"]
    assert specs[0] == ServerSpec(name="a", command="x", args=["1"], env={"K": "V"})
    assert specs[1].url == "http://127.0.0.1:1/mcp"
    assert parse_config({}) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({}, "exactly one of 'command' or 'url'"),
        ({"command": "x", "url": "http://h"}, "exactly one"),
        ({"command": "x", "args": "a b"}, "args: expected a list of strings"),
        ({"command": "x", "env": {"K": 1}}, "env: expected a mapping"),
        ({"url": "ftp://h"}, "url: expected an http"),
        ({"command": "x", "bogus": 1}, "unknown key 'bogus'"),
        ("x", "expected a mapping"),
    ],
)
def test_parse_config_rejects_bad_entries(entry: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=r"mcpServers\.s") as info:
        parse_config({"mcpServers": {"s": entry}})
    assert message in str(info.value)


def test_parse_config_rejects_a_dotted_server_name() -> None:
    with pytest.raises(ConfigError, match=r"must be non-empty and not contain '\.'"):
        parse_config({"mcpServers": {"a.b": {"command": "x"}}})


# --- Real servers -------------------------------------------------------------------------------


@pytest.mark.slow
def test_time_server_lists_and_answers(time_bin: str, no_orphans: None) -> None:
    with MCPDevices({"mcpServers": {"time": {"command": time_bin}}}) as mcp:
        devices = mcp.devices()
        assert {"time.get_current_time", "time.convert_time"} <= set(devices)
        device = devices["time.get_current_time"]
        assert "timezone" in device.schema["properties"]
        assert device.description
        result = device.call({"timezone": "Europe/Paris"}, _ctx())
        assert result.ok, result.error
        assert result.output["timezone"] == "Europe/Paris"
        assert "T" in result.output["datetime"]
        bad = device.call({"timezone": "Mars/Olympus_Mons"}, _ctx())
        assert not bad.ok
        assert "server time, tool get_current_time" in (bad.error or "")


@pytest.mark.slow
def test_everything_server_echo_and_sum(everything_bin: str, no_orphans: None) -> None:
    mcp = MCPDevices({"mcpServers": {"every": {"command": everything_bin}}})
    try:
        devices = mcp.devices()
        echo = devices["every.echo"].call({"message": "hello"}, _ctx())
        assert echo.ok and echo.output == "Echo: hello"
        total = devices["every.get-sum"].call({"a": 2, "b": 40}, _ctx())
        assert total.ok and "42" in total.output
        cut = devices["every.echo"].call({"message": "x" * 500}, _ctx(max_output_bytes=20))
        assert cut.ok and cut.truncated and len(cut.output) == 20
    finally:
        mcp.close_all()


@pytest.mark.slow
def test_two_servers_start_together(time_bin: str, everything_bin: str, no_orphans: None) -> None:
    config = {"mcpServers": {"time": {"command": time_bin}, "every": {"command": everything_bin}}}
    with MCPDevices(config) as mcp:
        names = set(mcp.devices())
    assert "time.get_current_time" in names and "every.echo" in names


HTTP_SERVER = textwrap.dedent(
    """
    import sys
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("web")

    @app.tool(structured_output=False)
    def shout(text: str) -> str:
        \"\"\"Return the text in capitals.\"\"\"
        return text.upper()

    app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
    """
)


def test_streamable_http_server_by_url(tmp_path: Path, no_orphans: None) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = tmp_path / "web.py"
    script.write_text(HTTP_SERVER)
    server = subprocess.Popen(
        [sys.executable, str(script), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as conn:
                if conn.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/mcp"
        with MCPDevices({"mcpServers": {"web": {"url": url}}}) as mcp:
            devices = mcp.devices()
            result = devices["web.shout"].call({"text": "hi"}, _ctx())
            assert result.ok, result.error
            assert result.output == "HI"
    finally:
        server.kill()
        server.wait(timeout=10)


# Serves `shout` over streamable HTTP at /mcp, or over the legacy SSE transport at /sse (argv[2]
# "sse"); with argv[3], every request must carry `Authorization: Bearer <argv[3]>` (else 401).
REMOTE_SERVER = textwrap.dedent(
    """
    import sys
    import uvicorn
    from starlette.responses import PlainTextResponse
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("remote")

    @app.tool(structured_output=False)
    def shout(text: str) -> str:
        \"\"\"Return the text in capitals.\"\"\"
        return text.upper()

    web = app.sse_app() if sys.argv[2] == "sse" else app.streamable_http_app()
    token = sys.argv[3] if len(sys.argv) > 3 else None

    async def guarded(scope, receive, send):
        if scope["type"] == "http" and token:
            given = dict(scope["headers"]).get(b"authorization", b"").decode()
            if given != f"Bearer {token}":
                await PlainTextResponse("unauthorized", status_code=401)(scope, receive, send)
                return
        await web(scope, receive, send)

    uvicorn.run(guarded, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    """
)


@contextlib.contextmanager
def _remote_server(tmp_path: Path, transport: str, token: str = "") -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SERVER)
    argv = [sys.executable, str(script), str(port), transport] + ([token] if token else [])
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as conn:
                if conn.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield port
    finally:
        server.kill()
        server.wait(timeout=10)


def test_headers_authenticate_to_a_remote_server(tmp_path: Path, no_orphans: None) -> None:
    with _remote_server(tmp_path, "http", token="s3cret") as port:
        url = f"http://127.0.0.1:{port}/mcp"
        entry = {"url": url, "headers": {"Authorization": "Bearer s3cret"}}
        with MCPDevices({"mcpServers": {"web": entry}}) as mcp:
            result = mcp.devices()["web.shout"].call({"text": "hi"}, _ctx())
            assert result.ok and result.output == "HI", result.error
        # without the header the same server refuses: the server is named as failing
        config = {"mcpServers": {"web": {"url": url}}}
        with MCPDevices(config, max_restarts=0, start_timeout_s=10) as mcp:
            problems: list[str] = []
            assert mcp.devices(problems) == {}
            assert len(problems) == 1 and "web" in problems[0]


def test_legacy_sse_transport(tmp_path: Path, no_orphans: None) -> None:
    with _remote_server(tmp_path, "sse", token="t0k") as port:
        entry = {
            "url": f"http://127.0.0.1:{port}/sse",
            "type": "sse",
            "headers": {"Authorization": "Bearer t0k"},
        }
        with MCPDevices({"mcpServers": {"old": entry}}) as mcp:
            result = mcp.devices()["old.shout"].call({"text": "sse"}, _ctx())
            assert result.ok and result.output == "SSE", result.error


HANGING_SERVER = "import time\ntime.sleep(3600)\n"  # never answers `initialize`


def test_failed_starts_leave_no_asyncio_noise(
    tmp_path: Path, no_orphans: None, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreachable URL, a URL that refuses (401) and a server that hangs at start are each
    named as failing, and asyncio logs no "exception was never retrieved" traceback."""
    import gc

    hanging = tmp_path / "hanging.py"
    hanging.write_text(HANGING_SERVER)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with _remote_server(tmp_path, "http", token="needed") as port:
        config = {
            "mcpServers": {
                "gone": {"url": f"http://127.0.0.1:{closed}/mcp"},
                "refusing": {"url": f"http://127.0.0.1:{port}/mcp"},
                "stuck": {"command": sys.executable, "args": [str(hanging)]},
            }
        }
        with caplog.at_level("DEBUG", logger="asyncio"):
            with MCPDevices(config, max_restarts=0, start_timeout_s=3) as mcp:
                problems: list[str] = []
                assert mcp.devices(problems) == {}
            gc.collect()
    assert sorted(p.split()[1] for p in problems) == ["gone", "refusing", "stuck"]
    assert any("did not start within 3 s" in p for p in problems)
    noise = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert noise == []


def test_remote_keys_are_checked() -> None:
    for entry, message in [
        ({"command": "x", "headers": {"A": "b"}}, "only a server given by 'url'"),
        ({"url": "http://h/mcp", "headers": {"A": 1}}, "headers: expected a mapping"),
        ({"url": "http://h/sse", "type": "websocket"}, "unknown transport 'websocket'"),
        ({"command": "x", "type": "sse"}, "given by 'url'"),
        ({"url": "http://h/mcp", "type": "stdio"}, "given by 'command'"),
        ({"command": "x", "call_timeout_s": 0}, "call_timeout_s: expected a positive"),
        ({"command": "x", "start_timeout_s": "5"}, "start_timeout_s: expected a positive"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ServerSpec.from_config("s", entry)
    spec = ServerSpec.from_config("s", {"url": "http://h/mcp", "type": "streamableHttp"})
    assert spec.transport == "http"


def test_call_timeout_is_configured_per_server(flaky: dict[str, Any], no_orphans: None) -> None:
    config = {"mcpServers": {"flaky": {**flaky, "call_timeout_s": 1}}}
    with MCPDevices(config) as mcp:
        hung = mcp.devices()["flaky.hang"].call({}, _ctx())
        assert not hung.ok
        assert "server flaky did not answer within 1 s" in (hung.error or "")


# --- Failures -----------------------------------------------------------------------------------


def test_missing_command_is_named_and_not_retried_forever(no_orphans: None) -> None:
    config = {"mcpServers": {"ghost": {"command": "llmos-no-such-mcp-server"}}}
    with MCPDevices(config, max_restarts=1) as mcp:
        problems: list[str] = []
        assert mcp.devices(problems) == {}
        assert len(problems) == 1
        assert "llmos-no-such-mcp-server" in problems[0] and "not found" in problems[0]
        sup = mcp.supervisors["ghost"]
        result = sup.call("anything", {})
        assert not result.ok and "not found" in (result.error or "")
        given_up = sup.call("anything", {})
        assert not given_up.ok and "not restarted" in (given_up.error or "")
        with pytest.raises(MCPServerError, match="not restarted"):
            sup.tools()


def test_server_that_dies_mid_call_is_restarted(flaky: dict[str, Any], no_orphans: None) -> None:
    with MCPDevices({"mcpServers": {"flaky": flaky}}) as mcp:
        devices = mcp.devices()
        assert set(devices) >= {"flaky.echo", "flaky.die", "flaky.hang"}
        assert devices["flaky.echo"].call({"text": "one"}, _ctx()).output == "one"
        died = devices["flaky.die"].call({}, _ctx())
        assert not died.ok
        assert "server flaky exited during the call" in (died.error or "")
        again = devices["flaky.echo"].call({"text": "two"}, _ctx())
        assert again.ok, again.error
        assert again.output == "two"
        assert mcp.supervisors["flaky"].starts == 2


def test_tool_error_is_a_failure_and_keeps_the_session(
    flaky: dict[str, Any], no_orphans: None
) -> None:
    with MCPDevices({"mcpServers": {"flaky": flaky}}) as mcp:
        devices = mcp.devices()
        failed = devices["flaky.fail"].call({}, _ctx())
        assert not failed.ok
        assert "the flaky tool failed on purpose" in (failed.error or "")
        assert "\n" not in (failed.error or "")
        assert devices["flaky.echo"].call({"text": "ok"}, _ctx()).ok
        assert mcp.supervisors["flaky"].starts == 1


def test_server_that_never_answers_times_out(flaky: dict[str, Any], no_orphans: None) -> None:
    with MCPDevices({"mcpServers": {"flaky": flaky}}, call_timeout_s=1.5) as mcp:
        devices = mcp.devices()
        started = time.monotonic()
        hung = devices["flaky.hang"].call({}, _ctx())
        elapsed = time.monotonic() - started
        assert not hung.ok
        assert "server flaky did not answer within 1.5 s" in (hung.error or "")
        assert elapsed < 4.0
        # the hung session was dropped; the next call restarts the server (its start time
        # is the start limit's, not the call's)
        after = devices["flaky.echo"].call({"text": "back"}, _ctx())
        assert after.ok and after.output == "back"
        # the caller's own, shorter limit wins
        started = time.monotonic()
        hung = devices["flaky.hang"].call({}, _ctx(timeout_s=0.5))
        assert "within 0.5 s" in (hung.error or "")
        assert time.monotonic() - started < 4.0
        again = devices["flaky.echo"].call({"text": "again"}, _ctx())
        assert again.ok and again.output == "again"


def test_restarts_are_bounded(flaky: dict[str, Any], no_orphans: None) -> None:
    with MCPDevices({"mcpServers": {"flaky": flaky}}, max_restarts=1) as mcp:
        sup = mcp.supervisors["flaky"]
        first = sup.call("die", {})
        second = sup.call("die", {})
        assert not first.ok and not second.ok
        third = sup.call("echo", {"text": "x"})
        assert not third.ok
        assert "failed 2 times in a row and is not restarted" in (third.error or "")
        assert sup.starts == 2


def test_garbage_on_stdout_is_a_failure(tmp_path: Path, no_orphans: None) -> None:
    script = tmp_path / "garbage.py"
    script.write_text(GARBAGE_SERVER)
    config = {"mcpServers": {"junk": {"command": sys.executable, "args": [str(script)]}}}
    with MCPDevices(config, start_timeout_s=10, max_restarts=0) as mcp:
        started = time.monotonic()
        problems: list[str] = []
        assert mcp.devices(problems) == {}
        assert time.monotonic() - started < 8
        assert len(problems) == 1
        assert "server junk wrote output that is not JSON-RPC" in problems[0]
        assert "hello, I am not JSON-RPC" in problems[0]


def test_server_crashing_at_start_quotes_its_stderr(tmp_path: Path, no_orphans: None) -> None:
    script = tmp_path / "crash.py"
    script.write_text("import sys\nsys.exit('cannot open the frobnicator')\n")
    config = {"mcpServers": {"crash": {"command": sys.executable, "args": [str(script)]}}}
    with MCPDevices(config, max_restarts=0) as mcp:
        problems: list[str] = []
        mcp.devices(problems)
    assert len(problems) == 1
    assert "server crash exited during start-up" in problems[0]
    assert "cannot open the frobnicator" in problems[0]


def test_close_kills_a_busy_server(flaky: dict[str, Any], no_orphans: None) -> None:
    sup = MCPSupervisor(ServerSpec(name="flaky", **flaky), call_timeout_s=60)
    assert {t.name for t in sup.tools()} >= {"hang"}
    assert descendants(os.getpid())
    pool = concurrent.futures.ThreadPoolExecutor(1)
    pending = pool.submit(sup.call, "hang", {})
    time.sleep(0.5)
    started = time.monotonic()
    sup.close()
    assert time.monotonic() - started < 10
    result = pending.result(timeout=10)
    assert not result.ok
    pool.shutdown()
    closed = sup.call("echo", {"text": "x"})
    assert not closed.ok and "closed" in (closed.error or "")


# What `npx -y` prints for a package that is not in the registry (npm 10/11).
NPM_E404 = """\
npm error code E404
npm error 404 Not Found - GET https://registry.npmjs.org/@modelcontextprotocol%2fserver-doesnotexist
npm error 404
npm error 404  The requested resource '@modelcontextprotocol/server-doesnotexist@*' could not be found or you do not have permission to access it.
npm error 404
npm error 404 Note that you can also install from a
npm error 404 tarball, folder, http url, or git url.
npm error A complete log of this run can be found in: /root/.npm/_logs/2026-01-01T00_00_00_000Z-debug-0.log
"""  # noqa: E501


def test_npm_e404_quotes_the_line_that_says_why(tmp_path: Path, no_orphans: None) -> None:
    script = tmp_path / "fake_npx.py"
    script.write_text(f"import sys\nsys.stderr.write({NPM_E404!r})\nsys.exit(1)\n")
    spec = ServerSpec(name="missing", command=sys.executable, args=[str(script)])
    sup = MCPSupervisor(spec, max_restarts=0)
    try:
        with pytest.raises(MCPServerError) as info:
            sup.tools()
    finally:
        sup.close()
    message = str(info.value)
    assert message.startswith("server missing exited during start-up (stderr: npm error code E404:")
    registry = "https://registry.npmjs.org/@modelcontextprotocol%2fserver-doesnotexist"
    assert f"404 Not Found - GET {registry}" in message
    assert "complete log" not in message


@pytest.mark.slow
def test_real_npx_of_a_missing_package_says_e404(no_orphans: None) -> None:
    if shutil.which("npx") is None:
        pytest.skip("npx not installed")
    spec = ServerSpec(
        name="missing", command="npx", args=["-y", "@modelcontextprotocol/server-doesnotexist"]
    )
    sup = MCPSupervisor(spec, max_restarts=0, start_timeout_s=60)
    try:
        with pytest.raises(MCPServerError) as info:
            sup.tools()
    finally:
        sup.close()
    assert "npm error code E404: 404 Not Found" in str(info.value)


def test_a_plain_stderr_is_quoted_by_its_last_line(tmp_path: Path, no_orphans: None) -> None:
    script = tmp_path / "crash.py"
    script.write_text("import sys\nprint('starting', file=sys.stderr)\nsys.exit('no config')\n")
    with MCPDevices({"mcpServers": {"c": {"command": sys.executable, "args": [str(script)]}}}) as m:
        problems: list[str] = []
        m.devices(problems)
    assert problems == ["server c exited during start-up (stderr: no config)"]
