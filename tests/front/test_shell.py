"""`llmos shell` driven through a real pseudo-terminal (pexpect), as a user types.

Against the in-process kernel: the real shell over the kernel's API in its own process
(`tests/front/shell_harness.py`, a scripted CPU for determinism), and the real `llmos shell`
command on the embedded model (a short conversation). Against a live service: an in-process
`llmos serve` app on uvicorn with scripted CPUs, and the real `llmos serve` subprocess on the
embedded model; the shell is the real `llmos shell --url` command in both. Covered: a
conversation over several turns (its context kept), a pipe with `<`, a background job brought
to the foreground, Ctrl-C on a job (the shell goes on), Ctrl-Z and bg, an approval, an
unknown command, and a service that goes away and comes back.

TERM=dumb makes prompt_toolkit draw a plain prompt, so matching is on plain text.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pexpect
import pytest

from llmos import params
from llmos.front.serve.app import create_app
from llmos.front.serve.service import Service
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel import api
from llmos.kernel.boot import boot
from llmos.kernel.core import Kernel
from llmos.kernel.security import principals
from llmos.kernel.security.policy import UserPolicy
from llmos.store.users import UserStore
from tests.conftest import _SCRUBBED_ENV, llmos_command
from tests.front.serve.conftest import SUMMARIZE, Server, free_port, install_summarize
from tests.front.shell_harness import PacedCPU
from tests.uvicorn_thread import UvicornThread

TIMEOUT_S = 60
PROMPT = "llmos> "
COUNT = "---\ndescription: Count.\n---\nCount: {{input}}\n"
EXTRACT = "---\ndescription: Extract facts.\n---\nExtract the facts: {{input}}\n"
COMPUTE = "---\ndescription: Compute.\ntools: [calc]\n---\nCompute: {{input}}\n"
SLOW = " ".join(f"w{i}" for i in range(30))  # 30 words at 0.2 s: a job caught while it runs
PROGRAMS = {"count": COUNT, "extract": EXTRACT, "summarize": SUMMARIZE, "compute": COMPUTE}
REPLIES: list[Any] = [
    "Hello Ada, nice to meet you.",  # chat turn 1
    "Your name is Ada.",  # chat turn 2
    "FACTS: the rent of 900 is due on Monday",  # extract
    "The rent is due Monday.",  # summarize (given extract's output)
    SLOW + " end-of-count",  # count & (then fg)
    SLOW,  # count (Ctrl-C)
    SLOW + " end-of-stopped",  # count (Ctrl-Z, then bg)
    {"call": "calc", "args": {"expression": "6 * 7"}},  # compute: waits for approval
    "The answer is 42.",
]


def env(home: Path, **extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    e.update(LLMOS_HOME=str(home), TERM="dumb", PROMPT_TOOLKIT_NO_CPR="1", **extra)
    return e


def spawn(argv: list[str], home: Path, **extra: str) -> pexpect.spawn:
    child = pexpect.spawn(
        argv[0],
        argv[1:],
        env=env(home, **extra),
        encoding="utf-8",
        timeout=TIMEOUT_S,
        dimensions=(50, 200),
        cwd=str(Path(__file__).parents[2]),
    )
    child.expect_exact(PROMPT)
    return child


def command(child: pexpect.spawn, line: str) -> str:
    """Type `line`, wait for the next prompt; what was printed in between."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    return str(child.before)


