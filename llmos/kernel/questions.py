"""The questions processes wait on: the kernel's side of the `ask` device.

`Questions.ask(proc, text, timeout, off_cpu)` puts a process in state `waiting` until
`answer(proc, text)` gives it an answer, the timeout passes or the process is killed;
`pending(pid)` is the question a process waits on (`ps` and `top` show it).
The kernel holds one `Questions` for all its processes; `Kernel.ask`, `Kernel.answer` and
`Kernel.question` delegate to it. Its sibling for syscalls waiting on a decision is
`llmos.kernel.security.guard.Approvals`.

Invariants:
- A process waits on at most one question; a second `ask` while one is pending is refused.
- A question leaves the table when it is answered, when its wait times out or when its
  process is killed; an answer given after that finds nothing to answer (NoSuchProcessError).
- While it waits, the process gives its place on a remote CPU's gate back (`off_cpu`); when
  the wait ends it is `blocked` again, still in its syscall.

What this module does not do: check that a process is alive or that the caller owns it (the
kernel and its API do), reach the person (front ends show `pending` and send `answer`), or
release and retake a remote CPU's place itself (the `off_cpu` it is given does).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from llmos import params
from llmos.errors import LlmosError, NoSuchProcessError
from llmos.kernel.proc import Process, State


class _Question:
    """A pending `ask`: its text, and the answer once `Questions.answer` gives one."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.answer = ""
        self.event = threading.Event()


class Questions:
    """The questions waiting for a person's answer, one per process, kernel-wide."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, _Question] = {}  # pid -> its pending `ask`

    def ask(
        self,
        proc: Process,
        question: str,
        timeout: float,
        off_cpu: Callable[[], contextlib.AbstractContextManager[None]],
    ) -> str:
        """Put `proc` in state waiting until `answer(proc, text)`; the answer.
        LlmosError if no answer comes within `timeout` seconds or the process is killed."""
        pid = proc.pid
        pending = _Question(question)
        with self._lock:
            if pid in self._pending:
                raise LlmosError(f"process {pid} is already waiting for an answer")
            self._pending[pid] = pending
        proc.set_state(State.WAITING)
        deadline = time.monotonic() + timeout
        try:
            with off_cpu():
                while not pending.event.wait(params.PROC_DEVICE_POLL_S):
                    if proc.entity.killed or time.monotonic() >= deadline:
                        break
        finally:
            with self._lock:
                if self._pending.get(pid) is pending:
                    del self._pending[pid]
                answered = pending.event.is_set()
            with proc.cond:
                if proc.base_state == State.WAITING:
                    proc.base_state = State.BLOCKED  # still in its syscall
                    proc.cond.notify_all()
        if answered:
            return pending.answer
        if proc.entity.killed:
            raise LlmosError("killed while waiting for an answer")
        raise LlmosError(f"no answer within {timeout:g} s")

    def answer(self, proc: Process, text: str) -> None:
        """Answer the question `proc` is waiting on; NoSuchProcessError if it is not waiting
        for one."""
        with self._lock:
            pending = self._pending.pop(proc.pid, None)
            if pending is None:
                raise NoSuchProcessError(
                    f"process {proc.pid} is not waiting for an answer (it is {proc.state.value})"
                )
            pending.answer = text
            pending.event.set()

    def pending(self, pid: int) -> str | None:
        """The question process `pid` is waiting on, if any."""
        with self._lock:
            got = self._pending.get(pid)
        return None if got is None else got.text
