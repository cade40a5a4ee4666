"""The kernel daemon: one long-lived `Kernel` that every `llmos` command can talk to.

`serve` runs a `Kernel` in this process and answers requests on an owner-only Unix socket,
`<home>/kernel.sock` (mode 0600; a home directory it creates is 0700). The client side
(`KernelClient`, `start_daemon`, `stop_daemon`) and the pieces both sides share are in
`llmos.front.kclient`.

Protocol: newline-delimited UTF-8 JSON. A client sends one request line per connection,
`{"op": OP, ...arguments}`, where OP is an operation of the kernel's API (`llmos.kernel.api`:
spawn, ps, kill, stop, cont, renice, wait, follow, answer, top, memory.*, shm.*, validated by
its pydantic models) or one of the daemon's own (`status`, `shutdown`). It gets one reply line,
`{"ok": true, ...}` or `{"ok": false, "error": "<one line>", "kind": "<LlmosError.kind>",
"exit_code": N}`, except `follow`, which streams `{"text": "..."}` lines (the process's output
from its start, then live; with `"progress": true` also `{"notice": ...}` and `{"progress": ...}`
lines, what `llmos logs -f` shows on stderr) and ends with `{"done": true, "exit_status": ...,
"error": ...}`.
One argument is the transport's, not the API's: for `spawn`, `stdin_file` (a large stdin the
client left in <home>/spool, read and deleted). Who is asking is never an argument: the daemon
takes the peer's uid from the socket (SO_PEERCRED) and its user name from the password database
(`llmos.kernel.security.principals`); a request that names an `owner` is refused.

    status    -> pid, uptime_s, policy, max_resident, max_processes, counts {state: n}, live,
                 exited, lost [..]
    shutdown  -> pid, killed

Invariants:
- At most one daemon per home: a live one holds an exclusive lock on `kernel.pid`; a second
  refuses to start (KernelError "kernel already running (pid N)"). A socket left by a daemon
  that was killed (nobody answers, nobody holds the lock) is removed and replaced.
- A daemon that starts after one was killed fails the runs the dead one left 'running' (error
  kind 'lost') and reports them in `status` as `lost`; nothing is silently forgotten.
- No request can take the daemon down: malformed JSON, oversized lines, unknown ops, bad
  arguments and clients that vanish mid-`wait` or mid-`follow` get an error reply or are dropped
  quietly; the kernel and its processes never notice.
- Only the socket's owner (same uid, or root) is served: mode 0600 and a SO_PEERCRED check.
  Every kernel operation still runs as the peer's own principal (its uid's user name; root is
  an admin), so the API's ownership checks hold even between root and the daemon's user. A
  platform without SO_PEERCRED, or a peer uid with no valid user name, is refused: the daemon
  never serves a caller it cannot name. kernel.pid is 0600 from creation.
- `shutdown`, SIGTERM and SIGINT all end the same way: every process killed (its partial output
  logged), the socket and pid file removed, the CPUs closed.

What this module does not do: schedule or run processes (see `llmos.kernel.core`), format output
for people (see `llmos.front.cli_procs`), authenticate anyone but the socket's owner, or listen on a
network. Not covered: a daemon shared between OS users (the socket stays owner-only until the
network service brings authenticated callers).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos import params
from llmos.errors import InputError, KernelError, LlmosError, RequestError
from llmos.front.kclient import (  # the protocol both sides share
    KernelPaths,
    check_socket_path,
    error_reply,
    probe_status,
    read_pid,
)
from llmos.kernel import api
from llmos.kernel import cpus as cpu_mod
from llmos.kernel.boot import System
from llmos.kernel.core import Kernel
from llmos.kernel.proc import State
from llmos.kernel.security import principals
from llmos.store.log import Log

DAEMON_OPS = ("status", "shutdown")  # the daemon's own ops; the rest are the kernel API's

# --- The daemon ------------------------------------------------------------------------------


@dataclass
class Daemon:
    """What the request handlers share: the kernel and facts about this daemon."""

    kernel: Kernel
    paths: KernelPaths
    max_resident: int
    max_processes: int
    lost: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    stopping: bool = False
    server: socketserver.BaseServer | None = None

    def request_stop(self) -> None:
        """Stop serving (from any thread but the one running serve_forever)."""
        self.stopping = True
        server = self.server
        if server is not None:
            threading.Thread(target=server.shutdown, name="llmos-kernel-stop", daemon=True).start()


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = False

    def __init__(self, path: str, daemon: Daemon) -> None:
        self.kernel_daemon = daemon
        super().__init__(path, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A handler bug: say so in kernel.log and keep serving.
        print("llmos: kernel: error while serving a request:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)


class _ClientGone(Exception):
    pass


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            line = self.rfile.readline(params.KERNEL_REQUEST_MAX_BYTES + 1)
            if not line:
                return
            try:  # after the (bounded) line is read, so the refusal reaches the client
                caller = self._peer()
            except LlmosError as exc:
                self._send(error_reply(exc))
                return
            try:
                request = _parse_request(line)
                self._dispatch(request, caller)
            except LlmosError as exc:
                self._send(error_reply(exc))
            except _ClientGone:
                return
            except Exception as exc:  # a bug must not take the daemon down
                traceback.print_exc(file=sys.stderr)
                self._send(error_reply(LlmosError(f"internal error: {type(exc).__name__}: {exc}")))
        except (_ClientGone, BrokenPipeError, ConnectionResetError, TimeoutError):
            return
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                raise

    # --- plumbing ---
    def _peer(self) -> api.Caller:
        """The caller the peer is: its uid's principal (SO_PEERCRED), if it may be served."""
        if not hasattr(socket, "SO_PEERCRED"):
            raise KernelError("permission denied: this platform cannot name the socket's peer")
        creds = self.request.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.geteuid() and uid != 0:
            raise KernelError("permission denied: not the kernel's owner")
        return api.Caller.of(principals.of_uid(uid), gone=self._peer_gone)

    def _send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ClientGone() from exc

    def _peer_gone(self) -> bool:
        sock: socket.socket = self.request
        try:
            ready, _, _ = select.select([sock], [], [], 0)
            if not ready:
                return False
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return data == b""

    @property
    def daemon(self) -> Daemon:
        return self.server.kernel_daemon

    # --- ops ---
    def _dispatch(self, req: dict[str, Any], caller: api.Caller) -> None:
        op = req.pop("op")
        d = self.daemon
        k = d.kernel
        if op == "status":
            self._send({"ok": True, **status_of(d)})
            return
        if op == "shutdown":
            killed = len(k.table.all(include_exited=False))
            d.stopping = True
            k.shutdown(timeout=params.KERNEL_SHUTDOWN_GRACE_S)
            try:
                self._send({"ok": True, "pid": os.getpid(), "killed": killed})
            finally:
                d.request_stop()
            return
        if "owner" in req:
            raise RequestError(
                "'owner' is not accepted: the kernel takes who you are from the socket"
            )
        if op == "spawn":
            if d.stopping:
                raise KernelError("kernel is shutting down")
            spooled = req.pop("stdin_file", None)
            if spooled is not None:
                if not isinstance(spooled, str):
                    raise RequestError(f"'stdin_file' must be a string, got {spooled!r}")
                req["stdin"] = _read_spooled(k.system.home, spooled)
        reply = api.call(k, caller, op, req)
        if reply is None:  # `wait` whose client went away
            raise _ClientGone()
        if api.OPS[op].streams:
            for event in reply:
                self._send(event)
            return
        if op == "top":
            reply["pid"] = os.getpid()
        self._send({"ok": True, **reply})


