"""The sandbox the `python` and `shell` devices run their children in (bubblewrap).

Each call runs in a new OS process tree, in a fresh private working directory (a temp dir,
deleted afterwards) holding only copies of the files the program was granted
(`ctx.options["files"]`, relative paths copied in from `ctx.root`). This module holds the
limits (`Limits`), the run's directory (`workspace`) and the run (`run_sandboxed`); the walls
are in `sandboxjail`, the code run first inside in `sandboxboot`, the uids and the cleanup in
`sandboxproc`. The launcher:

1. probes once per llmos process that bubblewrap (`bwrap`, `SANDBOX_BWRAP`), the system Python
   (`SANDBOX_PYTHON`) and a syscall filter for this machine are there and that a sandbox can
   be set up (`sandboxjail.unavailable`); if not, the device is refused with one line saying
   why. It never runs weaker;
2. picks a fresh unprivileged uid for the run (`sandboxproc.fresh_uid`: from
   `SANDBOX_UID_BASE`, not used by a live process or another run of this llmos). As root,
   bwrap itself is started as that uid (no groups); as an ordinary user, that uid is the one
   mapped inside the user namespace;
3. runs `bwrap` with new user, pid, network, ipc, uts and cgroup namespaces, no capabilities,
   no nested user namespaces (`--disable-userns`), `--die-with-parent`, `--new-session`, and a
   seccomp filter (built in `sandboxjail` as classic BPF: ptrace, mount and the new mount API,
   unshare/setns, bpf, perf_event_open, keyctl, io_uring, module and kexec loading,
   process_vm_*, userfaultfd, open_by_handle_at, ... fail with EPERM; clone3 with ENOSYS).
   The view: /usr and the /bin, /lib* links read-only, a few /etc files the loader needs
   (`sandboxjail._ETC`), a private tmpfs /tmp, /proc of its own pid namespace, a minimal
   /dev, the work dir read-write at `/work` and the code read-only at `/sandbox/main.py`.
   Nothing else exists inside: not $LLMOS_HOME, its kernel socket, the user's home or another
   run's directory;
4. inside, `python -I -S -X utf8 -c BOOTSTRAP` (`sandboxboot`, shipped as source text) sets
   the rlimits on itself (CPU seconds, address space, process count, file size, open files,
   no core dumps; inherited by all below). Python mode then adds a second seccomp filter
   refusing execve/execveat (the code cannot start any program), installs the audit hook
   (`sys.addaudithook`: sockets, process creation, ctypes, files outside /work) as a second
   layer, and runs the code; exec mode (`shell`) execs the program;
5. the parent reads stdout and stderr up to `PYTHON_OUTPUT_BYTES` each, kills the whole process
   group at the cap or at the wall-clock limit, and always kills it (SIGKILL) at the end; the
   sandbox's pid 1 dies with it and the kernel kills everything left in its pid namespace
   (`sandboxproc.kill_session` SIGKILLs those too, until none is left).

Exit status follows the shell convention: a child killed by signal N reports 128 + N
(CPU limit: 128 + SIGXCPU = 152, or 137 after the hard limit's SIGKILL).

What protects what:
- files: the mount namespace is the boundary (paths outside the view do not exist); the fresh
  uid makes another run's files and processes foreign even where they would be visible.
- network: the network namespace (only its own loopback); a Unix socket on the host is not in
  the view. The audit hook's socket refusal is a second layer.
- processes: the pid namespace (nothing outside is visible or signalable); fork bombs hit
  RLIMIT_NPROC (counted for the fresh uid, or inside the user namespace); the tree dies with
  its pid 1.
- memory: RLIMIT_AS per process; CPU: RLIMIT_CPU per process and the wall-clock kill.

What it does NOT cover (be honest): the kernel is shared, so a kernel bug reachable through the
allowed syscalls breaks out (a VM does not have this problem); the seccomp filter is a
denylist, not an allowlist; the private /tmp is a tmpfs in memory whose size is not capped
(RLIMIT_FSIZE caps each file, not their number) and the work dir is on the host's disk; the
world-readable system files under /usr are readable; as an ordinary user RLIMIT_NPROC is
counted from the processes the user already has; there is no cgroup, so memory is limited per
process, not per run.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos import params
from llmos.hw.dev.base import CallContext
from llmos.hw.dev.fs import FsError, open_regular, read_fd, split_path
from llmos.hw.dev.sandboxboot import BOOTSTRAP
from llmos.hw.dev.sandboxjail import (
    CODE_INSIDE,
    exec_filter,
    launch,
    prepare_dir,
    rmtree,
    unavailable,
)
from llmos.hw.dev.sandboxproc import SandboxUnavailable, count_processes, fresh_uid, kill_session

# What the python and shell devices use (SandboxUnavailable is raised by the parts too).
__all__ = [
    "Limits",
    "SandboxResult",
    "SandboxUnavailable",
    "Workspace",
    "run_sandboxed",
    "workspace",
]


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run (options may lower the params, never raise them)."""

    cpu_s: int = params.PYTHON_CPU_S
    memory_bytes: int = params.PYTHON_MEMORY_BYTES
    wall_s: float = params.PYTHON_WALL_S
    max_procs: int = params.PYTHON_MAX_PROCS
    output_bytes: int = params.PYTHON_OUTPUT_BYTES
    file_bytes: int = params.PYTHON_FILE_BYTES
    open_files: int = params.PYTHON_OPEN_FILES

    @classmethod
    def from_context(cls, ctx: CallContext) -> Limits:
        base = cls()
        opts = ctx.options

        def lower(key: str, default: float) -> float:
            value = opts.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                return min(value, default)
            return default

        return cls(
            cpu_s=max(1, int(lower("cpu_s", base.cpu_s))),
            memory_bytes=int(lower("memory_bytes", base.memory_bytes)),
            wall_s=min(lower("wall_s", base.wall_s), ctx.timeout_s),
            max_procs=max(1, int(lower("max_procs", base.max_procs))),
            output_bytes=int(min(lower("output_bytes", base.output_bytes), ctx.max_output_bytes)),
            file_bytes=int(lower("file_bytes", base.file_bytes)),
            open_files=max(params.PYTHON_MIN_OPEN_FILES, int(lower("open_files", base.open_files))),
        )


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_status: int | None
    timed_out: bool
    killed_reason: str | None
    truncated: bool
    session: int  # the sandbox's session id (= its process group), for checking cleanup

    def output(self) -> dict[str, Any]:
        return {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exit_status": self.exit_status,
            "timed_out": self.timed_out,
            "killed_reason": self.killed_reason,
        }


