"""The shell's conversation with its default CPU: the messages so far, one turn at a time.

Each turn is a kernel process (the API's `chat` operation: a process in the table like any
other, scheduled, paged to its context limit and logged) given the whole conversation; when it
ends `ok` its reply joins the conversation, so the next turn sees it. `new` starts over.

Invariants: the messages alternate user and assistant after the optional system message; a
turn that fails or is killed leaves the conversation as it was before it.

What this does not do: run the turn (`jobs` does) or keep the conversation after the shell
exits (each turn is in the run log, `llmos logs`).
"""

from __future__ import annotations

import threading


class Conversation:
    def __init__(self, system: str | None = None) -> None:
        self._lock = threading.Lock()
        self._system = system
        self._messages: list[dict[str, str]] = []

    def ask(self, text: str) -> list[dict[str, str]]:
        """The messages a turn saying `text` sends."""
        with self._lock:
            head = [{"role": "system", "content": self._system}] if self._system else []
            return [*head, *self._messages, {"role": "user", "content": text}]

    def answered(self, text: str, reply: str) -> None:
        with self._lock:
            self._messages += [
                {"role": "user", "content": text},
                {"role": "assistant", "content": reply},
            ]

    def new(self) -> None:
        with self._lock:
            self._messages = []

    @property
    def turns(self) -> int:
        with self._lock:
            return len(self._messages) // 2
