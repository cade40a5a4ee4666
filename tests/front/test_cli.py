"""The `llmos` command line through real subprocesses: exit codes, error lines, the log.

Every failure must come out as exactly one line `llmos: error: <message>` on stderr, never a
traceback, with the exit code `llmos.errors` documents, and must leave the log consistent: the
failed run recorded as 'failed' with the error's kind, and no row left 'running'. The happy
paths run the real embedded model (SmolLM2-135M) and the example programs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from llmos.kernel import program as program_mod
from llmos.store.log import Log
from llmos.store.runrecord import RunRecord

try:
    from tests.conftest import llmos_command
    from tests.servers import closed_port_url, failing_server, sse_server
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from conftest import llmos_command  # type: ignore[no-redef,import-not-found,unused-ignore]
    from servers import (  # type: ignore[no-redef,import-not-found,unused-ignore]
        closed_port_url,
        failing_server,
        sse_server,
    )

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SUMMARIZE = EXAMPLES / "summarize.prompt"
EXTRACT = EXAMPLES / "extract.prompt"
CLASSIFY = EXAMPLES / "classify.prompt"
HAIKU = EXAMPLES / "skills" / "haiku"
DATA = Path(__file__).resolve().parents[1] / "data" / "cli"

EXIT_USAGE = 2
EXIT_PROGRAM = 3
EXIT_INPUT = 4
EXIT_MODEL = 5
EXIT_BACKEND = 6
EXIT_OUTPUT = 7
EXIT_CONTEXT = 8

JANE = "Contact Jane Doe at jane@acme.com. She works for Acme Corp."

RunCli = Callable[..., "subprocess.CompletedProcess[str]"]


# --- helpers -----------------------------------------------------------------------------------


def error_line(
    proc: subprocess.CompletedProcess[str], code: int, *, empty_stdout: bool = True
) -> str:
    """The one error line of a failed command, after checking its shape and exit code."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("llmos: error: "), lines[0]
    if empty_stdout:
        assert proc.stdout == ""
    return lines[0].removeprefix("llmos: error: ")


def runs(home: Path) -> list[RunRecord]:
    log = Log.open(home / "logs.db")
    try:
        return log.list_runs(limit=0)
    finally:
        log.close()


def failed_run(home: Path, kind: str) -> RunRecord:
    """The single run in `home`'s log, checked to be 'failed' with `kind`."""
    records = runs(home)
    assert [r.status for r in records] == ["failed"], [(r.status, r.error) for r in records]
    record = records[0]
    assert record.error_kind == kind, (record.error_kind, record.error)
    assert record.error
    assert record.ended_at is not None
    return record


def assert_failed(
    proc: subprocess.CompletedProcess[str],
    home: Path,
    code: int,
    kind: str,
    *names: str,
    empty_stdout: bool = True,
) -> str:
    """One error line naming each of `names`, exit `code`, one failed run of `kind`."""
    message = error_line(proc, code, empty_stdout=empty_stdout)
    for name in names:
        assert name in message, (name, message)
    record = failed_run(home, kind)
    assert record.error == message
    return message


def ok_run(home: Path, run_id: str | None = None) -> RunRecord:
    records = runs(home)
    assert "running" not in [r.status for r in records]
    if run_id is None:
        assert len(records) == 1
        return records[0]
    matching = [r for r in records if r.id == run_id]
    assert len(matching) == 1
    return matching[0]


