"""`llmos run` on an OpenAI-compatible server that says its context size: a long input is
paged to fit that size instead of being sent whole (which such a server refuses: exit 8).

The server is the scripted SSE fake of tests/servers.py answering llama.cpp's `/props` (the
real llama-cpp-python server says no size; tests/hw/cpu/test_openai_cpu.py covers it)."""

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