def _parse_request(line: bytes) -> dict[str, Any]:
    if len(line) > params.KERNEL_REQUEST_MAX_BYTES:
        raise RequestError(f"request longer than {params.KERNEL_REQUEST_MAX_BYTES} bytes; refused")
    try:
        request = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RequestError(f"request is not UTF-8 (bad byte at offset {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise RequestError(f"request is not valid JSON ({exc.msg} at char {exc.pos})") from exc
    if not isinstance(request, dict):
        raise RequestError("request must be a JSON object with an 'op'")
    op = request.get("op")
    if op not in DAEMON_OPS and op not in api.OPS:
        known = ", ".join([*api.OPS, *DAEMON_OPS])
        raise RequestError(f"unknown op {op!r}: use one of {known}")
    return request


def _read_spooled(home: Path, name: str) -> str:
    """A large stdin the client left in <home>/spool (see KernelClient.spawn); deleted once
    read. Only a regular file directly in the spool directory is accepted."""
    spool = (home / params.KERNEL_SPOOL_DIR_NAME).resolve()
    path = Path(name)
    if path.parent.resolve() != spool or path.is_symlink() or not path.is_file():
        raise RequestError(f"'stdin_file' must be a file in {spool}, got {name!r}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RequestError(f"cannot read 'stdin_file' {name}: {exc.strerror}") from exc
    finally:
        path.unlink(missing_ok=True)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"stdin is not UTF-8 text (bad byte at offset {exc.start})") from exc


def status_of(d: Daemon) -> dict[str, Any]:
    counts: dict[str, int] = {}
    exited = 0
    for p in d.kernel.table.all():
        state = p.state
        if state == State.EXITED:
            exited += 1
        else:
            counts[state.value] = counts.get(state.value, 0) + 1
    return {
        "pid": os.getpid(),
        "started_at": d.started_at,
        "uptime_s": round(time.time() - d.started_at, 1),
        "policy": d.kernel.policy.name,
        "max_resident": d.max_resident,
        "max_processes": d.max_processes,
        "counts": counts,
        "live": sum(counts.values()),
        "exited": exited,
        "lost": list(d.lost),
        "socket": str(d.paths.socket),
        "home": str(d.paths.home),
    }


def lock_pid_file(path: Path) -> int:
    """Open and lock the pid file; KernelError if a live daemon holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, params.PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, params.PRIVATE_FILE_MODE)  # one left by an older llmos may be wider
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            other = read_pid(path)
            raise KernelError(
                f"kernel already running (pid {other if other is not None else '?'})"
            ) from exc
        raise KernelError(f"cannot lock {path}: {exc.strerror}") from exc
    return fd


def _recover_lost(log: Log, old_pid: int | None, old_started: float) -> list[dict[str, Any]]:
    """Fail the runs a killed daemon (`old_pid`) left 'running'; return what was lost.

    Runs another llmos already failed as 'lost' (its boot sweeps stale runs) are reported too.
    """
    if old_pid is None or old_pid == os.getpid():
        return []
    reason = f"the kernel daemon (pid {old_pid}) was killed before the process finished"
    lost: list[dict[str, Any]] = []
    candidates = log.list_runs(status="running", limit=0) + [
        r
        for r in log.list_runs(status="failed", limit=params.KERNEL_LOST_SCAN)
        if r.error_kind == "lost"
    ]
    for r in sorted(candidates, key=lambda r: r.id):
        if r.pid != old_pid or r.started_at < old_started - 1.0:
            continue
        if r.status == "running":
            try:
                log.finish_run(r.id, status="failed", error_kind="lost", error=reason)
            except LlmosError:
                continue  # finished meanwhile by someone else: not lost
        lost.append({"run_id": r.id, "program": r.program, "owner": r.owner})
    return lost


def serve(
    system: System,
    *,
    policy: str = params.SCHED_POLICY,
    max_resident: int = params.MAX_RESIDENT,
    max_processes: int = params.MAX_PROCESSES,
    on_ready: Callable[[Daemon], None] | None = None,
) -> None:
    """Run the kernel daemon in this process until `shutdown` or SIGTERM/SIGINT.

    `system` must come from `boot.boot(open_log=False)`: the daemon opens the log itself, so
    that it can see the runs a killed daemon left behind before anything sweeps them.
    """
    paths = KernelPaths(system.home)
    check_socket_path(paths.socket)
    probe = probe_status(paths.socket)
    if probe is not None:
        raise KernelError(f"kernel already running (pid {probe.get('pid', '?')})")
    lock_fd = lock_pid_file(paths.pid)
    server: _Server | None = None
    daemon: Daemon | None = None
    log: Log | None = None
    old_handlers: dict[int, Any] = {}
    try:
        old_pid = read_pid(paths.pid)
        old_started = paths.pid.stat().st_mtime
        os.ftruncate(lock_fd, 0)
        os.write(lock_fd, f"{os.getpid()}\n".encode())
        log = Log.open(system.home / params.LOG_DB_NAME)
        lost = _recover_lost(log, old_pid, old_started)
        log.fail_stale_runs("llmos exited before the run finished")
        system._log = log  # the System's log, already swept (see the docstring)
        kernel = Kernel(
            system, policy=policy, max_resident=max_resident, max_processes=max_processes
        )
        daemon = Daemon(
            kernel=kernel,
            paths=paths,
            max_resident=max_resident,
            max_processes=max_processes,
            lost=lost,
        )
        try:
            kernel.cpu(None)  # load the default model now, not on the first spawn
        except LlmosError as exc:
            print(f"llmos: kernel: warning: default CPU not loaded: {exc}", file=sys.stderr)
        with contextlib.suppress(FileNotFoundError):
            paths.socket.unlink()  # stale: its daemon is dead (we hold the lock)
        old_umask = os.umask(0o177)
        try:
            server = _Server(str(paths.socket), daemon)
        finally:
            os.umask(old_umask)
        os.chmod(paths.socket, 0o600)
        daemon.server = server
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                old_handlers[signum] = signal.signal(
                    signum, lambda _s, _f: daemon.request_stop() if daemon else None
                )
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        print(
            f"llmos: kernel: pid {os.getpid()} serving {paths.socket} "
            f"(policy {kernel.policy.name}, {len(lost)} lost)",
            file=sys.stderr,
            flush=True,
        )
        if on_ready is not None:
            on_ready(daemon)
        if not daemon.stopping:
            server.serve_forever(poll_interval=params.KERNEL_SERVE_POLL_S)
    finally:
        if daemon is not None:
            daemon.stopping = True
            daemon.kernel.shutdown(timeout=params.KERNEL_SHUTDOWN_GRACE_S)
        if server is not None:
            server.server_close()
            with contextlib.suppress(FileNotFoundError):
                paths.socket.unlink()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        with contextlib.suppress(FileNotFoundError):
            paths.pid.unlink()
        os.close(lock_fd)
        with contextlib.suppress(Exception):
            cpu_mod.close_all()
        if log is not None:
            with contextlib.suppress(LlmosError):
                log.close()
        print(f"llmos: kernel: pid {os.getpid()} stopped", file=sys.stderr, flush=True)


# --- The client ------------------------------------------------------------------------------


__all__ = ["Daemon", "serve", "status_of"]
