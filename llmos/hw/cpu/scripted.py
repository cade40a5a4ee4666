"""The scripted CPU: a deterministic test double that replays queued replies.

For kernel tests only: it lets a test say exactly what "the model" answers, step by step,
without loading a model. Each `generate` pops the next reply from the queue; a reply is a
string (streamed a word at a time), a list of `ToolCall`s, or an exception to raise (to
simulate a failing backend). Requests are recorded in `requests` for assertions.

Tokenization is one token per whitespace-separated word, which keeps counts predictable.
It never ships as a user's CPU: `llmos models` does not list it.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator

from llmos.errors import LlmosError
from llmos.hw.cpu.base import CPU, Capabilities, Chunk, GenRequest, Message, ToolCall

Reply = str | list[ToolCall] | BaseException


class ScriptedCPU(CPU):
    capabilities = Capabilities(streaming=True, tools=True, exact_tokens=True)

    def __init__(self, replies: Iterable[Reply] = (), *, n_ctx: int = 4096) -> None:
        self.name = "scripted"
        self._n_ctx = n_ctx
        self._replies: deque[Reply] = deque(replies)
        self._lock = threading.Lock()
        self.requests: list[GenRequest] = []

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def tokenize(self, text: str) -> list[int]:
        return [hash(w) & 0xFFFF for w in text.split()]

    def count_messages(self, messages: list[Message]) -> int:
        return sum(self.count_tokens(str(m.get("content") or "")) + 2 for m in messages)

    def generate(self, request: GenRequest) -> Iterator[Chunk]:
        with self._lock:
            self.requests.append(request)
            if not self._replies:
                raise LlmosError("scripted CPU has no reply queued")
            reply = self._replies.popleft()
        if isinstance(reply, BaseException):
            raise reply
        prompt = self.count_messages(request.messages)
        if isinstance(reply, list):
            yield Chunk(
                done=True, finish_reason="tool_calls", tool_calls=reply, prompt_tokens=prompt
            )
            return
        words = re.findall(r"\S+\s*|\s+", reply)
        emitted = 0
        for word in words[: request.max_tokens]:
            emitted += 1
            yield Chunk(text=word)
        reason = "length" if len(words) > request.max_tokens else "stop"
        yield Chunk(
            done=True, finish_reason=reason, prompt_tokens=prompt, completion_tokens=emitted
        )
