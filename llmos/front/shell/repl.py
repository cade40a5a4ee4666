"""The shell's loop: read a line (prompt_toolkit on a terminal), run it, report finished jobs.

A line is a builtin or a job (`parse`). A job runs in the foreground unless it ends with `&`:
the shell prints its output as it comes and waits for it; Ctrl-C kills it (only it: the shell
goes on), Ctrl-Z stops it (`bg`/`fg` go on with it). A foreground process that comes to wait
for an approval or for an answer goes to the background with a note saying so, so the user
can `approve`/`deny` or `answer` it at the prompt and `fg` it again. Finished background jobs
are reported before the next prompt.

`help` prints the commands (`HELP`).

Invariants: a bad line, an unknown command or a failed operation is one line
(`llmos: error: ...`) and the shell goes on; nothing but Ctrl-D, `exit` or the end of the input
ends it; a remote service that went away is said once per command, and reconnecting is said
when a later command reaches it again.

What this does not do: talk to the kernel (`backend`), keep jobs (`jobs`), or format tables
(`show`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory

from llmos import params
from llmos.errors import InputError, LlmosError, RequestError, ServiceUnreachableError
from llmos.front.shell import show
from llmos.front.shell.backend import Backend
from llmos.front.shell.conversation import Conversation
from llmos.front.shell.jobs import Job, JobTable, Stage
from llmos.front.shell.parse import Command, job_or_pid, parse, tokenize

BUILTINS = (
    "answer",
    "approve",
    "bg",
    "chat",
    "deny",
    "exit",
    "fg",
    "help",
    "jobs",
    "kill",
    "new",
    "programs",
    "ps",
    "quit",
    "stop",
    "top",
)
PROMPT = "llmos> "
CHAT_PROMPT = "chat> "
HELP = """\
    chat [TEXT]          a turn of the conversation (TEXT), or the conversation mode
                         (`chat> `: every line is a turn; `exit` or Ctrl-D leaves it)
    new                  start a new conversation
    NAME [WORDS] [k=v]   run installed program NAME (words: its input text; k=v: its inputs);
      [< FILE] [| ...]   `<` reads the input from FILE; `|` gives the output to the next one
    jobs, fg [%N], bg [%N], kill %N|PID, stop %N|PID
    ps [-a], top         the scheduler's view: resident, swapped, waiting and on what
    approve %N|PID, deny %N|PID, answer %N|PID TEXT
    programs, help, exit"""


class Shell:
    def __init__(
        self, backend: Backend, out: Callable[[str], None] | None = None, system: str | None = None
    ) -> None:
        self.backend = backend
        self.jobs = JobTable()
        self.conversation = Conversation(system)
        self.chatting = False
        self.done = False
        self._out = out or _write
        self._programs: list[str] = []

    # --- output ---------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self._out(text if text.endswith("\n") else text + "\n")

    def error(self, message: str) -> None:
        self.say(f"llmos: error: {message}")

    # --- one line -------------------------------------------------------------------------

    def run_line(self, line: str) -> None:
        """Run one line; every failure is one line and the shell goes on."""
        self._reconnected()
        try:
            if self.chatting:
                self._chat_mode_line(line)
            else:
                self._line(line)
        except ServiceUnreachableError as exc:
            self.error(f"{exc} (the shell will reconnect on the next command)")
        except LlmosError as exc:
            self.error(str(exc))

    def _reconnected(self) -> None:
        if not getattr(self.backend, "lost", False):
            return
        with contextlib.suppress(LlmosError):
            self.backend.top()
            self.say(f"llmos: reconnected to {self.backend.where}")

    def _chat_mode_line(self, line: str) -> None:
        text = line.strip()
        if text in ("exit", "quit"):
            self.chatting = False
        elif text:
            self._turn(text, background=False)

    def _line(self, line: str) -> None:
        parsed = parse(line)
        if parsed is None:
            return
        first = parsed.commands[0]
        if first.name in BUILTINS:
            if len(parsed.commands) > 1:
                raise RequestError(f"{first.name} is a shell command: it cannot be in a pipe")
            if first.name == "chat":
                self._chat(line, parsed.background)
            else:
                self._builtin(first, line)
            return
        stages = [self._stage(c) for c in parsed.commands]
        job = self.jobs.add(parsed.source, stages, self.backend).start()
        self._launched(job, parsed.background)

    def _stage(self, c: Command) -> Stage:
        if c.name in BUILTINS:
            raise RequestError(f"{c.name} is a shell command: it cannot be in a pipe")
        if c.name not in self._programs:
            self._programs = self.backend.programs()
            if c.name not in self._programs:
                raise RequestError(
                    f"unknown command or program: {c.name} (help lists the commands; programs "
                    "the installed programs)"
                )
        text = c.text or None
        if c.stdin_file is not None:
            text = "\n\n".join(p for p in (text, _read_file(c.stdin_file)) if p)
        return Stage(c.name, dict(c.inputs), text)

    def _launched(self, job: Job, background: bool) -> None:
        if background:
            self.say(f"[{job.number}] {job.pid if job.pid is not None else job.state}")
        else:
            self.foreground(job)

    # --- the conversation -------------------------------------------------------------------

    def _chat(self, line: str, background: bool) -> None:
        words = [t.text for t in tokenize(line)]
        if words and words[-1] == "&":
            words = words[:-1]
        text = " ".join(words[1:]).strip()
        if not text:
            self.chatting = True
            self.say("(a conversation: each line is a turn; exit or Ctrl-D leaves it)")
            return
        self._turn(text, background)

    def _turn(self, text: str, background: bool) -> None:
        messages = self.conversation.ask(text)

        def done(job: Job) -> None:
            if job.state == "done":
                self.conversation.answered(text, job.text)

        stage = Stage(None, {}, None, tuple(messages))
        job = self.jobs.add(f"chat {text}", [stage], self.backend, done).start()
        self._launched(job, background)

    # --- the foreground ---------------------------------------------------------------------

    def foreground(self, job: Job) -> None:
        """Show the job's output until it ends, is interrupted (Ctrl-C: killed), stopped
        (Ctrl-Z) or comes to wait for the user (then it goes on in the background)."""
        stopped = threading.Event()
        old = _on_sigtstp(lambda: stopped.set())
        last_check = time.monotonic()
        try:
            while True:
                try:
                    pieces, live = job.read(job.shown, params.SHELL_POLL_S)
                    if pieces:
                        self._out("".join(pieces))
                        job.shown += len(pieces)
                        job.ended_line = pieces[-1].endswith("\n")
                    if not live:
                        break
                    if stopped.is_set():
                        job.stop()
                        self._newline(job)
                        self.say(show.job_line(job.number, "stopped", job.source, job.pid))
                        return
                    if time.monotonic() - last_check >= params.SHELL_POLL_S:
                        last_check = time.monotonic()
                        if self._waits_for_user(job):
                            return
                except KeyboardInterrupt:
                    self._interrupt(job)
                    return
        finally:
            _restore_sigtstp(old)
        self._newline(job)
        job.reported = True
        if job.state == "failed":
            self.error(job.error or "the job failed")
        elif job.state == "killed":
            self.say(show.job_line(job.number, "killed", job.source, job.pid))
        self.jobs.forget(job)

    def _newline(self, job: Job) -> None:
        if job.shown and not job.ended_line:
            self._out("\n")
            job.ended_line = True

    def _interrupt(self, job: Job) -> None:
        try:
            job.kill()
        except LlmosError as exc:
            self.error(str(exc))
        job.join(params.SHELL_HTTP_TIMEOUT_S)
        self._out("\n")
        job.reported = True
        self.say(show.job_line(job.number, "killed", job.source, job.pid))
        self.jobs.forget(job)

    def _waits_for_user(self, job: Job) -> bool:
        """True (after saying so) if the job's process waits for an approval or an answer."""
        if job.pid is None or not job.live:
            return False
        reply = self.backend.get(job.pid)
        proc = reply.get("process") or {}
        state = proc.get("state")
        if state not in ("waiting_approval", "waiting"):
            return False
        self._newline(job)
        pid = job.pid
        if state == "waiting":
            self.say(
                f"[{job.number}] pid {pid} asks: {reply.get('question') or '?'}\n"
                f"  answer it with: answer {pid} TEXT (then fg %{job.number})"
            )
        else:
            rows = [p for p in self.backend.ps() if p.get("pid") == pid]
            what = show.waits_on(rows[0]) if rows else "approval"
            self.say(
                f"[{job.number}] pid {pid} waits for {what}\n"
                f"  approve {pid} or deny {pid} (then fg %{job.number})"
            )
        return True

    # --- builtins ---------------------------------------------------------------------------

    def _builtin(self, c: Command, line: str) -> None:
        args = list(c.args) + [f"{k}={v}" for k, v in c.inputs.items()]
        name = c.name
        if name in ("exit", "quit"):
            self.done = True
        elif name == "help":
            self.say(HELP)
        elif name == "new":
            self.conversation.new()
            self.say("(a new conversation)")
        elif name == "programs":
            self._programs = self.backend.programs()
            self.say("\n".join(self._programs) if self._programs else "(no programs installed)")
        elif name == "ps":
            self.say(show.ps(self.backend.ps(all="-a" in args)))
        elif name == "top":
            self.say(show.top(self.backend.top()))
        elif name == "jobs":
            self._jobs()
        elif name in ("fg", "bg"):
            job = self.jobs.get(self._job_number(args))
            if job.state == "stopped":
                job.cont()
            if name == "fg":
                self.say(job.source.removesuffix(" &"))
                self.foreground(job)
            else:
                self.say(show.job_line(job.number, job.state, job.source, job.pid))
        elif name in ("kill", "stop", "approve", "deny"):
            if not args:
                raise RequestError(f"usage: {name} %N|PID...")
            for word in args:
                self._act(name, word)
        elif name == "answer":
            if len(args) < 2:
                raise RequestError("usage: answer %N|PID TEXT")
            pid = self._pid(args[0])
            text = line.split(None, 2)[2] if len(line.split(None, 2)) > 2 else " ".join(args[1:])
            self.backend.answer(pid, text.strip())
            self.say(f"answered pid {pid}")

    def _job_number(self, args: list[str]) -> int | None:
        if not args:
            return None
        kind, n = job_or_pid(args[0])
        if kind == "job":
            return n
        job = self.jobs.by_pid(n)
        if job is None:
            raise LlmosError(f"pid {n} is not one of this shell's jobs")
        return job.number

    def _pid(self, word: str) -> int:
        kind, n = job_or_pid(word)
        if kind == "pid":
            return n
        job = self.jobs.get(n)
        if job.pid is None:
            raise LlmosError(f"job %{n} has no process yet")
        return job.pid

    def _act(self, action: str, word: str) -> None:
        kind, n = job_or_pid(word)
        if kind == "job":
            job = self.jobs.get(n)
            if action == "kill":
                job.kill()
                job.join(params.SHELL_HTTP_TIMEOUT_S)
                job.reported = True
                self.say(show.job_line(job.number, "killed", job.source, job.pid))
                self.jobs.forget(job)
                return
            if action == "stop":
                job.stop()
                self.say(show.job_line(job.number, "stopped", job.source, job.pid))
                return
            n = self._pid(word)
        reply = self.backend.act(action, n)
        proc = reply.get("process") or {}
        if reply.get("already_exited"):
            self.say(f"pid {n} had already exited ({proc.get('exit_status')})")
        else:
            past = {"kill": "killed", "stop": "stopped", "approve": "approved", "deny": "denied"}
            self.say(f"{past[action]} pid {n}")

    def _jobs(self) -> None:
        for job in self.jobs.all():
            detail = ""
            if job.live and job.pid is not None:
                with contextlib.suppress(LlmosError):
                    detail = str((self.backend.get(job.pid).get("process") or {}).get("state"))
            self.say(show.job_line(job.number, job.state, job.source, job.pid, detail))

    def report(self) -> None:
        """Say which background jobs ended since the last prompt."""
        for job in self.jobs.reap():
            job.reported = True
            state = job.state + (f": {job.error}" if job.error else "")
            self.say(show.job_line(job.number, state, job.source, job.pid))

    # --- completion -------------------------------------------------------------------------

    def words(self) -> list[str]:
        """What Tab completes: commands, installed programs, job numbers and live pids."""
        words = list(BUILTINS) + self._programs
        words += [f"%{j.number}" for j in self.jobs.all()]
        with contextlib.suppress(LlmosError):
            words += [str(p["pid"]) for p in self.backend.ps()]
        return words


