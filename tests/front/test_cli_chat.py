"""`llmos chat`: one prompt per line, each turn logged with the conversation so far."""

from __future__ import annotations

import json

import pytest

from tests.conftest import RunCli


@pytest.mark.slow
def test_chat_turns_carry_the_conversation(run_cli: RunCli) -> None:
    proc = run_cli("chat", "-s", "Be brief.", "-o", "maxOutputTokens", "4",
                   input="My name is Ada.\n\nWhat is my name?\nquit\nnot asked\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(run_cli("logs", "--json").stdout)
    assert [r["program"] for r in runs] == ["prompt", "prompt"]  # quit ended it
    replies = [runs[1]["response"], runs[0]["response"]]
    assert proc.stdout == f"{replies[0]}\n{replies[1]}\n"  # each reply streamed, then a newline
    last = json.loads(run_cli("logs", runs[0]["id"], "--json").stdout)
    said = [(m["role"], m["content"]) for m in last["messages"]]
    assert said[:4] == [
        ("system", "Be brief."),
        ("user", "My name is Ada."),
        ("assistant", replies[0]),
        ("user", "What is my name?"),
    ]
    assert run_cli("logs", "-r").stdout == f"{replies[1]}\n"
    # -c picks the conversation up again
    more = run_cli("chat", "-c", "-o", "maxOutputTokens", "2", input="And again?\n")
    assert more.returncode == 0, more.stderr
    newest = json.loads(run_cli("logs", "--json", "-n", "1").stdout)[0]
    shown = json.loads(run_cli("logs", newest["id"], "--json").stdout)
    assert [m["content"] for m in shown["messages"]][5] == "And again?"


def test_chat_bad_option_exits_2(run_cli: RunCli) -> None:
    proc = run_cli("chat", "-o", "nosuch", "1", input="hi\n")
    assert proc.returncode == 2 and "unknown model option 'nosuch'" in proc.stderr
