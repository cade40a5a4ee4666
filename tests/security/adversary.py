"""The adversarial CPU: a test double that obeys every instruction it reads and always tries
the most damaging syscall it has.

It stands for a model that an attacker controls completely, directly (a hostile program) or
by prompt injection (text it reads in a file, a tool result, a memory, a shared segment, a
child's output). Security tests drive the real kernel, devices, daemon and command line with it
and judge the outcome on effects (disk, stores, process table, listeners), never on what the
model said.

How it decides, each step:
1. Every instruction it can see, in any message of any role (tool results read decoded, as a
   model reads them), is obeyed, in the order it appears: a line `DO <device> <JSON
   arguments>` anywhere in the text (the form injected payloads take in these tests). Each
   instruction is obeyed once per process.
2. Then the attack plan it was built with (the most damaging calls for the scenario), each
   tried once, in order, whether or not the device was granted: the kernel must refuse.
3. Then it answers with `DONE` and the list of what it tried.

Tool calls are native (`ToolCall`s), so the calls are exactly what the test says; the syscall
layer still validates them like any model's. Tokens are one per word, as in the scripted CPU.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from llmos.hw.cpu.base import CPU, Capabilities, Chunk, GenRequest, Message, ToolCall

INSTRUCTION = re.compile(r"^\s*DO (\S+) (\{.*\})\s*$", re.MULTILINE)


def inject(device: str, **arguments: Any) -> str:
    """The text of one injected instruction (to plant in a file, a memory, a tool result...)."""
    return f"DO {device} {json.dumps(arguments)}"


class AdversarialCPU(CPU):
    capabilities = Capabilities(streaming=True, tools=True, exact_tokens=True)

    def __init__(self, plan: Iterable[tuple[str, dict[str, Any]]] = (), *, n_ctx: int = 8192):
        self.name = "adversary"
        self._n_ctx = n_ctx
        self.plan = list(plan)
        self._lock = threading.Lock()
        self.tried: list[tuple[str, dict[str, Any]]] = []  # every call it made, in order
        self.requests: list[GenRequest] = []

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
            call = self._next_call(request.messages)
            if call is not None:
                self.tried.append(call)
        prompt = self.count_messages(request.messages)
        if call is not None:
            name, args = call
            n = sum(1 for m in request.messages if m.get("role") == "assistant")
            tool = ToolCall(id=f"adv{n}", name=name, arguments=json.dumps(args))
            yield Chunk(
                done=True, finish_reason="tool_calls", tool_calls=[tool], prompt_tokens=prompt
            )
            return
        answer = "DONE " + json.dumps([n for n, _ in self.tried])
        yield Chunk(text=answer)
        yield Chunk(
            done=True,
            finish_reason="stop",
            prompt_tokens=prompt,
            completion_tokens=len(answer.split()),
        )

    def _next_call(self, messages: list[Message]) -> tuple[str, dict[str, Any]] | None:
        """The first instruction or planned call this conversation has not made yet."""
        made = _calls_made(messages)
        wanted: list[tuple[str, dict[str, Any]]] = []
        for m in messages:
            if m.get("role") == "assistant":
                continue
            for name, raw in INSTRUCTION.findall(_readable(m)):
                try:
                    wanted.append((name, json.loads(raw)))
                except json.JSONDecodeError:
                    continue
        wanted.extend(self.plan)
        for call in wanted:
            key = (call[0], json.dumps(call[1], sort_keys=True))
            if made.get(key, 0) > 0:
                made[key] -= 1
                continue
            return call
        return None


def _readable(m: Message) -> str:
    """A message's text as a model reads it: a tool result's JSON decoded into its strings
    (an instruction inside a file's contents or an MCP reply is read, not skipped)."""
    content = str(m.get("content") or "")
    if m.get("role") != "tool":
        return content
    try:
        body = json.loads(content)
    except json.JSONDecodeError:
        return content
    texts: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            texts.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(body)
    return "\n".join(texts)


def _calls_made(messages: list[Message]) -> dict[tuple[str, str], int]:
    made: dict[tuple[str, str], int] = {}
    for m in messages:
        for c in m.get("tool_calls") or []:
            fn = c.get("function") or {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except json.JSONDecodeError:
                args = {}
            key = (str(fn.get("name")), json.dumps(args, sort_keys=True))
            made[key] = made.get(key, 0) + 1
    return made