@dataclass(frozen=True)
class Workspace:
    run_dir: Path  # private to llmos (holds the code file)
    work: Path  # the run's working directory, `/work` inside the sandbox
    uid: int  # the run's fresh uid


@contextlib.contextmanager
def workspace(ctx: CallContext) -> Iterator[Workspace]:
    """A fresh run directory whose `work` holds copies of the granted files, and a fresh uid.

    Deletes the directory afterwards. Raises SandboxUnavailable when no sandbox can be set up
    here, FsError for a bad grant.
    """
    reason = unavailable()
    if reason is not None:
        raise SandboxUnavailable(reason)
    with fresh_uid() as uid:
        run_dir = Path(tempfile.mkdtemp(prefix="llmos-sandbox-"))
        try:
            work = prepare_dir(run_dir, uid)
            total = 0
            for rel in ctx.options.get("files", []) or []:
                if ctx.root is None:
                    raise FsError("files were granted but the process has no file namespace")
                parts = split_path(str(rel))
                data = read_fd(open_regular(ctx.root, str(rel)), params.PYTHON_GRANT_MAX_BYTES)
                total += len(data)
                if total > params.PYTHON_GRANT_MAX_BYTES:
                    raise FsError(f"granted files exceed {params.PYTHON_GRANT_MAX_BYTES} bytes")
                target = work.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            if os.geteuid() == 0:
                for dirpath, dirnames, filenames in os.walk(work):
                    for name in [*dirnames, *filenames]:
                        os.lchown(os.path.join(dirpath, name), uid, uid)
            yield Workspace(run_dir, work, uid)
        finally:
            rmtree(run_dir)


