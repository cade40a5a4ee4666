"""Uids and processes of sandbox runs: a fresh uid per run, counting and killing processes.

Each run gets an unprivileged uid (from `SANDBOX_UID_BASE`) that no live process and no other
run of this llmos is using, held until the run ends (`fresh_uid`). RLIMIT_NPROC counts the
processes of a real uid host-wide, so the sandbox's process limit is set from
`count_processes`. At the end of a run `kill_session` SIGKILLs the launcher's process group and
every process in the sandbox's pid namespace, again and again until /proc lists none of them.
One walk over /proc's stat files (`_processes`) serves the lookups by parent, pid namespace
and session.

Invariants: a uid handed out by `fresh_uid` is not handed out again until its run ends; every
reading of /proc tolerates processes that vanish meanwhile; zombies do not count as live.

What this module does not do: start processes (`sandboxjail.launch`), or see inside the
sandbox other than through the host's /proc.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import NamedTuple

from llmos import params


class SandboxUnavailable(Exception):
    """The sandbox cannot be set up here; the message says why (one line)."""


_uids_lock = threading.Lock()
_uids_in_use: set[int] = set()


@contextlib.contextmanager
def fresh_uid() -> Iterator[int]:
    """An unprivileged uid no live process and no other run of this llmos is using."""
    with _uids_lock:
        for _ in range(params.SANDBOX_UID_TRIES):
            uid = params.SANDBOX_UID_BASE + random.randrange(params.SANDBOX_UID_COUNT)
            if uid not in _uids_in_use and count_processes(uid) == 0:
                _uids_in_use.add(uid)
                break
        else:
            raise SandboxUnavailable("no free sandbox uid")
    try:
        yield uid
    finally:
        with _uids_lock:
            _uids_in_use.discard(uid)


def count_processes(uid: int) -> int:
    """Processes whose real uid is `uid` (RLIMIT_NPROC counts them all, host-wide)."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        count += int(line.split()[1]) == uid
                        break
        except OSError:
            continue
    return count


def kill_session(session: int, patience_s: float = 5.0) -> None:
    """SIGKILL the process group `session` and every process in the sandbox's pid namespace,
    until none of them is left.

    Killed processes take a moment to go (and a fork racing the kill may add one), so this
    repeats the kill while /proc still lists a live member, for at most `patience_s`.
    """
    ns = _sandbox_namespace(session)
    deadline = time.monotonic() + patience_s
    while True:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(session, signal.SIGKILL)
        members = namespace_processes(ns) if ns else []
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if (not members and not session_processes(session)) or time.monotonic() > deadline:
            return
        time.sleep(0.01)


class _Stat(NamedTuple):
    """What a process's /proc/<pid>/stat says of it, as far as this module reads it."""

    pid: int
    state: str  # "Z" for a zombie
    parent: int
    session: int


def _processes() -> Iterator[_Stat]:
    """Each process /proc lists, zombies included, read from its stat file; a process that
    vanishes before its file is read is skipped."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        yield _Stat(int(entry), fields[0].decode(), int(fields[1]), int(fields[3]))


def _sandbox_namespace(launcher: int) -> str | None:
    """The pid namespace of the sandbox started by bwrap process `launcher` (its child's)."""
    for proc in _processes():
        if proc.parent == launcher:
            with contextlib.suppress(OSError):
                return os.readlink(f"/proc/{proc.pid}/ns/pid")
    return None


def namespace_processes(ns: str) -> list[int]:
    """Pids of live processes (not zombies) in pid namespace `ns` (for cleanup and tests)."""
    found = []
    for proc in _processes():
        if proc.state == "Z":
            continue
        try:
            same = os.readlink(f"/proc/{proc.pid}/ns/pid") == ns
        except OSError:
            continue
        if same:
            found.append(proc.pid)
    return found


def session_processes(session: int) -> list[int]:
    """Pids of live processes (not zombies) in session `session` (for checking cleanup)."""
    return [proc.pid for proc in _processes() if proc.session == session and proc.state != "Z"]