def scripted_session(child: pexpect.spawn, tmp_path: Path, remote: bool) -> None:
    """The scenario both kernels go through with the replies of REPLIES."""
    # a conversation over several turns
    assert "Hello Ada" in command(child, "chat hi, I am Ada")
    child.sendline("chat")
    child.expect_exact("chat> ")
    child.sendline("what is my name?")
    child.expect_exact("Your name is Ada.")
    child.expect_exact("chat> ")
    child.sendline("exit")
    child.expect_exact(PROMPT)

    # a shell command that does not exist: one line, the shell goes on
    out = command(child, "frobnicate the thing")
    assert "llmos: error: unknown command or program: frobnicate" in out
    assert "Traceback" not in out

    # a pipe, the first program reading a file
    letter = tmp_path / "letter.txt"
    letter.write_text("Dear tenant, the rent of 900 is due on Monday.\n")
    out = command(child, f"extract < {letter} | summarize")
    assert "The rent is due Monday." in out and "FACTS" not in out

    # a background job, listed, brought to the foreground
    child.sendline("count to thirty &")
    child.expect(r"\[1\] (\d+)")
    counting = child.match.group(1)
    child.expect_exact(PROMPT)
    row = command(child, "ps").split(f"\n{counting:>5} ")[1].splitlines()[0]
    assert "running" in row and "resident" in row  # the scheduler's view
    assert "count to thirty" in command(child, "jobs")
    out = command(child, "fg %1")
    assert "w29 end-of-count" in out

    # Ctrl-C kills the foreground job only; the shell goes on
    child.sendline("count again")
    child.expect_exact("w3 ")
    child.sendcontrol("c")
    child.expect(r"\[\d+\] killed\s+pid (\d+)")
    killed = child.match.group(1)
    child.expect_exact(PROMPT)
    assert "killed" in command(child, "ps -a").split(f"\n{killed:>5} ")[1].splitlines()[0]

    # Ctrl-Z stops it, bg continues it in the background, it is reported when done
    child.sendline("count once more")
    child.expect_exact("w3 ")
    child.sendcontrol("z")
    child.expect(r"\[(\d+)\] stopped")
    job = child.match.group(1)
    child.expect_exact(PROMPT)
    assert "stopped" in command(child, "ps")
    command(child, f"bg %{job}")
    out = command(child, f"fg %{job}")
    assert "end-of-stopped" in out

    # an approval: the job waits, the user approves at the prompt, fg shows the answer
    child.sendline("compute six times seven")
    child.expect(r"approve (\d+) or deny")
    pid = child.match.group(1)
    child.expect_exact(PROMPT)
    row = command(child, "ps").split(f"\n{pid:>5} ")[1].splitlines()[0]
    assert "waiting_approval" in row and "approval of calc" in row and "6 * 7" in row
    assert f"approved pid {pid}" in command(child, f"approve {pid}")
    assert "The answer is 42." in command(child, "fg")

    # top shows the scheduler's view
    assert "resident" in command(child, "top")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def conversation_logged(messages: list[dict[str, Any]]) -> None:
    """The second turn's process was given the first turn (the conversation's context)."""
    text = json.dumps(messages)
    assert "hi, I am Ada" in text and "Hello Ada, nice to meet you." in text
    assert "what is my name?" in text


# --- the in-process kernel --------------------------------------------------------------------


def test_shell_on_the_in_process_kernel(home: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.json"
    scenario.write_text(
        json.dumps({"replies": REPLIES, "delay": 0.2, "approve": ["calc"], "programs": PROGRAMS})
    )
    child = spawn([sys.executable, "-m", "tests.front.shell_harness", str(scenario)], home)
    scripted_session(child, tmp_path, remote=False)
    kernel = Kernel(boot())
    try:
        caller = api.Caller.of(principals.current())
        runs = api.call(kernel, caller, "logs.list", {"program": "chat"})["runs"]
        last = api.call(kernel, caller, "logs.get", {"run_id": runs[0]["id"]})
        conversation_logged(last["messages"])
    finally:
        kernel.system.close()
    assert (home / params.SHELL_HISTORY_NAME).read_text().count("chat hi, I am Ada") == 1


def _ignore_and_block_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTSTP})


def test_ctrl_c_kills_the_job_though_the_shell_was_started_ignoring_it(
    home: Path, tmp_path: Path
) -> None:
    """Both are inherited from whoever starts the shell; an interactive shell takes them back."""
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"replies": [SLOW], "delay": 0.2, "programs": PROGRAMS}))
    child = pexpect.spawn(
        sys.executable,
        ["-m", "tests.front.shell_harness", str(scenario)],
        env=env(home),
        encoding="utf-8",
        timeout=TIMEOUT_S,
        dimensions=(50, 200),
        cwd=str(Path(__file__).parents[2]),
        preexec_fn=_ignore_and_block_ctrl_c,
    )
    child.expect_exact(PROMPT)
    child.sendline("count slowly")
    child.expect_exact("w3 ")
    child.sendcontrol("c")
    child.expect(r"\[\d+\] killed\s+pid (\d+)")
    child.expect_exact(PROMPT)
    assert "w29" not in str(child.before)
    child.sendline("exit")
    child.expect(pexpect.EOF)


@pytest.mark.slow
def test_llmos_shell_converses_with_the_embedded_model(home: Path) -> None:
    child = spawn([*llmos_command(), "shell"], home)
    for line in ("chat Say hello.", "chat Now say goodbye."):
        child.sendline(line)
        child.expect_exact(PROMPT)
        assert str(child.before).strip().splitlines()[1:], "the model said nothing"
    out = command(child, "ps -a")
    assert out.count(" chat ") == 2 and "ok" in out
    assert "unknown command or program: nope" in command(child, "nope")
    child.sendline("exit")
    child.expect(pexpect.EOF)


def shell_once(home: Path, url: str, **extra: str) -> tuple[str, int | None]:
    child = pexpect.spawn(
        llmos_command()[0],
        [*llmos_command()[1:], "shell", "--url", url],
        env=env(home, **extra),
        encoding="utf-8",
        timeout=TIMEOUT_S,
    )
    child.expect(pexpect.EOF)
    child.close()
    return str(child.before).strip(), child.exitstatus