class ShellCompleter(Completer):
    """Completes the word under the cursor from `Shell.words()` (the programs list is fetched
    on the first completion)."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell

    def get_completions(self, document: Document, complete_event: Any) -> Iterable[Completion]:
        word = document.get_word_before_cursor(WORD=True)
        if not self.shell._programs:
            with contextlib.suppress(LlmosError):
                self.shell._programs = self.shell.backend.programs()
        for candidate in sorted(set(self.shell.words())):
            if candidate.startswith(word) and candidate != word:
                yield Completion(candidate, start_position=-len(word))


def loop(shell: Shell, history: Path | None) -> None:
    """Read and run lines until exit or the end of the input."""
    read = _terminal_reader(shell, history) if sys.stdin.isatty() else _pipe_reader()
    if sys.stdin.isatty():
        _own_ctrl_c()
    while not shell.done:
        shell.report()
        try:
            line = read(CHAT_PROMPT if shell.chatting else PROMPT)
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt drops the line
        except EOFError:
            if shell.chatting:
                shell.chatting = False
                shell.say("")
                continue
            break
        shell.run_line(line)


def _terminal_reader(shell: Shell, history: Path | None) -> Callable[[str], str]:
    session: PromptSession[str] = PromptSession(
        history=FileHistory(str(history)) if history is not None else None,
        completer=ShellCompleter(shell),
        complete_while_typing=False,
    )
    return lambda prompt: session.prompt(prompt)


def _pipe_reader() -> Callable[[str], str]:
    def read(prompt: str) -> str:
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _read_file(name: str) -> str:
    path = Path(name).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{name}: {exc.strerror}") from None


def _own_ctrl_c() -> None:
    """An interactive shell takes Ctrl-C and Ctrl-Z as its own, as sh does, even when whoever
    started it left SIGINT ignored or SIGINT and SIGTSTP blocked (both are inherited): else
    Ctrl-C could not kill a foreground job."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "pthread_sigmask") and hasattr(signal, "SIGTSTP"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTSTP})


def _on_sigtstp(handler: Callable[[], None]) -> Any:
    """Ctrl-Z stops the foreground job instead of the shell (main thread only)."""
    if not hasattr(signal, "SIGTSTP") or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTSTP, lambda signum, frame: handler())


def _restore_sigtstp(old: Any) -> None:
    if old is not None:
        signal.signal(signal.SIGTSTP, old)
