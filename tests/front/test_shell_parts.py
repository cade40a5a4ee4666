"""The shell's parts without a terminal: the line grammar, the job table (over the kernel's
API with a scripted CPU), the scheduler's view as text, and Tab completion."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prompt_toolkit.document import Document

from llmos.errors import LlmosError, RequestError
from llmos.front.shell import show
from llmos.front.shell.backend import Local, _sse
from llmos.front.shell.jobs import JobTable, Stage
from llmos.front.shell.parse import job_or_pid, parse, tokenize
from llmos.front.shell.repl import Shell, ShellCompleter
from llmos.hw.cpu.base import ToolCall
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel import api
from llmos.kernel.boot import boot
from llmos.kernel.core import Kernel
from llmos.kernel.security.policy import UserPolicy

ADD = "---\ndescription: Add.\ntools: [calc]\n---\nAdd: {{input}}\n"
ECHO = "---\ndescription: Echo.\n---\nEcho: {{input}}\n"


def test_words_quotes_and_operators() -> None:
    assert [t.text for t in tokenize("""a 'b c' "d \\"e\\"" f|g""")] == [
        "a",
        "b c",
        'd "e"',
        "f",
        "|",
        "g",
    ]
    assert [t.op for t in tokenize("'|' |")] == [False, True]
    assert [t.text for t in tokenize("x ''")] == ["x", ""]


def test_a_pipeline_with_a_file_inputs_and_background() -> None:
    line = parse("extract < letter.txt lang=fr | summarize in brief &")
    assert line is not None and line.background
    first, second = line.commands
    assert (first.name, first.stdin_file, first.inputs) == ("extract", "letter.txt", {"lang": "fr"})
    assert (second.name, second.text) == ("summarize", "in brief")
    assert line.source == "extract lang=fr < letter.txt | summarize in brief &"
    assert parse("   ") is None


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("a 'b", "unclosed ' quote at column 3"),
        ("a | | b", "a command is missing"),
        ("a & b", "'&' may only end a line"),
        ("a <", "'<' must be followed by a file name"),
        ("a < x < y", "only one '<' per command"),
        ("| a", "a command is missing"),
    ],
)
def test_a_malformed_line_is_one_clear_error(line: str, says: str) -> None:
    with pytest.raises(RequestError, match=says):
        parse(line)


def test_job_or_pid() -> None:
    assert job_or_pid("%2") == ("job", 2)
    assert job_or_pid("17") == ("pid", 17)
    for bad in ("%", "%x", "abc", "-1"):
        with pytest.raises(RequestError):
            job_or_pid(bad)


@pytest.fixture
def local(home: Path) -> Local:
    kernel = Kernel(boot())
    cpu = ScriptedCPU()
    kernel.add_cpu(cpu)
    backend = Local(kernel, api.Caller("alice"), "scripted")
    api.call(kernel, backend.caller, "programs.install", {"name": "echo", "source": ECHO})
    yield backend
    backend.close()


def scripted(local: Local) -> ScriptedCPU:
    cpu = local.kernel.cpu("scripted")
    assert isinstance(cpu, ScriptedCPU)
    return cpu


def test_a_pipeline_job_feeds_each_stage_the_last_ones_output(local: Local) -> None:
    scripted(local).queue("first output", "second output")
    table = JobTable()
    ended = threading.Event()
    job = table.add(
        "echo a | echo", [Stage("echo", {}, "a"), Stage("echo")], local, lambda j: ended.set()
    )
    job.start()
    assert ended.wait(30)
    assert (job.state, job.text, len(job.pids)) == ("done", "second output", 2)
    second = scripted(local).requests[1]
    assert "first output" in str(second.messages)
    assert table.reap() == [job] and table.all() == []


def test_a_failed_stage_ends_the_job_and_starts_no_other(local: Local) -> None:
    scripted(local).queue(LlmosError("the CPU broke"))
    table = JobTable()
    job = table.add("echo | echo", [Stage("echo", {}, "x"), Stage("echo")], local).start()
    job.join(30)
    assert job.state == "failed" and "the CPU broke" in (job.error or "")
    assert len(job.pids) == 1


def test_job_numbers_and_the_current_job(local: Local) -> None:
    table = JobTable()
    with pytest.raises(LlmosError, match="no current job"):
        table.get(None)
    with pytest.raises(LlmosError, match="no job %3"):
        table.get(3)
    a = table.add("a", [Stage("echo")], local)
    b = table.add("b", [Stage("echo")], local)
    assert (a.number, b.number, table.get(None)) == (1, 2, b)


def test_ps_rows_say_where_a_process_is_and_what_it_waits_on() -> None:
    base = {"pid": 7, "program": "grow", "context_used": 10, "context_limit": 400}
    rows = {
        "resident": {**base, "state": "running", "resident": True},
        "swapped": {**base, "state": "runnable", "swapped": True},
        "approval of calc 1+1 (policy)": {
            **base,
            "state": "waiting_approval",
            "approval": {"call": "calc 1+1", "reason": "policy"},
        },
        "an answer: where to?": {**base, "state": "waiting", "question": "where to?"},
        "a device": {**base, "state": "blocked"},
        "the CPU": {**base, "state": "runnable"},
    }
    for says, p in rows.items():
        assert says in show.ps_row(p), (says, show.ps_row(p))
    snap = {"policy": "fair", "processes": list(rows.values()), "cpus": {"embedded": {"slots": 4}}}
    text = show.top(snap)
    assert "policy: fair" in text and "cpu embedded: slots 4" in text
    assert "6 live: 1 resident, 1 swapped, 3 waiting" in text


def test_completion_of_commands_programs_jobs_and_pids(local: Local) -> None:
    policy = UserPolicy(approve=["calc"])  # the job's process stays live, waiting
    local.kernel.user_policy = lambda owner: policy
    scripted(local).queue([ToolCall("c1", "calc", '{"expression": "1 + 1"}')])
    api.call(local.kernel, local.caller, "programs.install", {"name": "add", "source": ADD})
    shell = Shell(local, out=lambda text: None)
    shell.run_line("add one and one &")
    job = shell.jobs.all()[0]
    completer = ShellCompleter(shell)

    def complete(text: str) -> list[str]:
        return [c.text for c in completer.get_completions(Document(text), None)]

    assert complete("ap") == ["approve"]
    assert complete("ec") == ["echo"]
    assert complete("fg %") == ["%1"]
    assert str(job.pid) in complete("approve ")
    job.kill()
    job.join(30)
    assert job.state == "killed"


def test_a_bad_line_is_one_line_and_the_shell_goes_on(local: Local) -> None:
    said: list[str] = []
    shell = Shell(local, out=said.append)
    for line in ("nosuch", "echo 'open", "echo < /no/such/file", "fg", "kill %9", "ps | echo"):
        shell.run_line(line)
    assert all(s.startswith("llmos: error: ") and s.count("\n") == 1 for s in said), said
    assert not shell.done
    said.clear()
    shell.run_line("help")
    assert all(word in said[0] for word in ("chat [TEXT]", "approve", "ps [-a], top", "fg [%N]"))
    shell.run_line("exit")
    assert shell.done


def test_sse_parsing() -> None:
    lines = [": stream", "", "id: 2", "event: output", 'data: {"text": "hi"}', "", "event: end"]
    lines += ['data: {"exit_status": "ok"}', ""]
    assert list(_sse(iter(lines))) == [
        ("output", {"text": "hi"}, 2),
        ("end", {"exit_status": "ok"}, None),
    ]


ASKER = "---\ndescription: Asks.\ntools: [ask]\n---\nPlan a trip: {{input}}\n"


def test_a_question_sends_the_job_back_and_answer_resumes_it(local: Local) -> None:
    question = [ToolCall("q1", "ask", '{"question": "Which city?"}')]
    scripted(local).queue(question, "A trip to Oslo in June.")
    api.call(local.kernel, local.caller, "programs.install", {"name": "asker", "source": ASKER})
    said: list[str] = []
    shell = Shell(local, out=said.append)
    shell.run_line("asker in June")  # foreground: it comes to wait, and goes to the background
    job = shell.jobs.all()[0]
    assert job.live and any(f"pid {job.pid} asks: Which city?" in s for s in said), said
    ps = show.ps(local.ps())
    assert "waiting" in ps and "an answer: Which city?" in ps
    shell.run_line("answer %1 Oslo, please")
    assert f"answered pid {job.pid}" in said[-1]
    shell.run_line("fg %1")
    assert "A trip to Oslo in June." in "".join(said)
    assert "Oslo, please" in str(scripted(local).requests[-1].messages)
