"""`llmos run` on an OpenAI-compatible server that says its context size: a long input is
paged to fit that size instead of being sent whole (which such a server refuses: exit 8).

The server is the scripted SSE fake of tests/servers.py answering llama.cpp's `/props` (the
real llama-cpp-python server says no size; tests/hw/cpu/test_openai_cpu_ctxsize.py covers it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

try:
    from tests.conftest import RunCli
    from tests.servers import sse_server
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from conftest import RunCli  # type: ignore[no-redef,import-not-found,unused-ignore]
    from servers import sse_server  # type: ignore[no-redef,import-not-found,unused-ignore]

REPLY: list[dict[str, Any] | str] = [
    {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "short"},
                "finish_reason": "stop",
            }
        ],
    }
]
LONG = " ".join(["word"] * 6000)  # ~7500 estimated tokens: over 2048, under the 8192 default


def _program(tmp_path: Path) -> Path:
    prog = tmp_path / "s.prompt"
    prog.write_text(
        "---\nname: s\ninput:\n  schema:\n    input: string\n---\nSummarize: {{input}}\n"
    )
    return prog


def test_a_long_input_pages_to_the_size_the_server_says(
    run_cli: RunCli, home: Path, tmp_path: Path
) -> None:
    props = {"/props": {"default_generation_settings": {"n_ctx": 2048}}}
    with sse_server(REPLY, sizes=props) as server:
        proc = run_cli(
            "run",
            _program(tmp_path),
            "--model",
            "openai/m",
            input=LONG,
            env={"LLMOS_OPENAI_BASE_URL": server.base_url},
        )
        again = run_cli(
            "run",
            _program(tmp_path),
            "--model",
            "openai/m",
            input="a short one",
            env={"LLMOS_OPENAI_BASE_URL": server.base_url},
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "short\n"
    assert "did not fit its 2048-token limit" in proc.stderr and "paged out" in proc.stderr
    sent = json.dumps(server.requests[0]["messages"])
    assert len(sent) < 2048 * 4  # what was sent fits 2048 tokens of ~4 bytes
    assert again.returncode == 0, again.stderr
    assert server.probes == ["/props"]  # asked once, remembered for the next run
    remembered = json.loads((home / "openai-servers.json").read_text())
    assert remembered == {f"{server.base_url} m": {"n_ctx": 2048}}


def test_without_a_size_from_the_server_the_default_applies(
    run_cli: RunCli, home: Path, tmp_path: Path
) -> None:
    with sse_server(REPLY) as server:
        proc = run_cli(
            "run",
            _program(tmp_path),
            "--model",
            "openai/m",
            input=LONG,
            env={"LLMOS_OPENAI_BASE_URL": server.base_url},
        )
    assert proc.returncode == 0, proc.stderr
    assert "paged out" not in proc.stderr
    assert LONG in server.requests[0]["messages"][-1]["content"]  # sent whole


def test_required_tool_choice_refused_by_the_server_fails_in_one_line(
    run_cli: RunCli, home: Path, tmp_path: Path
) -> None:
    """The server refuses `tool_choice: "required"`: llmos asks again with "auto" (tools kept);
    the model then answers without a call, so the run fails clearly (exit 6), logged with the
    tokens it used, never as a silent success."""
    prog = tmp_path / "t.prompt"
    prog.write_text(
        "---\nname: t\ntools: [calc, clock]\nllmos.tool_choice: required\n---\n{{input}}\n"
    )
    refusal = (400, "tool_choice 'required' is not supported")
    with sse_server(REPLY, reject_first=refusal) as server:
        proc = run_cli(
            "run",
            prog,
            "--model",
            "openai/m",
            input="What is 2+2?",
            env={"LLMOS_OPENAI_BASE_URL": server.base_url},
        )
    assert proc.returncode == 6, proc.stderr
    assert proc.stderr.splitlines() == [
        f"llmos: error: openai/m answered without a tool call although {prog} sets"
        " llmos.tool_choice: required (the server does not enforce it)"
    ]
    assert [r["tool_choice"] for r in server.requests] == ["required", "auto"]
    assert all(len(r["tools"]) == 2 for r in server.requests)
    (run,) = json.loads(run_cli("logs", "--json").stdout)
    assert run["status"] == "failed" and run["prompt_tokens"] > 0
