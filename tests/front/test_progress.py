"""Feedback on long work, seen the way a person sees it: the real `llmos` command on a real
pseudo-terminal (stdout and stderr on one tty), on the embedded model.

- a long input in a small context: the page-out is said (a progress line, then the notice)
  before the first token of the answer, not after it;
- a first run in another weight format: the model's conversion is said while it runs;
- a daemon process in its prefill: `llmos ps` shows what it is doing, and `llmos logs -f` on a
  terminal shows the prefill's progress before its first token;
- `--trace` lines start on a line of their own, never after a streamed answer's last word.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos.front.kclient import KernelClient
from llmos.front.progress import ERASE

try:
    from tests.conftest import llmos_command, run_llmos
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from conftest import (  # type: ignore[no-redef,import-not-found,unused-ignore]
        llmos_command,
        run_llmos,
    )

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "paper", "garden", "window"]
PROGRESS = re.compile(re.escape(ERASE) + r"(llmos: [^\r\n]*)?")  # a progress line's writes

DIGEST = """---
name: digest
description: Reads a long input in a small context; a few tokens out.
config:
  temperature: 0
  maxOutputTokens: 4
input:
  schema:
    input: string
llmos.context: 512
---
{{role "user"}}
{{input}}
"""
BIG = """---
name: big
description: A long prompt that fits the window, so its prefill takes many engine steps.
config:
  temperature: 0
  maxOutputTokens: 3
input:
  schema:
    input: string
