"""`llmos run -p PROMPT`: an ad-hoc prompt without a program file, with -s and -o."""

from __future__ import annotations

import json

import pytest

from tests.conftest import RunCli


@pytest.mark.slow
def test_an_adhoc_prompt_runs_with_a_system_prompt_and_options(run_cli: RunCli) -> None:
    proc = run_cli(
        "run", "-p", "Name a colour.", "-s", "You are terse.", "-o", "maxOutputTokens", "4",
        "-o", "temperature", "0", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["program"] == "prompt"
    assert 1 <= out["usage"]["completion_tokens"] <= 4  # -o maxOutputTokens took effect
    shown = json.loads(run_cli("logs", out["run_id"], "--json").stdout)
    assert [(m["role"], m["content"]) for m in shown["messages"][:2]] == [
        ("system", "You are terse."),
        ("user", "Name a colour."),
    ]


@pytest.mark.slow
def test_piped_stdin_comes_before_the_prompt(run_cli: RunCli) -> None:
    proc = run_cli("run", "-p", "Summarize.", "-o", "maxOutputTokens", "2", "--json",
                   input="The cat sat.\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(run_cli("logs", json.loads(proc.stdout)["run_id"], "--json").stdout)
    assert shown["messages"][0] == {"role": "user", "content": "The cat sat.\n\nSummarize."}


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("run",), "give either PROGRAM or -p PROMPT"),
        (("run", "x.prompt", "-p", "hi"), "give either PROGRAM or -p PROMPT"),
        (("run", "-p", "hi", "-o", "bogus", "1"), "unknown model option 'bogus'"),
        (("run", "-p", "hi", "-o", "maxOutputTokens", "many"), "'config.maxOutputTokens'"),
        (("run", "x.prompt", "-s", "be brief"), "-s needs -p"),
        (("run", "x.prompt", "-c"), "they need -p"),
    ],
)
def test_adhoc_usage_errors_exit_2(run_cli: RunCli, args: tuple[str, ...], said: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert said in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
def test_continue_carries_the_last_conversation_on(run_cli: RunCli) -> None:
    first = run_cli("run", "-p", "My name is Ada.", "-s", "Be brief.",
                    "-o", "maxOutputTokens", "3", "--json")  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = run_cli("run", "-c", "-p", "What is my name?", "-o", "maxOutputTokens", "3", "--json")
    assert second.returncode == 0, second.stderr
    shown = json.loads(run_cli("logs", json.loads(second.stdout)["run_id"], "--json").stdout)
    said = [(m["role"], m["content"]) for m in shown["messages"]]
    assert said[:2] == [("system", "Be brief."), ("user", "My name is Ada.")]
    assert said[2] == ("assistant", json.loads(first.stdout)["output"])
    assert said[3] == ("user", "What is my name?") and said[4][0] == "assistant"
    by_id = run_cli("run", "--cid", json.loads(first.stdout)["run_id"], "-p", "Again?",
                    "-o", "maxOutputTokens", "2", "--json")  # fmt: skip
    assert by_id.returncode == 0, by_id.stderr
    again = json.loads(run_cli("logs", json.loads(by_id.stdout)["run_id"], "--json").stdout)
    assert [m["content"] for m in again["messages"]][3] == "Again?"


def test_continue_with_nothing_to_continue_exits_4(run_cli: RunCli) -> None:
    proc = run_cli("run", "-c", "-p", "hi")
    assert proc.returncode == 4
    assert "no -p conversation to continue" in proc.stderr
    assert run_cli("run", "--cid", "ffffffffffff", "-p", "hi").returncode == 4