def run_sandboxed(
    mode: str,
    space: Workspace,
    *,
    limits: Limits,
    code_path: Path | None = None,
    argv: list[str] | None = None,
    audit: bool = True,
) -> SandboxResult:
    """Run python code (`mode="python"`, `code_path`) or a program (`mode="exec"`, `argv`) in
    the sandbox of `space`.

    Blocks until the run ends or is killed; never leaves a process of the run behind. Raises
    OSError only if bwrap itself cannot be started.
    """
    uid = space.uid
    root = os.geteuid() == 0
    if code_path is not None and root:
        os.chown(code_path, uid, uid)
    spec = {
        "mode": mode,
        "code": CODE_INSIDE if code_path is not None else None,
        "argv": argv,
        "audit": audit,
        "exec_filter": exec_filter().hex(),
        "limits": {
            "cpu_s": limits.cpu_s,
            "memory_bytes": limits.memory_bytes,
            "nproc": count_processes(uid if root else os.getuid()) + limits.max_procs,
            "file_bytes": limits.file_bytes,
            "open_files": limits.open_files,
        },
    }
    cmd = [params.SANDBOX_PYTHON, "-I", "-S", "-X", "utf8", "-c", BOOTSTRAP, json.dumps(spec)]
    start = time.monotonic()
    proc = launch(cmd, space.work, code_path, uid)
    assert proc.stdout is not None and proc.stderr is not None
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    timed_out = False
    reason: str | None = None
    over = False
    sel = selectors.DefaultSelector()
    try:
        for fd in bufs:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        deadline = start + limits.wall_s
        exited_at: float | None = None
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out, reason = True, f"wall-clock limit ({limits.wall_s:g} s)"
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > params.PYTHON_STRAGGLER_S:
                break  # the main process is gone; stragglers holding the pipes are killed below
            for key, _ in sel.select(timeout=min(deadline - now, params.PYTHON_POLL_S)):
                over = _read_into(key.fd, bufs[key.fd], limits.output_bytes, sel) or over
            if over:
                reason = f"output limit ({limits.output_bytes} bytes)"
                break
    finally:
        kill_session(proc.pid)
        proc.wait()
        for key in list(sel.get_map().values()):
            over = _read_into(key.fd, bufs[key.fd], limits.output_bytes, sel, drain=True) or over
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    status: int | None = proc.returncode
    if status is not None and status < 0:
        status = 128 - status
    if reason is None and status == 128 + signal.SIGXCPU:
        reason = f"cpu limit ({limits.cpu_s} s)"
    elif reason is None and status == 128 + signal.SIGKILL:
        reason = "killed by SIGKILL (cpu hard limit or out of memory)"
    if reason is not None and (timed_out or over):
        status = None
    stdout_b, stderr_b = list(bufs.values())
    return SandboxResult(
        stdout=stdout_b.decode("utf-8", errors="replace"),
        stderr=stderr_b.decode("utf-8", errors="replace"),
        exit_status=status,
        timed_out=timed_out,
        killed_reason=reason,
        truncated=over,
        session=proc.pid,
    )


def _read_into(
    fd: int, buf: bytearray, cap: int, sel: selectors.BaseSelector, *, drain: bool = False
) -> bool:
    """Read what `fd` has into `buf` (up to `cap` bytes); True when more than `cap` arrived."""
    over = False
    for _ in range(64):  # a drain is bounded too: a straggler might keep writing
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return over
        except OSError:
            chunk = b""
        if not chunk:
            with contextlib.suppress(KeyError):
                sel.unregister(fd)
            return over
        room = cap - len(buf)
        buf += chunk[: max(room, 0)]
        if len(chunk) > room:
            over = True
            if not drain:
                return True
        if not drain:
            return over
    return over
