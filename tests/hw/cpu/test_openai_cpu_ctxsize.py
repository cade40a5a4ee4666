"""The context size OpenAICPU reads from the server, remembers, and forgets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmos import params
from llmos.errors import ContextOverflowError
from llmos.hw.cpu.openai import OpenAICPU
from tests.hw.cpu.openai_harness import ALIAS, ask
from tests.servers import closed_port_url, failing_server, sse_server

# --- the context size the server says ----------------------------------------------------------

LLAMA_CPP_PROPS = {"/props": {"default_generation_settings": {"n_ctx": 3072}, "total_slots": 1}}
VLLM_MODELS = {
    "/v1/models": {
        "object": "list",
        "data": [
            {"id": "other", "object": "model", "max_model_len": 999},
            {"id": "m", "object": "model", "max_model_len": 16384},
        ],
    }
}
OLLAMA_SHOW = {
    "/api/show": {
        "parameters": 'stop "<|im_end|>"',
        "model_info": {"general.architecture": "qwen2", "qwen2.context_length": 32768},
    }
}
OLLAMA_NUM_CTX = {
    "/api/show": {
        "parameters": "num_ctx 6144\ntemperature 0.7",
        "model_info": {"qwen2.context_length": 32768},
    }
}


@pytest.mark.parametrize(
    ("sizes", "expected", "asked"),
    [
        (LLAMA_CPP_PROPS, 3072, ["/props"]),
        (VLLM_MODELS, 16384, ["/props", "/v1/models"]),
        (OLLAMA_SHOW, 32768, ["/props", "/v1/models", "/api/show"]),
        (OLLAMA_NUM_CTX, 6144, ["/props", "/v1/models", "/api/show"]),
    ],
    ids=["llama.cpp", "vllm", "ollama", "ollama-num_ctx"],
)
def test_context_size_is_read_where_the_server_says_and_remembered(
    tmp_path: Path, sizes: dict[str, Any], expected: int, asked: list[str]
) -> None:
    dialects = tmp_path / "openai-servers.json"
    with sse_server([], sizes=sizes) as server:
        cpu = OpenAICPU("m", server.base_url, None, n_ctx=1000, dialects=dialects)
        assert cpu.n_ctx == expected and cpu.n_ctx_source == "server"
        assert cpu.n_ctx == expected
        assert server.probes == asked  # asked once
        again = OpenAICPU("m", server.base_url, None, n_ctx=1000, dialects=dialects)
        assert again.n_ctx == expected
        assert server.probes == asked  # the next run remembers it
    assert json.loads(dialects.read_text()) == {f"{server.base_url} m": {"n_ctx": expected}}


def test_a_server_that_says_nothing_leaves_config_then_the_default(tmp_path: Path) -> None:
    dialects = tmp_path / "openai-servers.json"
    with sse_server([]) as server:
        configured = OpenAICPU("m", server.base_url, None, n_ctx=1000, dialects=dialects)
        assert configured.n_ctx == 1000 and configured.n_ctx_source == "config"
        plain = OpenAICPU("m", server.base_url, None, dialects=dialects)
        assert plain.n_ctx == params.OPENAI_DEFAULT_N_CTX and plain.n_ctx_source == "default"
        assert server.probes == ["/props", "/v1/models", "/api/show"]  # once: "nothing" is kept
    assert json.loads(dialects.read_text()) == {f"{server.base_url} m": {"n_ctx": 0}}


def test_an_unreachable_server_is_not_asked_its_size() -> None:
    cpu = OpenAICPU("m", closed_port_url(), None, n_ctx=1234)
    assert cpu.n_ctx == 1234


def test_a_context_refusal_forgets_the_remembered_size(tmp_path: Path) -> None:
    message = "This model's maximum context length is 2048 tokens. However, you requested 9000."
    dialects = tmp_path / "openai-servers.json"
    with failing_server(400, message=message) as server:
        dialects.write_text(json.dumps({f"{server.base_url} m": {"n_ctx": 99999}}))
        cpu = OpenAICPU("m", server.base_url, None, dialects=dialects)
        assert cpu.n_ctx == 99999
        with pytest.raises(ContextOverflowError):
            list(cpu.generate(ask("hi")))
    assert json.loads(dialects.read_text()) == {}


@pytest.mark.slow
def test_llama_cpp_python_server_says_no_size_so_config_holds(
    llama_url: str, tmp_path: Path
) -> None:
    """llama-cpp-python's server has no /props and no max_model_len: the configured size."""
    dialects = tmp_path / "openai-servers.json"
    with OpenAICPU(ALIAS, llama_url, None, n_ctx=2048, timeout=60, dialects=dialects) as cpu:
        assert cpu.n_ctx == 2048 and cpu.n_ctx_source == "config"
    assert json.loads(dialects.read_text()) == {f"{llama_url} {ALIAS}": {"n_ctx": 0}}
