"""What the OpenAICPU tests (`test_openai_cpu_*.py`) share: the model's alias on the real
server, a tool, and a one-message request."""

from __future__ import annotations

from typing import Any

from llmos.hw.cpu.base import GenRequest, ToolSpec

ALIAS = "smollm2"
WEATHER = ToolSpec(
    name="get_weather",
    description="The current weather in a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
    },
)


def ask(text: str, **kwargs: Any) -> GenRequest:
    return GenRequest(messages=[{"role": "user", "content": text}], **kwargs)
