"""Running `llmos serve`: one kernel, one user store, uvicorn on a TCP port, until SIGTERM.

`serve(system, host, port, ...)` takes the home's kernel lock (`kernel.pid`, the same one the
kernel daemon takes, so one kernel per home), opens the user store and the process journal
(`procs.db`), starts a `Kernel` that journals every process and its output, loads the default
CPU, recovers what a killed server left (`llmos.kernel.recovery`: a process that had sent
nothing runs again under its pid; one that had is reported lost with its output kept), and
runs uvicorn. Binding anything but loopback prints a warning: tokens travel in
clear without TLS in front (a reverse proxy that terminates TLS, see docs/SERVE.md).

SIGTERM or SIGINT drains: readiness turns false and new processes are refused (503) at once,
uvicorn stops accepting connections and gives open requests and streams params.SERVE_DRAIN_S to
finish, then the kernel shuts down (live processes are ended and logged), the stores close and
the lock is released.

What this does not do: decide routes (see `app`), or manage users (`llmos user`, in the CLI).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from llmos import params
from llmos.errors import LlmosError
from llmos.front.kclient import KernelPaths, read_pid
from llmos.front.kerneld import lock_pid_file
from llmos.front.serve.app import create_app
from llmos.front.serve.service import Service
from llmos.kernel import cpus as cpu_mod
from llmos.kernel.boot import System
from llmos.kernel.core import Kernel
from llmos.store.procs import ProcJournal
from llmos.store.users import UserStore


class _Server(uvicorn.Server):
    """uvicorn's server, draining the service the moment a stop signal arrives."""

    service: Service | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.service is not None:
            self.service.start_draining()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT start the drain; unlike uvicorn's own, the signal is not raised
        again afterwards, so `serve` shuts the kernel down and exits 0."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    system: System,
    *,
    host: str = params.SERVE_HOST,
    port: int = params.SERVE_PORT,
    policy: str = params.SERVE_SCHED_POLICY,
    max_resident: int = params.MAX_RESIDENT,
    max_processes: int = params.MAX_PROCESSES,
    metrics_auth: bool = False,
    on_ready: Callable[[Service], None] | None = None,
) -> None:
    """Serve the kernel over HTTP until stopped (see the module's note)."""
    paths = KernelPaths(system.home)
    lock_fd = lock_pid_file(paths.pid)
    service: Service | None = None
    try:
        os.ftruncate(lock_fd, 0)
        os.write(lock_fd, f"{os.getpid()}\n".encode())
        _logging()
        users = UserStore.open(system.home / params.USERS_DB_NAME)
        journal = ProcJournal.open(system.home / params.PROCS_DB_NAME)
        kernel = Kernel(
            system,
            policy=policy,
            max_resident=max_resident,
            max_processes=max_processes,
            journal=journal,
        )
        service = Service(kernel=kernel, users=users, metrics_auth=metrics_auth)
        try:
            kernel.cpu(None)  # load the default model now, not on the first request
        except LlmosError as exc:
            print(f"llmos: serve: warning: default CPU not loaded: {exc}", file=sys.stderr)
        service.lost = kernel.recover()  # what a killed server left: resumed, or lost
        if service.lost:
            resumed = sum(1 for r in service.lost if r["outcome"] == "resumed")
            print(
                f"llmos: serve: recovered {len(service.lost)} processes from the journal "
                f"({resumed} resumed, {len(service.lost) - resumed} lost with their output)",
                file=sys.stderr,
            )
        if not is_loopback(host):
            print(
                f"llmos: serve: warning: listening on {host}, not loopback: put TLS in front "
                "(tokens are sent in every request)",
                file=sys.stderr,
            )
        config = uvicorn.Config(
            create_app(service),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,  # ours is structured (llmos.access)
            timeout_graceful_shutdown=int(params.SERVE_DRAIN_S),
            lifespan="on",
        )
        server = _Server(config)
        server.service = service
        service.ready = True
        print(
            f"llmos: serve: pid {os.getpid()} listening on http://{host}:{port} "
            f"(policy {kernel.policy.name}); web console at http://{host}:{port}/console",
            file=sys.stderr,
            flush=True,
        )
        if on_ready is not None:
            on_ready(service)
        server.run()
    finally:
        if service is not None:
            service.start_draining()
            service.kernel.shutdown(timeout=params.KERNEL_SHUTDOWN_GRACE_S)
            with contextlib.suppress(LlmosError):
                service.users.close()
            if service.kernel.journal is not None:
                with contextlib.suppress(LlmosError):
                    service.kernel.journal.close()
        with contextlib.suppress(Exception):
            cpu_mod.close_all()
        system.close()
        if read_pid(paths.pid) == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                paths.pid.unlink()
        os.close(lock_fd)
        print(f"llmos: serve: pid {os.getpid()} stopped", file=sys.stderr, flush=True)


def _logging() -> None:
    """Access and error lines go to stderr, one per line."""
    for name in ("llmos.access", "llmos.serve"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
