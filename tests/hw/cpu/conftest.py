"""The real llama-cpp-python server the OpenAICPU tests run against (`llama_url`, one per test
module).

What the real server (llama-cpp-python 0.3.36, SmolLM2-135M-Instruct, default chat format)
does, as these tests pin down:
- streams content deltas; accepts `stream_options` but sends no usage chunk, so the counts on
  the final chunk are OpenAICPU's estimates;
- answers a streamed prompt over its context with 200 and an empty stream (the unstreamed
  request gets 400 `context_length_exceeded`, which OpenAICPU asks for to find out);
- at temperature 0 two identical requests may differ (prefix-cache reuse), so no test
  compares replies;
- refuses `response_format: json_schema` (500, "Input should be 'text' or 'json_object'") but
  enforces `{"type": "json_object", "schema": ...}` by grammar, which OpenAICPU falls back to;
- with `tools` and the default `tool_choice` ("auto") the model answers in text: no tool calls;
  only a forced `tool_choice` makes the server emit (grammar-constrained) `tool_calls`, which it
  streams with the whole function name repeated in every piece;
- says no context size (no /props, no max_model_len), so the configured one holds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hw.cpu.openai_harness import ALIAS
from tests.servers import embedded_model_path, llama_server


@pytest.fixture(scope="module")
def llama_url() -> Iterator[str]:
    with llama_server(embedded_model_path(), n_ctx=2048, alias=ALIAS) as url:
        yield url