---
{{role "user"}}
{{input}}
Name one word from the text above.
"""


def words(n: int) -> str:
    return " ".join(WORDS[(i * 7 + i // 10) % len(WORDS)] for i in range(n))


def on_a_terminal(
    *args: str,
    home: Path,
    stdin: Path | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> tuple[int, str]:
    """Run `llmos ARGS` with stdout and stderr on one new pseudo-terminal (stdin from a file,
    or nothing); its exit code and everything the terminal showed (newlines as "\\n")."""
    full = {k: v for k, v in os.environ.items() if k not in ("LLMOS_DEBUG", "OPENAI_BASE_URL")}
    full.update(env or {})
    full["LLMOS_HOME"] = str(home)
    master, slave = pty.openpty()
    with open(stdin or os.devnull, "rb") as source:
        proc = subprocess.Popen(
            [*llmos_command(), *args], stdin=source, stdout=slave, stderr=slave, env=full, cwd=cwd
        )
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the terminal's other side closed: the command is done
                    break
                if not data:
                    break
                shown += data
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, shown.decode("utf-8", errors="replace").replace("\r\n", "\n")


def test_paging_is_said_before_the_first_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    program = tmp_path / "digest.prompt"
    program.write_text(DIGEST, encoding="utf-8")
    source = tmp_path / "input.txt"
    source.write_text(words(12_000), encoding="utf-8")
    code, shown = on_a_terminal("run", str(program), home=home, stdin=source)
    assert code == 0, shown
    notice = re.search(
        r"llmos: the context did not fit its 512-token limit: (\d+) segments \(\d+\.\d MB\) "
        r"were paged out to the swap store \(page ids: `llmos logs (\w+) --json`; read one: "
        r"`llmos memory page ID`\)\n",
        shown,
    )
    assert notice, shown
    before, after = shown[: notice.start()], shown[notice.end() :]
    # Before the notice only progress (rewritten in place): the page-out as it happened.
    assert re.search(
        re.escape(ERASE) + r"llmos: paging out \d+ segments \(\d+\.\d MB\) to the "
        r"swap store",
        before,
    ), before
    assert PROGRESS.sub("", before) == ""
    # The answer comes after it, on stdout, with the progress line erased first.
    run = json.loads(run_llmos("logs", notice.group(2), "--json", home=home).stdout)
    assert int(notice.group(1)) == run["context"]["paged"]
    assert run["response"] and PROGRESS.sub("", after) == run["response"].rstrip("\n") + "\n"


def test_a_model_conversion_is_said_while_it_runs(tmp_path: Path) -> None:
    """The first run in another weight format converts the embedded model (once): a progress
    line says so before the answer; the next run, on the cached file, has nothing to say."""
    home = tmp_path / "home"
    program = tmp_path / "digest.prompt"
    program.write_text(DIGEST, encoding="utf-8")
    source = tmp_path / "input.txt"
    source.write_text("Hello there.", encoding="utf-8")
    quant = {"LLMOS_EMBEDDED_QUANT": "q8_0"}
    code, shown = on_a_terminal("run", str(program), home=home, stdin=source, env=quant)
    assert code == 0, shown
    line = f"{ERASE}llmos: converting the embedded model to q8_0 (once; cached in {home}/models)"
    assert shown.startswith(line + ERASE), shown  # said, then erased before the answer
    assert list((home / "models").glob("*.q8_0.gguf"))
    code, again = on_a_terminal("run", str(program), home=home, stdin=source, env=quant)
    assert code == 0 and "converting" not in again, again


def test_trace_lines_start_on_their_own_line(tmp_path: Path) -> None:
    source = tmp_path / "question.txt"
    source.write_text("What is 12 times 3?", encoding="utf-8")
    code, shown = on_a_terminal(
        "run", str(EXAMPLES / "arithmetic.prompt"), "--trace", home=tmp_path / "home", stdin=source
    )
    assert code == 0, shown
    steps = [m.start() for m in re.finditer(r"llmos: step \d+: ", shown)]
    assert len(steps) >= 2, shown  # the call and the answer
    assert all(at == 0 or shown[at - 1] == "\n" for at in steps), shown
    assert "llmos: step 1: calc(" in shown and re.search(r"llmos: step \d+: answer \(", shown)


@pytest.fixture
def daemon_home() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="kp-", dir="/tmp"))  # a Unix socket path must be short
    home = base / "home"
    try:
        yield home
    finally:
        if (home / "kernel.sock").exists():
            run_llmos("kernel", "stop", home=home)
        shutil.rmtree(base, ignore_errors=True)


def test_a_daemon_process_shows_its_prefill_in_ps_and_logs_f(daemon_home: Path) -> None:
    home = daemon_home
    progs = home.parent
    (progs / "big.prompt").write_text(BIG, encoding="utf-8")
    started = run_llmos("kernel", "start", home=home)
    assert started.returncode == 0, started.stderr
    spawned = run_llmos("run", "-d", "big.prompt", home=home, cwd=progs, input=words(3_000))
    assert spawned.returncode == 0, spawned.stderr
    pid = int(spawned.stdout)
    client = KernelClient(home)

    def me() -> dict[str, object]:
        procs = client.request("ps", all=True)["processes"]
        found: dict[str, object] = next(p for p in procs if p["pid"] == pid)
        return found

    deadline = time.monotonic() + 120
    while not str(me().get("progress") or "").startswith("prefill "):
        assert me()["state"] != "exited" and time.monotonic() < deadline, me()
        time.sleep(0.05)
    # Stopped mid-prefill, it keeps its place, and `ps` says where it is.
    assert run_llmos("stop", str(pid), home=home).returncode == 0
    while me()["state"] != "stopped":
        assert time.monotonic() < deadline, me()
        time.sleep(0.05)
    doing = re.compile(r"prefill (\d+)/(\d+) prompt tokens \((\d+)%\)")
    held = doing.fullmatch(str(me()["progress"]))
    assert held and 0 < int(held.group(1)) < int(held.group(2)), me()
    table = run_llmos("ps", home=home).stdout.splitlines()
    row = next(i for i, line in enumerate(table) if line.split()[:1] == [str(pid)])
    assert table[row + 1] == f"{'':>6} doing: {me()['progress']}"
    # A follower on a terminal sees the prefill before the first token, then the answer.
    master_done: list[tuple[int, str]] = []

    def follow() -> None:
        master_done.append(on_a_terminal("logs", "-f", str(pid), home=home, timeout=240))

    follower = threading.Thread(target=follow)
    follower.start()
    time.sleep(2.0)  # the follower is connected while the process is still stopped
    assert run_llmos("cont", str(pid), home=home).returncode == 0
    follower.join(timeout=260)
    assert master_done, "logs -f did not end"
    code, shown = master_done[0]
    assert code == 0, shown
    text = me()
    first = PROGRESS.search(shown)
    assert first and doing.fullmatch(first.group(1).removeprefix("llmos: ")), shown
    answer = str(client.request("wait", pid=pid)["text"])  # (a few tokens; may be none)
    printed = answer.rstrip("\n") + "\n" if answer else ""
    assert PROGRESS.sub("", shown) == printed, (shown, text)
    assert me()["progress"] is None  # an exited process is doing nothing