def test_shell_refuses_a_missing_token_and_starts_without_its_service(home: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out, status = shell_once(home, url)
    assert (out, status) == ("llmos: error: --url needs a token: set LLMOS_TOKEN", 20)
    child = spawn([*llmos_command(), "shell", "--url", url], home, LLMOS_TOKEN="llmos_x")
    assert f"cannot reach {url}" in str(child.before)  # said; each command tries again
    child.sendline("exit")
    child.expect(pexpect.EOF)


# --- a live service ---------------------------------------------------------------------------


class Live:
    """`llmos serve`'s app on uvicorn in this process, over a kernel with a scripted CPU."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.kernel = Kernel(boot(), policy=params.SERVE_SCHED_POLICY)
        self.users = UserStore.open(home / params.USERS_DB_NAME)
        self.service = Service(kernel=self.kernel, users=self.users)
        self.service.ready = True
        self.port = free_port()
        self.token = self.users.add("alice")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.http = UvicornThread(create_app(self.service), self.port, lifespan="off")
        self.http.start()

    def stop(self) -> None:
        self.http.stop()


@pytest.fixture
def live(home: Path) -> Iterator[Live]:
    server = Live(home)
    server.kernel.add_cpu(PacedCPU([], 0.2))
    policy = UserPolicy(approve=["calc"])
    server.kernel.user_policy = lambda owner: policy
    server.start()
    for name, source in PROGRAMS.items():
        r = httpx2.put(
            f"{server.url}/api/programs/{name}",
            json={"source": source},
            headers={"Authorization": f"Bearer {server.token}"},
        )
        assert r.status_code == 200, r.text
    yield server
    server.stop()
    server.kernel.shutdown()
    server.users.close()
    server.kernel.system.close()


def queue(live: Live, replies: list[Any]) -> None:
    from tests.front.shell_harness import reply

    cpu = live.kernel.cpu("scripted")
    assert isinstance(cpu, ScriptedCPU)
    cpu.queue(*(reply(r) for r in replies))


def test_shell_against_a_live_service(live: Live, tmp_path: Path) -> None:
    queue(live, REPLIES)
    child = spawn(
        [*llmos_command(), "shell", "--url", live.url, "--model", "scripted"],
        tmp_path / "client-home",
        LLMOS_TOKEN=live.token,
    )
    scripted_session(child, tmp_path, remote=True)
    caller = api.Caller("alice")
    runs = api.call(live.kernel, caller, "logs.list", {"program": "chat"})["runs"]
    last = api.call(live.kernel, caller, "logs.get", {"run_id": runs[0]["id"]})
    conversation_logged(last["messages"])


def test_shell_refuses_a_wrong_token(live: Live, tmp_path: Path) -> None:
    out, status = shell_once(tmp_path, live.url, LLMOS_TOKEN="llmos_wrong")
    assert status == 20 and out.startswith("llmos: error: ") and len(out.splitlines()) == 1


def test_shell_says_the_service_went_away_and_reconnects(live: Live, tmp_path: Path) -> None:
    child = spawn(
        [*llmos_command(), "shell", "--url", live.url, "--model", "scripted"],
        tmp_path / "client-home",
        LLMOS_TOKEN=live.token,
    )
    assert "PID" in command(child, "ps")
    queue(live, [SLOW])
    child.sendline("count through the outage &")
    child.expect(r"\[1\] (\d+)")
    child.expect_exact(PROMPT)
    live.stop()
    out = command(child, "ps")
    assert f"llmos: error: cannot reach {live.url}" in out and "reconnect" in out
    assert "Traceback" not in out
    assert "cannot reach" in command(child, "programs")
    live.start()
    out = command(child, "programs")
    assert f"llmos: reconnected to {live.url}" in out and "summarize" in out
    out = command(child, "fg %1")  # its stream was cut and resumed: nothing lost or repeated
    words = out.split()
    assert all(words.count(f"w{i}") == 1 for i in range(30)), out
    queue(live, ["Back again."])
    assert "Back again." in command(child, "chat are you there?")
    child.sendline("exit")
    child.expect(pexpect.EOF)


@pytest.mark.slow
def test_llmos_shell_against_llmos_serve(tmp_path: Path) -> None:
    server = Server(tmp_path / "serve-home")
    server.add_user("alice")
    server.start()
    try:
        install_summarize(server)
        child = spawn(
            [*llmos_command(), "shell", "--url", server.url],
            tmp_path / "client-home",
            LLMOS_TOKEN=server.tokens["alice"],
        )
        for line in ("chat Say hello.", "chat Now say goodbye."):
            child.sendline(line)
            child.expect_exact(PROMPT)
            assert str(child.before).strip().splitlines()[1:], "the model said nothing"
        letter = tmp_path / "letter.txt"
        letter.write_text("The meeting moved from Monday to Tuesday at noon in room 4.\n")
        child.sendline(f"summarize < {letter} &")
        child.expect(r"\[1\] (\d+)")
        child.expect_exact(PROMPT)
        out = command(child, "fg %1")
        assert out.strip().splitlines()[1:], "the summary is empty"
        out = command(child, "ps -a")
        assert out.count(" chat ") == 2 and " summarize " in out
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        server.stop()
