"""The `llmos` command's exit codes: one error line per failure, and the failed run logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.front.cli_harness import (
    DATA,
    EXIT_BACKEND,
    EXIT_CONTEXT,
    EXIT_INPUT,
    EXIT_MODEL,
    EXIT_OUTPUT,
    EXIT_PROGRAM,
    EXIT_USAGE,
    SUMMARIZE,
    RunCli,
    assert_failed,
    delta_event,
    runs,
    write,
)
from tests.servers import closed_port_url, failing_server, sse_server

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
