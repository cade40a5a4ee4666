"""The CPU interface: the one small contract every LLM backend implements.

A CPU turns a list of chat messages into a stream of text (or tool calls). It also answers the
questions the rest of the OS needs to manage it as a resource: how big its context window is,
how many tokens a text or a conversation takes, and what it can do (constrained decoding, native
tool calls, batching, saving KV state).

Invariants:
- `generate` is a generator of `Chunk`s; the last chunk has `done=True` and carries the finish
  reason and the token counts. Closing the generator early cancels the generation.
- Messages are OpenAI-style dicts (`{"role": ..., "content": ...}`), the lingua franca of chat
  backends; `tool_calls` / `tool_call_id` follow the Chat Completions shapes.
- A CPU raises only `llmos.errors` exceptions (ModelError, BackendError, ContextOverflowError,
  OutputError); it never lets a library's exception escape.

What this module does not do: scheduling (see the kernel), prompt rendering (see
`llmos.kernel.program`), or output validation against a schema (the caller validates).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmos import params

if TYPE_CHECKING:
    from llmos.kernel.sched.policy import Entity

Message = dict[str, Any]


@dataclass(frozen=True)
class Capabilities:
    """What a CPU can do. The kernel picks strategies from these, never from the class."""

    grammar: bool = False  # GBNF / JSON-schema constrained sampling inside the decoder
    json_schema: bool = False  # server-side `response_format: json_schema`
    tools: bool = False  # native tool calls
    streaming: bool = True
    batching: bool = False  # many sequences decode in one step
    kv_state: bool = False  # a sequence's KV state can be saved and restored
    exact_tokens: bool = False  # tokenize() is the model's own tokenizer, not an estimate


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call: a name, a description it reads, a JSON Schema."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it


@dataclass
class GenRequest:
    messages: list[Message]
    max_tokens: int = params.DEFAULT_MAX_OUTPUT_TOKENS
    temperature: float = params.DEFAULT_TEMPERATURE
    top_k: int = params.DEFAULT_TOP_K
    top_p: float = params.DEFAULT_TOP_P
    repeat_penalty: float = params.DEFAULT_REPEAT_PENALTY  # 1.0 disables; CPUs may ignore it
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # never end on the model's end token (benchmarks); CPUs may ignore
    seed: int | None = None
    json_schema: dict[str, Any] | None = None  # the reply must be JSON valid against this
    tools: list[ToolSpec] | None = None
    tool_choice: str | None = None  # "auto" (default), "required" or "none", as in OpenAI's API
    entity: Entity | None = None  # the process asking, for CPUs that schedule (see sched)


@dataclass
class Chunk:
    """A piece of a streamed reply. The last one has done=True and the totals."""

    text: str = ""
    done: bool = False
    finish_reason: str | None = None  # "stop", "length", "tool_calls", "cancelled"
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class CPU(abc.ABC):
    """An LLM backend. Subclasses set `name` and `capabilities`."""

    name: str = "cpu"
    capabilities: Capabilities = Capabilities()

    @property
    @abc.abstractmethod
    def n_ctx(self) -> int:
        """Context window size in tokens."""

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` (an estimate where `capabilities.exact_tokens` is False)."""

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    @abc.abstractmethod
    def count_messages(self, messages: list[Message]) -> int:
        """Tokens the rendered conversation takes in the context, generation prompt included."""

    @abc.abstractmethod
    def generate(self, request: GenRequest) -> Iterator[Chunk]:
        """Stream the reply to `request`; see the module note for the contract."""

    def describe(self) -> dict[str, Any]:
        """What `llmos models` shows for this CPU."""
        caps = self.capabilities
        return {
            "name": self.name,
            "n_ctx": self.n_ctx,
            "capabilities": [k for k, v in vars(caps).items() if v],
        }

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the backend's resources."""

    def __enter__(self) -> CPU:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def collect(chunks: Iterator[Chunk]) -> tuple[str, Chunk]:
    """Drain a stream: the whole text and the final chunk."""
    parts: list[str] = []
    last = Chunk(done=True)
    for chunk in chunks:
        parts.append(chunk.text)
        if chunk.done:
            last = chunk
    return "".join(parts), last
