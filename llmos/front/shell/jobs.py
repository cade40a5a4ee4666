"""The shell's job table: each command line is a job, a pipeline of kernel processes.

A job runs on its own thread: it spawns its first stage, follows its output to the end, gives
that output as stdin to the next stage (`extract < letter.txt | summarize`), and so on; the
last stage's output is kept in the job (`read`), so a job in the background loses nothing and
`fg` shows it from the start. Jobs are numbered from 1 (`%1`); a number is reused only once
its job has been reported finished.

    state    running | stopped | done | failed | killed

Invariants: at most one stage of a job is alive at a time (`pid` is that stage's process);
a killed job starts no further stage; a job's state changes only under its condition, and
`read` wakes on every new piece and on the end; nothing here prints.

What this does not do: parse lines, talk to the terminal, or decide which job is in the
foreground (`repl` does).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmos import params
from llmos.errors import LlmosError
from llmos.front.shell.backend import Backend

LIVE = ("running", "stopped")


@dataclass(frozen=True)
class Stage:
    """One process of a pipeline: an installed program, or a conversation turn."""

    program: str | None = None  # None: a conversation turn
    inputs: dict[str, Any] = field(default_factory=dict)
    text: str | None = None  # the input text (words, a file, or the previous stage's output)
    messages: tuple[dict[str, str], ...] = ()  # a conversation turn's messages


class Job:
    def __init__(
        self,
        number: int,
        source: str,
        stages: list[Stage],
        backend: Backend,
        on_done: Callable[[Job], None] | None = None,
    ) -> None:
        self.number = number
        self.source = source
        self.stages = stages
        self.backend = backend
        self.on_done = on_done
        self.state = "running"
        self.pid: int | None = None
        self.pids: list[int] = []
        self.out: list[str] = []
        self.error: str | None = None
        self.reported = False  # its end was shown to the user
        self.shown = 0  # output pieces the shell has printed
        self.ended_line = True  # the printed output ends with a newline (or is empty)
        self.cond = threading.Condition()
        self._killed = False
        self._thread = threading.Thread(target=self._run, name=f"job-{number}", daemon=True)

    def start(self, timeout: float = params.SHELL_HTTP_TIMEOUT_S) -> Job:
        """Start the job's thread and wait (up to `timeout`) until its first process exists
        or the job has ended, so its pid can be shown."""
        self._thread.start()
        with self.cond:
            self.cond.wait_for(lambda: self.pid is not None or not self.live, timeout)
        return self

    @property
    def text(self) -> str:
        with self.cond:
            return "".join(self.out)

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def _run(self) -> None:
        text: str | None = None
        try:
            for i, stage in enumerate(self.stages):
                last = i == len(self.stages) - 1
                stdin = _join(stage.text, text) if i else stage.text
                with self.cond:
                    if self._killed:
                        break
                if stage.program is None:
                    pid = self.backend.chat(list(stage.messages))
                else:
                    pid = self.backend.exec(stage.program, stage.inputs, stdin)
                with self.cond:
                    self.pid = pid
                    self.pids.append(pid)
                    self.cond.notify_all()
                    if self.state == "stopped":  # stopped between two stages
                        self.backend.act("stop", pid)
                collected: list[str] = []
                end: dict[str, Any] = {}
                for event in self.backend.follow(pid):
                    if "text" in event:
                        if last:
                            with self.cond:
                                self.out.append(event["text"])
                                self.cond.notify_all()
                        else:
                            collected.append(event["text"])
                    elif event.get("done"):
                        end = event
                status = end.get("exit_status")
                if status != "ok":
                    killed = self._killed or status == "killed"
                    what = "" if len(self.stages) == 1 else f"{stage.program or 'chat'}: "
                    self._end(
                        "killed" if killed else "failed", f"{what}{end.get('error') or status}"
                    )
                    return
                text = "".join(collected)
            self._end("killed" if self._killed else "done", None)
        except LlmosError as exc:
            self._end("killed" if self._killed else "failed", str(exc))

    def _end(self, state: str, error: str | None) -> None:
        with self.cond:
            self.state = state
            self.error = error if state == "failed" else None
            self.cond.notify_all()
        if self.on_done is not None:
            self.on_done(self)

    def read(self, seen: int, timeout: float) -> tuple[list[str], bool]:
        """Output pieces after the first `seen` (waiting up to `timeout` for one or for the
        end), and whether the job is still live."""
        with self.cond:
            if len(self.out) == seen and self.live:
                self.cond.wait(timeout)
            return self.out[seen:], self.live

    def kill(self) -> None:
        """Kill the stage that runs and start no other (the backend's errors propagate)."""
        with self.cond:
            self._killed = True
            pid = self.pid if self.live else None
        if pid is not None:
            self.backend.act("kill", pid)

    def stop(self) -> None:
        with self.cond:
            pid = self.pid
            if self.state == "running":
                self.state = "stopped"
        if pid is not None:
            self.backend.act("stop", pid)

    def cont(self) -> None:
        with self.cond:
            pid = self.pid
            if self.state == "stopped":
                self.state = "running"
        if pid is not None:
            self.backend.act("cont", pid)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


def _join(words: str | None, piped: str | None) -> str | None:
    parts = [p for p in (words, piped) if p]
    return "\n\n".join(parts) if parts else None


class JobTable:
    """The shell's jobs by number; `current` is the newest live one (`%+`)."""

    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()

    def add(
        self,
        source: str,
        stages: list[Stage],
        backend: Backend,
        on_done: Callable[[Job], None] | None = None,
    ) -> Job:
        """A new job (not yet started), numbered one past the highest in the table."""
        with self._lock:
            number = max(self._jobs, default=0) + 1
            job = Job(number, source, stages, backend, on_done)
            self._jobs[number] = job
            return job

    def get(self, number: int | None) -> Job:
        """Job `number`, or the current job for None; LlmosError if there is none."""
        with self._lock:
            if number is None:
                live = [j for j in self._jobs.values() if j.live]
                if not live:
                    raise LlmosError("no current job")
                return live[-1]
            job = self._jobs.get(number)
        if job is None:
            raise LlmosError(f"no job %{number}")
        return job

    def by_pid(self, pid: int) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs.values() if pid in j.pids), None)

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def reap(self) -> list[Job]:
        """Finished jobs not yet reported, now removed from the table (their numbers free)."""
        with self._lock:
            done = [j for j in self._jobs.values() if not j.live]
            for j in done:
                del self._jobs[j.number]
            return [j for j in done if not j.reported]

    def forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.number, None)
