"""The kernel daemon's protocol and its client: what every `llmos` command uses to talk to it.

The daemon (`llmos.front.kerneld`) listens on an owner-only Unix socket, `<home>/kernel.sock`, and
speaks newline-delimited JSON: one request line per connection, one reply line (or, for
`follow`, a stream of lines); see `llmos.front.kerneld` for the operations. This module holds the
pieces both sides share (paths, the op list, the mapping between errors and replies) and the
client side: `KernelClient` (connect, request, follow), `start_daemon` (start `llmos kernel
serve` in the background and wait until it answers) and `stop_daemon`.

Invariants: a reply that reports an error becomes the same LlmosError subclass, with the same
exit code, on the client; a client never needs the model or the kernel's modules loaded; a
client never says who it is (the daemon reads that from the socket); kernel.log and spool files
are 0600 and the spool directory 0700 from creation (tempfile.mkstemp makes 0600 files).

What this module does not do: run a kernel or serve requests (see `llmos.front.kerneld`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos import config, params
from llmos.errors import KernelError, LlmosError

_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
NOT_RUNNING = "kernel is not running (start it with `llmos kernel start`)"


# --- Paths ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelPaths:
    home: Path

    @property
    def socket(self) -> Path:
        return self.home / params.KERNEL_SOCKET_NAME

    @property
    def pid(self) -> Path:
        return self.home / params.KERNEL_PID_NAME

    @property
    def log(self) -> Path:
        return self.home / params.KERNEL_LOG_NAME

    @property
    def spool(self) -> Path:
        return self.home / params.KERNEL_SPOOL_DIR_NAME


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(str(path))) > _SUN_PATH_MAX:
        raise KernelError(
            f"socket path {path} is longer than {_SUN_PATH_MAX} bytes; "
            f"set {params.ENV_HOME} to a shorter directory"
        )


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


# --- Errors over the wire ------------------------------------------------------------------------


def _error_classes() -> dict[str, type[LlmosError]]:
    found: dict[str, type[LlmosError]] = {}
    todo: list[type[LlmosError]] = [LlmosError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.kind, cls)
        todo.extend(cls.__subclasses__())
    return found


def error_reply(exc: LlmosError) -> dict[str, Any]:
    return {"ok": False, "error": str(exc), "kind": exc.kind, "exit_code": exc.exit_code}


def reply_error(reply: dict[str, Any]) -> LlmosError:
    """The LlmosError a failed reply stands for, with the reply's exit code."""
    cls = _error_classes().get(str(reply.get("kind")), LlmosError)
    exc = cls(str(reply.get("error") or "the kernel refused the request"))
    code = reply.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool) and code != exc.exit_code:
        exc.exit_code = code
    return exc


# --- The client ------------------------------------------------------------------------------