def write(path: Path, data: str | bytes) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def delta_event(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "x",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


# --- programs that cannot be loaded: exit 3 ----------------------------------------------------


BAD_PROGRAMS: dict[str, str | bytes] = {
    "bad_yaml": "---\nname: [unclosed\n---\nHello.\n",
    "unknown_llmos_key": "---\nname: unk\nllmos.nosuch: 1\n---\nHello.\n",
    "empty": "",
    "binary": bytes(range(256)) * 4,
}
BAD_MESSAGES = {
    "bad_yaml": "malformed front matter",
    "unknown_llmos_key": "llmos.nosuch",
    "empty": "empty",
    "binary": "not a text file",
}


@pytest.mark.parametrize("case", sorted(BAD_PROGRAMS))
def test_unloadable_program_exits_3(run_cli: RunCli, home: Path, tmp_path: Path, case: str) -> None:
    path = write(tmp_path / f"{case}.prompt", BAD_PROGRAMS[case])
    proc = run_cli("run", path, input="some text")
    message = assert_failed(proc, home, EXIT_PROGRAM, "program", str(path), BAD_MESSAGES[case])
    assert message.startswith(f"{path}: ")


def test_missing_program_file_exits_3(run_cli: RunCli, home: Path, tmp_path: Path) -> None:
    path = tmp_path / "nowhere.prompt"
    proc = run_cli("run", path, input="some text")
    assert_failed(proc, home, EXIT_PROGRAM, "program", str(path))


def test_unknown_program_name_exits_3(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", "nosuchprogram")
    assert_failed(proc, home, EXIT_PROGRAM, "program", "'nosuchprogram'", str(home))


# --- bad inputs: exit 4 -------------------------------------------------------------------------


@pytest.mark.slow
def test_missing_required_input_exits_4(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", SUMMARIZE)
    assert_failed(proc, home, EXIT_INPUT, "input", str(SUMMARIZE), "'input'")


@pytest.mark.parametrize(
    ("pairs", "names"),
    [
        (["-i", "n=abc", "-i", "colour=red"], ["'n'", "integer", "'abc'"]),
        (["-i", "n=2", "-i", "colour=purple"], [str(DATA / "typed.prompt"), "'colour'", "purple"]),
        (["-i", "n=2"], [str(DATA / "typed.prompt"), "'colour'"]),
        (["-i", "n"], ["'n'", "key=value"]),
        (["-i", "n=1", "-i", "n=2", "-i", "colour=red"], ["'n'", "twice"]),
    ],
    ids=["not-an-integer", "not-in-enum", "missing-enum", "no-equals-sign", "given-twice"],
)
@pytest.mark.slow
def test_invalid_input_exits_4(
    run_cli: RunCli, home: Path, pairs: list[str], names: list[str]
) -> None:
    proc = run_cli("run", DATA / "typed.prompt", *pairs)
    assert_failed(proc, home, EXIT_INPUT, "input", *names)


def test_non_utf8_stdin_exits_4(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", SUMMARIZE, input=b"caf\xe9 \xff\xfe")
    assert_failed(proc, home, EXIT_INPUT, "input", "stdin", "UTF-8", "offset 3")


# --- models that cannot be used: exit 5 --------------------------------------------------------


def test_nonexistent_gguf_exits_5(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", SUMMARIZE, "--model", "/nonexistent.gguf", input="text")
    assert_failed(proc, home, EXIT_MODEL, "model", "/nonexistent.gguf", "does not exist")


def test_text_file_named_gguf_exits_5(run_cli: RunCli, home: Path, tmp_path: Path) -> None:
    fake = write(tmp_path / "fake.gguf", "this is not a model\n")
    proc = run_cli("run", SUMMARIZE, "--model", fake, input="text")
    assert_failed(proc, home, EXIT_MODEL, "model", str(fake), "not a GGUF")


def test_unknown_model_spec_exits_5(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", SUMMARIZE, "--model", "nosuch", input="text")
    assert_failed(proc, home, EXIT_MODEL, "model", "'nosuch'")


# --- remote CPUs that fail: exit 6 ------------------------------------------------------------


@pytest.mark.slow
def test_unreachable_server_exits_6(run_cli: RunCli, home: Path) -> None:
    url = closed_port_url()
    proc = run_cli(
        "run", SUMMARIZE, "--model", "openai/x", input="text", env={"LLMOS_OPENAI_BASE_URL": url}
    )
    assert_failed(proc, home, EXIT_BACKEND, "backend", url)
    assert runs(home)[0].cpu == "openai/x"


@pytest.mark.slow
def test_failing_server_exits_6(run_cli: RunCli, home: Path) -> None:
    with failing_server(500, "the fake server failed on purpose") as server:
        proc = run_cli(
            "run",
            SUMMARIZE,
            "--model",
            "openai/x",
            input="text",
            env={"LLMOS_OPENAI_BASE_URL": server.base_url},
        )
    assert_failed(proc, home, EXIT_BACKEND, "backend", server.base_url, "failed on purpose")
    assert server.paths
    assert all(p == "/v1/chat/completions" for p in server.paths)


# --- replies that cannot fit the output schema: exit 7 ----------------------------------------


@pytest.mark.slow
def test_json_cut_short_by_token_limit_exits_7(run_cli: RunCli, home: Path) -> None:
    program = DATA / "truncated.prompt"
    proc = run_cli("run", program)
    assert_failed(
        proc,
        home,
        EXIT_OUTPUT,
        "output",
        str(program),
        "3-token limit",
        "JSON",
        empty_stdout=False,  # see the next test
    )
    record = runs(home)[0]
    assert record.completion_tokens == 3  # a failed run is logged with the tokens it used
    assert record.prompt_tokens > 0
    assert record.response is None


@pytest.mark.slow
def test_json_cut_short_prints_nothing_on_stdout(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", DATA / "truncated.prompt")
    assert proc.returncode == EXIT_OUTPUT
    assert proc.stdout == ""


@pytest.mark.slow
def test_remote_reply_that_is_not_json_exits_7_after_a_retry(run_cli: RunCli, home: Path) -> None:
    events: list[dict[str, Any] | str] = [
        delta_event({"role": "assistant", "content": "Sorry, I cannot"}),
        delta_event({"content": " do that."}),
        delta_event({}, finish="stop"),
    ]
    program = DATA / "person.prompt"
    with sse_server(events) as server:
        proc = run_cli(
            "run",
            program,
            "--model",
            "openai/x",
            input="Alice is 30.",
            env={"LLMOS_OPENAI_BASE_URL": server.base_url},
        )
    assert_failed(proc, home, EXIT_OUTPUT, "output", str(program), "not valid JSON")
    assert server.paths == ["/v1/chat/completions"] * 2  # one attempt and one retry
    first, second = server.requests
    assert first["messages"][-1] == {"role": "user", "content": "Alice is 30."}
    assert second["messages"][: len(first["messages"])] == first["messages"]
    assert second["messages"][-2] == {"role": "assistant", "content": "Sorry, I cannot do that."}
    assert second["messages"][-1]["role"] == "user"
    assert "That reply is invalid" in second["messages"][-1]["content"]


# --- prompts over the context window: exit 8 --------------------------------------------------


@pytest.mark.slow
def test_prompt_over_the_context_exits_8(run_cli: RunCli, home: Path, tmp_path: Path) -> None:
    # Text in the program's own (system) part is pinned: it cannot be paged out.
    program = tmp_path / "pinned.prompt"
    program.write_text(
        "---\nname: pinned\ninput:\n  schema:\n    input: string\n---\n"
        '{{role "system"}}\nKnow this: {{input}}\n{{role "user"}}\nSummarize it.\n'
    )
    proc = run_cli("run", program, input=" ".join(["word"] * 40_000))
    message = assert_failed(proc, home, EXIT_CONTEXT, "context_overflow", str(program))
    assert "(of 8192)" in message and "program's text" in message
    record = runs(home)[0]
    assert record.completion_tokens == 0


def test_an_input_over_the_context_is_paged_not_refused(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", SUMMARIZE, "--json", input=" ".join(["word"] * 40_000))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["context"]["paged"] > 0 and out["context"]["used"] < 8192
    assert "were paged out to the swap store" in proc.stderr


# --- usage errors: exit 2 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["run", SUMMARIZE, "--bogus"], ["run"], ["nosuchcommand"], ["logs", "-n", "many"]],
    ids=["unknown-option", "missing-argument", "unknown-command", "bad-option-value"],
)
def test_usage_error_exits_2(run_cli: RunCli, home: Path, args: list[Any]) -> None:
    proc = run_cli(*args, input="text")
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1  # one line, not click's usage block
    assert proc.stderr.startswith("llmos: error: ") and "--help')" in proc.stderr
    assert proc.stdout == ""
    if (home / "logs.db").exists():
        assert runs(home) == []


def test_version_and_help(run_cli: RunCli) -> None:
    version = run_cli("--version")
    assert version.returncode == 0
    assert "0.1.0" in version.stdout
    helped = run_cli("run", "--help")
    assert helped.returncode == 0
    assert "--model" in helped.stdout
    assert helped.stderr == ""


# --- happy paths on the embedded model ------------------------------------------------------


@pytest.mark.slow
def test_run_summarize_from_stdin(run_cli: RunCli, home: Path) -> None:
    text = "The cat sat on the mat all day long, watching the birds in the garden."
    proc = run_cli("run", SUMMARIZE, input=text)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip()
    assert proc.stdout.endswith("\n")
    record = ok_run(home)
    assert record.status == "ok"
    assert record.program == "summarize"
    assert record.cpu == "embedded"
    assert record.inputs == {"input": text}
    assert record.response == proc.stdout.removesuffix("\n")
    assert 0 < record.completion_tokens <= 96


@pytest.mark.slow
def test_run_json_with_input_option(run_cli: RunCli, home: Path) -> None:
    text = "Rivers carry water from the mountains to the sea, shaping valleys on the way."
    proc = run_cli("run", SUMMARIZE, "-i", f"input={text}", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    result = json.loads(proc.stdout)
    assert {"run_id", "output", "usage", "program", "cpu", "finish_reason"} <= set(result)
    assert result["program"] == "summarize"
    assert result["cpu"] == "embedded"
    assert isinstance(result["output"], str) and result["output"].strip()
    assert result["finish_reason"] in ("stop", "length")
    record = ok_run(home, result["run_id"])
    assert record.inputs == {"input": text}
    assert record.response == result["output"]
    assert result["usage"] == {
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
    }
    assert result["usage"]["prompt_tokens"] > 20
    assert result["usage"]["completion_tokens"] > 0


@pytest.mark.slow
def test_run_verbose_reports_statistics_on_stderr(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", SUMMARIZE, "-v", input="Bees make honey from the nectar of flowers.")
    assert proc.returncode == 0, proc.stderr
    record = ok_run(home)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"llmos: run {record.id} on embedded: {record.prompt_tokens} ")


@pytest.mark.slow
def test_extract_returns_json_valid_against_its_schema(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", EXTRACT, input=JANE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    value = json.loads(proc.stdout)
    schema = program_mod.load(EXTRACT).output_schema
    assert schema is not None
    jsonschema.validate(value, schema)
    assert value["name"] == "Jane Doe"
    assert set(value) <= {"name", "email", "company"}


@pytest.mark.slow
def test_classify_returns_one_of_its_labels(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", CLASSIFY, "--json", input="I love this, it is wonderful!")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    schema = program_mod.load(CLASSIFY).output_schema
    assert schema is not None
    jsonschema.validate(result["output"], schema)
    assert result["output"]["label"] in ("positive", "negative", "neutral")
    assert result["output"] == {"label": "positive"}


@pytest.mark.slow
def test_skill_runs(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("run", HAIKU, "-i", "input=autumn")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip()
    record = ok_run(home)
    assert record.program == "haiku"
    assert record.extra is not None and record.extra["finish_reason"] == "stop"


@pytest.mark.slow
def test_pipes_compose(home: Path) -> None:
    """`llmos run extract < text | llmos run summarize`: two processes joined by a pipe."""
    env = {**os.environ, "LLMOS_HOME": str(home)}
    for key in ("LLMOS_OPENAI_BASE_URL", "OPENAI_BASE_URL", "LLMOS_DEBUG"):
        env.pop(key, None)
    cmd = llmos_command()
    first = subprocess.Popen(
        [*cmd, "run", str(EXTRACT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    second = subprocess.Popen(
        [*cmd, "run", str(SUMMARIZE)],
        stdin=first.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert first.stdin is not None and first.stdout is not None and first.stderr is not None
    first.stdin.write(JANE.encode())
    first.stdin.close()
    first.stdout.close()  # only the second process reads it now
    try:
        out2, err2 = second.communicate(timeout=300)
        first.wait(timeout=300)
        err1 = first.stderr.read()
        first.stderr.close()
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert first.returncode == 0, err1.decode()
    assert second.returncode == 0, err2.decode()
    assert err1 == b"" and err2 == b""
    assert out2.decode().strip()
    records = {r.program: r for r in runs(home)}
    assert set(records) == {"extract", "summarize"}
    assert all(r.status == "ok" for r in records.values())
    extracted = records["extract"].response
    assert extracted is not None
    assert json.loads(extracted)["name"] == "Jane Doe"
    # summarize read exactly what extract printed (its reply plus the closing newline)
    assert records["summarize"].inputs == {"input": extracted + "\n"}


# --- logs, models, programs --------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged(
    tmp_path_factory: pytest.TempPathFactory,
    llmos_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> tuple[Path, dict[str, str]]:
    """A home whose log holds two ok runs and one failed run; run ids by input word."""
    home = tmp_path_factory.mktemp("logged-home")
    ids: dict[str, str] = {}
    for word, text in [
        ("zebra", "The zebra herd crossed the river at dawn, followed by wildebeest."),
        ("volcano", "The volcano erupted last night and ash covered the nearby town."),
    ]:
        proc = llmos_cli("run", SUMMARIZE, "--json", input=text, home=home)
        assert proc.returncode == 0, proc.stderr
        ids[word] = json.loads(proc.stdout)["run_id"]
    failed = llmos_cli("run", SUMMARIZE, "--model", "nosuch", input="penguins", home=home)
    assert failed.returncode == EXIT_MODEL
    return home, ids


@pytest.mark.slow
def test_logs_lists_runs(
    logged: tuple[Path, dict[str, str]],
    llmos_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    home, ids = logged
    proc = llmos_cli("logs", home=home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    # newest first: the failed run, then volcano, then zebra
    assert " failed " in lines[0]
    assert lines[1].startswith(ids["volcano"][:12]) and " ok " in lines[1]
    assert lines[2].startswith(ids["zebra"][:12]) and " ok " in lines[2]
    failed_only = llmos_cli("logs", "--status", "failed", home=home)
    assert failed_only.returncode == 0
    assert len(failed_only.stdout.splitlines()) == 1
    assert "unknown model 'nosuch'" in failed_only.stdout


@pytest.mark.slow
def test_logs_query_finds_a_run_by_a_word_of_its_input(
    logged: tuple[Path, dict[str, str]],
    llmos_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    home, ids = logged
    proc = llmos_cli("logs", "-q", "wildebeest", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert [r["id"] for r in found] == [ids["zebra"]]
    text = llmos_cli("logs", "-q", "volcano", home=home)
    assert text.returncode == 0
    assert [line[:12] for line in text.stdout.splitlines()] == [ids["volcano"][:12]]
    none = llmos_cli("logs", "-q", "nonexistentword", home=home)
    assert none.returncode == 0
    assert none.stdout == ""


@pytest.mark.slow
def test_logs_shows_one_run_with_its_messages(
    logged: tuple[Path, dict[str, str]],
    llmos_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    home, ids = logged
    proc = llmos_cli("logs", ids["zebra"][:12], home=home)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"run {ids['zebra']}  summarize  on embedded  [ok]")
    assert "--- system\nYou write short summaries." in out
    assert "--- user\nSummarize this text:\n\nThe zebra herd crossed the river" in out
    assert "--- assistant\n" in out
    as_json = json.loads(llmos_cli("logs", ids["zebra"], "--json", home=home).stdout)
    assert as_json["id"] == ids["zebra"]
    assert [m["role"] for m in as_json["messages"]] == ["system", "user", "assistant"]
    assert as_json["messages"][-1]["content"] == as_json["response"]


@pytest.mark.slow
def test_logs_json_parses(
    logged: tuple[Path, dict[str, str]],
    llmos_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    home, ids = logged
    proc = llmos_cli("logs", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["status"] for r in rows] == ["failed", "ok", "ok"]
    assert [r["id"] for r in rows[1:]] == [ids["volcano"], ids["zebra"]]
    assert rows[0]["error_kind"] == "model"
    assert all(r["program"] == "summarize" for r in rows)
    limited = json.loads(llmos_cli("logs", "--json", "-n", "1", home=home).stdout)
    assert len(limited) == 1 and limited[0]["status"] == "failed"


def test_logs_unknown_run_id_exits_21(run_cli: RunCli, home: Path) -> None:
    proc = run_cli("logs", "ffffffffffff")
    message = error_line(proc, 21)  # not found: its own code, not bad input's
    assert "'ffffffffffff'" in message
    assert str(home / "logs.db") in message
    assert runs(home) == []


def test_models_lists_embedded(run_cli: RunCli) -> None:
    proc = run_cli("models")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names[0] == "embedded"
    assert "openai/<model>" in names
    rows = json.loads(run_cli("models", "--json").stdout)
    embedded = next(r for r in rows if r["name"] == "embedded")
    assert embedded["kind"] == "embedded"
    assert embedded["detail"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert Path(embedded["detail"]).is_file()


def test_models_lists_aliases_from_config(run_cli: RunCli, home: Path) -> None:
    write(home / "config.json", json.dumps({"aliases": {"fast": "openai/gpt-x"}}))
    rows = json.loads(run_cli("models", "--json").stdout)
    assert {"name": "fast", "kind": "alias", "detail": "openai/gpt-x"} in rows


@pytest.mark.slow
def test_programs_lists_installed_programs_and_project_skills(
    run_cli: RunCli, home: Path, tmp_path: Path
) -> None:
    (home / "programs").mkdir()
    shutil.copy(SUMMARIZE, home / "programs" / "summarize.prompt")
    project = tmp_path / "project"
    shutil.copytree(HAIKU, project / ".agents" / "skills" / "haiku")
    proc = run_cli("programs", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    rows = [line.split(maxsplit=2) for line in proc.stdout.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [("haiku", "skill"), ("summarize", "dotprompt")]
    found = json.loads(run_cli("programs", "--json", cwd=project).stdout)
    paths = {p["name"]: Path(p["path"]) for p in found}
    assert paths["summarize"] == home / "programs" / "summarize.prompt"
    assert paths["haiku"].parent == project / ".agents" / "skills" / "haiku"
    # an installed program runs by its bare name from anywhere (name lookup only, no model)
    missing = run_cli("run", "summarize", cwd=project)
    assert missing.returncode == EXIT_INPUT
    assert str(home / "programs" / "summarize.prompt") in missing.stderr


def test_programs_warns_about_a_broken_program(run_cli: RunCli, home: Path, tmp_path: Path) -> None:
    (home / "programs").mkdir()
    write(home / "programs" / "broken.prompt", "---\nname: [unclosed\n---\nHi.\n")
    shutil.copy(SUMMARIZE, home / "programs" / "summarize.prompt")
    proc = run_cli("programs", cwd=tmp_path)
    assert proc.returncode == 0
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["summarize"]
    warnings = proc.stderr.splitlines()
    assert len(warnings) == 1
    assert warnings[0].startswith("llmos: warning: ")
    assert "broken.prompt" in warnings[0]


def test_programs_with_none_installed(run_cli: RunCli, home: Path, tmp_path: Path) -> None:
    proc = run_cli("programs", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert proc.stderr.startswith("llmos: no programs installed")