class KernelClient:
    """Talks to the daemon of one home. Each request is one connection."""

    def __init__(self, home: Path | None = None) -> None:
        self.paths = KernelPaths(home if home is not None else config.home(create=False))
        self.last_exit: dict[str, Any] | None = None  # the `done` message of the last follow

    def connect(self, timeout: float = params.KERNEL_CONNECT_TIMEOUT_S) -> socket.socket:
        path = self.paths.socket
        check_socket_path(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            sock.close()
            raise KernelError(NOT_RUNNING) from exc
        except TimeoutError as exc:
            sock.close()
            raise KernelError(f"kernel is not answering on {path}") from exc
        except OSError as exc:
            sock.close()
            raise KernelError(f"cannot connect to the kernel at {path}: {exc.strerror}") from exc
        return sock

    def _open(
        self, op: str, fields: dict[str, Any], reply_timeout: float | None
    ) -> tuple[socket.socket, Any]:
        sock = self.connect()
        line = (json.dumps({"op": op, **fields}, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            sock.sendall(line)
            sock.settimeout(reply_timeout)
        except OSError as exc:
            sock.close()
            raise KernelError(f"kernel went away during '{op}': {exc}") from exc
        return sock, sock.makefile("rb")

    @staticmethod
    def _read(reader: Any, op: str) -> dict[str, Any]:
        try:
            line = reader.readline()
        except TimeoutError as exc:
            raise KernelError(f"kernel did not answer '{op}' in time") from exc
        except OSError as exc:
            raise KernelError(f"kernel went away during '{op}': {exc}") from exc
        if not line:
            raise KernelError(f"kernel closed the connection during '{op}'")
        try:
            message = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KernelError(f"kernel sent a malformed reply to '{op}'") from exc
        if not isinstance(message, dict):
            raise KernelError(f"kernel sent a malformed reply to '{op}'")
        return message

    def request(
        self,
        op: str,
        *,
        reply_timeout: float | None = params.KERNEL_REPLY_TIMEOUT_S,
        **fields: Any,
    ) -> dict[str, Any]:
        """Send one request; its reply, or the LlmosError the reply names."""
        if op == "wait":
            t = fields.get("timeout")
            reply_timeout = None if t is None else float(t) + params.KERNEL_REPLY_TIMEOUT_S
        sock, reader = self._open(op, fields, reply_timeout)
        try:
            reply = self._read(reader, op)
        finally:
            reader.close()
            sock.close()
        if not reply.get("ok"):
            raise reply_error(reply)
        return reply

    def spawn(self, program: str, **fields: Any) -> int:
        """Start a process; its pid. A stdin too large for one request line goes through an
        owner-only file in the spool directory, which the daemon reads and deletes."""
        fields.setdefault("cwd", os.getcwd())
        spooled: Path | None = None
        stdin = fields.get("stdin")
        if isinstance(stdin, str) and len(stdin) > params.KERNEL_INLINE_STDIN_CHARS:
            spooled = self._spool(stdin)
            fields["stdin_file"] = str(spooled)
            del fields["stdin"]
        try:
            return int(self.request("spawn", program=program, **fields)["pid"])
        finally:
            if spooled is not None:
                spooled.unlink(missing_ok=True)

    def _spool(self, text: str) -> Path:
        directory = self.paths.spool
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=params.PRIVATE_DIR_MODE)
        if directory.is_symlink() or not directory.is_dir():
            raise KernelError(f"{directory} is not a directory; refusing to spool input there")
        os.chmod(directory, params.PRIVATE_DIR_MODE)  # one left by an older llmos may be wider
        fd, name = tempfile.mkstemp(prefix="stdin-", suffix=".txt", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            Path(name).unlink(missing_ok=True)
            raise KernelError(f"cannot spool the input to {directory}: {exc.strerror}") from exc
        return Path(name)

    def follow(
        self, pid: int, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> Iterator[str]:
        """The process's output, from its start, as it is generated; ends when it exits.
        With `on_event`, its notices and progress go there as they come (see
        `llmos.kernel.api.follow_process`). The final `done` message is left in
        `self.last_exit`."""
        self.last_exit = None
        payload: dict[str, Any] = {"pid": pid}
        if on_event is not None:
            payload["progress"] = True
        sock, reader = self._open("follow", payload, None)
        try:
            while True:
                message = self._read(reader, "follow")
                if message.get("ok") is False:
                    raise reply_error(message)
                if on_event is not None and ("notice" in message or "progress" in message):
                    on_event(message)
                if "text" in message:
                    yield str(message["text"])
                if message.get("done"):
                    self.last_exit = message
                    return
        finally:
            reader.close()
            sock.close()


def probe_status(path: Path) -> dict[str, Any] | None:
    """The status of the daemon answering on `path`, or None if nobody answers."""
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(params.KERNEL_PROBE_TIMEOUT_S)
    try:
        sock.connect(str(path))
        sock.sendall(b'{"op": "status"}\n')
        with sock.makefile("rb") as reader:
            line = reader.readline(params.KERNEL_REQUEST_MAX_BYTES)
        reply = json.loads(line.decode("utf-8")) if line else None
    except (OSError, ValueError):
        return None
    finally:
        sock.close()
    return reply if isinstance(reply, dict) and reply.get("ok") else None


def _serve_command() -> list[str]:
    return [sys.executable, "-c", "from llmos.front.cli import main; main()", "kernel", "serve"]


def _log_tail(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-params.KERNEL_LOG_TAIL_LINES :])


def start_daemon(
    home: Path,
    *,
    policy: str | None = None,
    max_resident: int | None = None,
    max_processes: int | None = None,
    timeout: float = params.KERNEL_START_TIMEOUT_S,
) -> int:
    """Start `llmos kernel serve` in the background for `home`; its pid once it answers."""
    paths = KernelPaths(home)
    check_socket_path(paths.socket)
    running = probe_status(paths.socket)
    if running is not None:
        raise KernelError(f"kernel already running (pid {running.get('pid', '?')})")
    args = _serve_command()
    if policy is not None:
        args += ["--policy", policy]
    if max_resident is not None:
        args += ["--max-resident", str(max_resident)]
    if max_processes is not None:
        args += ["--max-processes", str(max_processes)]
    env = dict(os.environ)
    env[params.ENV_HOME] = str(home)
    try:
        log_fd = os.open(
            paths.log,
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
            params.PRIVATE_FILE_MODE,
        )
    except OSError as exc:
        raise KernelError(f"cannot open {paths.log}: {exc.strerror}") from exc
    try:
        os.fchmod(log_fd, params.PRIVATE_FILE_MODE)  # one left by an older llmos may be wider
    except OSError as exc:
        os.close(log_fd)
        raise KernelError(f"cannot make {paths.log} owner-only: {exc.strerror}") from exc
    offset = os.lseek(log_fd, 0, os.SEEK_END)
    try:
        child = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_fd,
            env=env,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise KernelError(f"cannot start the kernel daemon: {exc.strerror}") from exc
    finally:
        os.close(log_fd)
    deadline = time.monotonic() + timeout
    while True:
        status = probe_status(paths.socket)
        if status is not None and status.get("pid") == child.pid:
            return child.pid
        code = child.poll()
        if code is not None:
            tail = _log_tail(paths.log, offset)
            raise KernelError(
                f"kernel daemon exited with status {code} before it was ready"
                + (f": {tail}" if tail else "")
            )
        if time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                child.kill()
            child.wait()
            tail = _log_tail(paths.log, offset)
            raise KernelError(
                f"kernel daemon did not answer within {timeout:.0f} s"
                + (f": {tail}" if tail else "")
            )
        time.sleep(params.KERNEL_START_POLL_S)


def stop_daemon(home: Path, timeout: float = params.KERNEL_STOP_TIMEOUT_S) -> dict[str, Any]:
    """Ask the daemon to shut down and wait until its process has gone; the shutdown reply."""
    client = KernelClient(home)
    reply = client.request("shutdown")
    pid = int(reply.get("pid") or 0)
    deadline = time.monotonic() + timeout
    from llmos.store.log import pid_alive

    while pid_alive(pid) or client.paths.socket.exists():
        if time.monotonic() > deadline:
            raise KernelError(f"kernel (pid {pid}) did not exit within {timeout:.0f} s")
        time.sleep(params.KERNEL_STOP_POLL_S)
    return reply


__all__ = [
    "NOT_RUNNING",
    "KernelClient",
    "KernelPaths",
    "probe_status",
    "reply_error",
    "start_daemon",
    "stop_daemon",
]
