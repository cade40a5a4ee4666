"""The sandbox the `python` and `shell` devices run their children in (bubblewrap).

Each call runs in a new OS process tree, in a fresh private working directory (a temp dir,
deleted afterwards) holding only copies of the files the program was granted
(`ctx.options["files"]`, relative paths copied in from `ctx.root`). The launcher:

1. probes once per llmos process that bubblewrap (`bwrap`, `SANDBOX_BWRAP`), the system Python
   (`SANDBOX_PYTHON`) and a syscall filter for this machine are there and that a sandbox can
   be set up; if not, the device is refused with one line saying why. It never runs weaker;
2. picks a fresh unprivileged uid for the run (from `SANDBOX_UID_BASE`, not used by a live
   process or another run of this llmos). As root, bwrap itself is started as that uid (no
   groups); as an ordinary user, that uid is the one mapped inside the user namespace;
3. runs `bwrap` with new user, pid, network, ipc, uts and cgroup namespaces, no capabilities,
   no nested user namespaces (`--disable-userns`), `--die-with-parent`, `--new-session`, and a
   seccomp filter (built here as classic BPF: ptrace, mount and the new mount API,
   unshare/setns, bpf, perf_event_open, keyctl, io_uring, module and kexec loading,
   process_vm_*, userfaultfd, open_by_handle_at, ... fail with EPERM; clone3 with ENOSYS).
   The view: /usr and the /bin, /lib* links read-only, a few /etc files the loader needs
   (`_ETC`), a private tmpfs /tmp, /proc of its own pid namespace, a minimal /dev, the work dir
   read-write at `/work` and the code read-only at `/sandbox/main.py`. Nothing else exists
   inside: not $LLMOS_HOME, its kernel socket, the user's home or another run's directory;
4. inside, `python -I -S -X utf8 -c BOOTSTRAP` sets the rlimits on itself (CPU seconds,
   address space, process count, file size, open files, no core dumps; inherited by all
   below). Python mode then adds a second seccomp filter refusing execve/execveat (the code
   cannot start any program), installs the audit hook (`sys.addaudithook`: sockets, process
   creation, ctypes, files outside /work) as a second layer, and runs the code; exec mode
   (`shell`) execs the program;
5. the parent reads stdout and stderr up to `PYTHON_OUTPUT_BYTES` each, kills the whole process
   group at the cap or at the wall-clock limit, and always kills it (SIGKILL) at the end; the
   sandbox's pid 1 dies with it and the kernel kills everything left in its pid namespace.

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
import functools
import json
import os
import platform
import random
import selectors
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos import params
from llmos.hw.dev.base import CallContext
from llmos.hw.dev.fs import FsError, open_regular, read_fd, split_path

# The bootstrap: runs as `python -I -S -X utf8 -c BOOTSTRAP SPEC_JSON` inside bwrap; see the
# module note. It is trusted code: the untrusted code runs only after its filters are in place.
BOOTSTRAP = r"""
import json, os, resource, sys
spec = json.loads(sys.argv[1])
lim = spec["limits"]
for name, value in (("RLIMIT_CPU", lim["cpu_s"]), ("RLIMIT_AS", lim["memory_bytes"]),
                    ("RLIMIT_NPROC", lim["nproc"]), ("RLIMIT_FSIZE", lim["file_bytes"]),
                    ("RLIMIT_NOFILE", lim["open_files"]), ("RLIMIT_CORE", 0)):
    hard = value + 1 if name == "RLIMIT_CPU" else value
    resource.setrlimit(getattr(resource, name), (value, hard))
os.umask(0o077)
if spec["mode"] == "exec":
    import warnings  # os.execvpe needs it
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, os.environ)
    except OSError as exc:
        sys.stderr.write(f"{argv[0]}: {exc.strerror}\n")
        sys.stderr.flush()
        os._exit(127)
with open(spec["code"], "rb") as f:
    code = f.read()

def _no_exec(program):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(program)

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = Prog(len(program) // 8, ctypes.addressof(buf))
    # PR_SET_NO_NEW_PRIVS = 38, PR_SET_SECCOMP = 22 with SECCOMP_MODE_FILTER = 2
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:
        sys.stderr.write("sandbox: cannot install the exec filter; refusing to run\n")
        sys.stderr.flush()
        os._exit(126)

_no_exec(bytes.fromhex(spec["exec_filter"]))
import linecache, traceback

def _install_hook(work, read_roots):
    sep = os.sep
    realpath = os.path.realpath
    fsdecode = os.fsdecode
    wflags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    blocked = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
               "os.forkpty", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
               "ctypes.call_function", "ctypes.addressof", "winreg.")
    write_events = {"os.remove": (0,), "os.rename": (0, 1), "os.replace": (0, 1),
                    "os.mkdir": (0,), "os.rmdir": (0,), "os.symlink": (1,), "os.link": (0, 1),
                    "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
                    "os.chflags": (0,), "os.lchown": (0,), "os.lchmod": (0,),
                    "shutil.rmtree": (0,), "shutil.copyfile": (1,), "os.mkfifo": (0,),
                    "os.mknod": (0,), "os.setxattr": (0,), "os.removexattr": (0,)}

    def inside(p, roots):
        for r in roots:
            if p == r or p.startswith(r + sep):
                return True
        return False

    def check(path, write, event):
        if path is None or isinstance(path, int):
            return
        p = realpath(fsdecode(path))
        if inside(p, (work,)) or (not write and inside(p, read_roots)):
            return
        what = "writing" if write else "reading"
        raise PermissionError(
            f"sandbox: {what} outside the working directory is blocked ({event} {path!r})")

    def hook(event, args):
        if event.startswith("socket."):
            raise PermissionError(f"sandbox: network access is blocked ({event})")
        if event.startswith(blocked):
            raise PermissionError(f"sandbox: {event} is blocked")
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, 0))[:3]
            write = bool((flags or 0) & wflags) or (
                isinstance(mode, str) and any(c in mode for c in "wax+"))
            check(path, write, event)
        elif event in ("os.listdir", "os.scandir"):
            check(args[0] if args else ".", False, event)
        elif event in write_events:
            for i in write_events[event]:
                if i < len(args):
                    check(args[i], True, event)

    sys.addaudithook(hook)

text = code.decode("utf-8", "replace")
linecache.cache["<sandbox>"] = (len(text), None, text.splitlines(True), "<sandbox>")
status = 0
try:
    compiled = compile(code, "<sandbox>", "exec")
    if spec["audit"]:
        roots = {os.path.realpath(p) for p in sys.path if p}
        base = os.path.realpath(sys.base_prefix)
        roots = {r for r in roots if r.startswith(base)}
        roots.update(("/usr/share/zoneinfo", "/dev/null", "/dev/urandom"))
        _install_hook(os.path.realpath(os.getcwd()), tuple(sorted(roots)))
    exec(compiled, {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as exc:
    if exc.code is None:
        status = 0
    elif isinstance(exc.code, int):
        status = exc.code & 0xFF
    else:
        print(exc.code, file=sys.stderr)
        status = 1
except BaseException as exc:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<sandbox>":
        tb = tb.tb_next
    try:
        traceback.print_exception(type(exc), exc, tb)
    except BaseException:
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
    status = 1
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except BaseException:
        pass
os._exit(status)
"""


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


# /etc files the loader and the allowed programs read; nothing else of /etc is in the view.
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives")
_TOP_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
WORK_INSIDE = "/work"  # where the run's working directory appears inside the sandbox
CODE_INSIDE = "/sandbox/main.py"  # where python mode's code appears (read-only)

# Syscall numbers the filter refuses with EPERM, per machine (x86_64: 64-bit ABI).
_DENY = {
    "x86_64": (
        101,
        165,
        166,
        155,
        161,
        272,
        308,
        250,
        248,
        249,
        321,
        298,
        246,
        320,
        175,
        313,
        176,
        310,
        311,
        323,
        304,
        303,
        167,
        168,
        169,
        163,
        179,
        172,
        173,
        425,
        426,
        427,
        428,
        429,
        430,
        431,
        432,
        433,
        442,
        103,
        212,
        153,
        164,
        227,
        159,
        305,
        438,
        134,
    ),
    "aarch64": (
        117,
        40,
        39,
        41,
        51,
        97,
        268,
        219,
        217,
        218,
        280,
        241,
        104,
        294,
        105,
        273,
        106,
        270,
        271,
        282,
        265,
        264,
        224,
        225,
        142,
        89,
        60,
        425,
        426,
        427,
        428,
        429,
        430,
        431,
        432,
        433,
        442,
        116,
        170,
        112,
        171,
        266,
        438,
    ),
}
_CLONE3 = {"x86_64": 435, "aarch64": 435}
_EXEC = {"x86_64": (59, 322), "aarch64": (221, 281)}  # execve, execveat
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_BIT = 0x40000000
_EPERM, _ENOSYS = 1, 38
_RET_ALLOW, _RET_ERRNO, _RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000


class SandboxUnavailable(Exception):
    """The sandbox cannot be set up here; the message says why (one line)."""


def seccomp_program(machine: str, deny: tuple[int, ...], enosys: tuple[int, ...] = ()) -> bytes:
    """A classic BPF seccomp program for `machine`: `deny` fail with EPERM, `enosys` with
    ENOSYS, a foreign architecture (and x86_64's x32 ABI) is killed, the rest is allowed."""
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    ins: list[tuple[int, int, int, int]] = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, _AUDIT_ARCH[machine]),
        (ret, 0, 0, _RET_KILL),
        (ld, 0, 0, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":
        ins += [(jge, 0, 1, _X32_BIT), (ret, 0, 0, _RET_KILL)]
    for nr in enosys:
        ins += [(jeq, 0, 1, nr), (ret, 0, 0, _RET_ERRNO | _ENOSYS)]
    for nr in deny:
        ins += [(jeq, 0, 1, nr), (ret, 0, 0, _RET_ERRNO | _EPERM)]
    ins.append((ret, 0, 0, _RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *i) for i in ins)


def _machine() -> str:
    return platform.machine().lower().replace("arm64", "aarch64").replace("amd64", "x86_64")


_uids_lock = threading.Lock()
_uids_in_use: set[int] = set()


@contextlib.contextmanager
def fresh_uid() -> Iterator[int]:
    """An unprivileged uid no live process and no other run of this llmos is using."""
    with _uids_lock:
        for _ in range(params.SANDBOX_UID_TRIES):
            uid = params.SANDBOX_UID_BASE + random.randrange(params.SANDBOX_UID_COUNT)
            if uid not in _uids_in_use and _count_processes(uid) == 0:
                _uids_in_use.add(uid)
                break
        else:
            raise SandboxUnavailable("no free sandbox uid")
    try:
        yield uid
    finally:
        with _uids_lock:
            _uids_in_use.discard(uid)


def _bwrap_argv(bwrap: str, uid: int, work: Path, code_path: Path | None, fd: int) -> list[str]:
    argv = [bwrap, "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net"]
    argv += ["--unshare-uts", "--unshare-cgroup-try", "--disable-userns", "--die-with-parent"]
    argv += ["--new-session", "--cap-drop", "ALL", "--uid", str(uid), "--gid", str(uid)]
    argv += ["--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for top in _TOP_LINKS:
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for name in _ETC:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    argv += ["--bind", str(work), WORK_INSIDE, "--chdir", WORK_INSIDE]
    if code_path is not None:
        argv += ["--ro-bind", str(code_path), CODE_INSIDE]
    argv += ["--setenv", "HOME", WORK_INSIDE, "--setenv", "TMPDIR", "/tmp", "--seccomp", str(fd)]
    return argv


@functools.cache
def unavailable() -> str | None:
    """Why no sandbox can be set up on this machine, or None when it can (probed once)."""
    bwrap = params.SANDBOX_BWRAP
    if not os.access(bwrap, os.X_OK):
        return "bubblewrap (bwrap) is not installed; install the Debian package bubblewrap"
    if not os.access(params.SANDBOX_PYTHON, os.X_OK):
        return f"no system Python at {params.SANDBOX_PYTHON} to run sandboxed code"
    if _machine() not in _DENY:
        return f"no syscall filter for this machine's architecture ({platform.machine()})"
    run_dir = Path(tempfile.mkdtemp(prefix="llmos-sandbox-probe-"))
    try:
        with fresh_uid() as uid:
            work = _prepare_dir(run_dir, uid)
            proc = _launch([params.SANDBOX_PYTHON, "-I", "-S", "-c", "pass"], work, None, uid)
            try:
                _, err = proc.communicate(timeout=params.PYTHON_PROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_session(proc.pid)
                proc.communicate()
                return "bubblewrap did not set up the sandbox in time"
    except (OSError, SandboxUnavailable) as exc:
        return f"cannot start bubblewrap: {exc}"
    finally:
        _rmtree(run_dir)
    if proc.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines() or ["no message"]
        return f"bubblewrap cannot set up the sandbox here: {lines[-1]}"
    return None


def _prepare_dir(run_dir: Path, uid: int) -> Path:
    """`run_dir/work`, owned by the run's uid when llmos is root."""
    os.chmod(run_dir, 0o711)
    work = run_dir / "work"
    work.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(work, uid, uid)
    return work


def _launch(cmd: list[str], work: Path, code_path: Path | None, uid: int) -> subprocess.Popen:
    """Start `cmd` inside bwrap as described in the module note (step 3)."""
    machine = _machine()
    program = seccomp_program(machine, _DENY[machine], (_CLONE3[machine],))
    fd = os.memfd_create("llmos-seccomp", 0)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
        root = os.geteuid() == 0
        return subprocess.Popen(
            [*_bwrap_argv(params.SANDBOX_BWRAP, uid, work, code_path, fd), "--", *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
            start_new_session=True,
            close_fds=True,
            pass_fds=(fd,),
            user=uid if root else None,
            group=uid if root else None,
            extra_groups=[] if root else None,
        )
    finally:
        os.close(fd)


def isolation() -> list[str]:
    """The protections that apply on this machine, in words (for reports and tests)."""
    if unavailable() is not None:
        return []
    return [
        "rlimits",
        "process-group kill",
        "bubblewrap mount namespace",
        "user namespace",
        "pid namespace",
        "network namespace",
        "seccomp filter",
        "fresh uid per run",
    ]


def _count_processes(uid: int) -> int:
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


def _rmtree(path: Path) -> None:
    def onerror(func: Any, p: str, exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    shutil.rmtree(path, onerror=onerror)


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
            work = _prepare_dir(run_dir, uid)
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
            _rmtree(run_dir)


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
    machine = _machine()
    spec = {
        "mode": mode,
        "code": CODE_INSIDE if code_path is not None else None,
        "argv": argv,
        "audit": audit,
        "exec_filter": seccomp_program(machine, _EXEC[machine]).hex(),
        "limits": {
            "cpu_s": limits.cpu_s,
            "memory_bytes": limits.memory_bytes,
            "nproc": _count_processes(uid if root else os.getuid()) + limits.max_procs,
            "file_bytes": limits.file_bytes,
            "open_files": limits.open_files,
        },
    }
    cmd = [params.SANDBOX_PYTHON, "-I", "-S", "-X", "utf8", "-c", BOOTSTRAP, json.dumps(spec)]
    start = time.monotonic()
    proc = _launch(cmd, space.work, code_path, uid)
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
        _kill_session(proc.pid)
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


def _kill_session(session: int, patience_s: float = 5.0) -> None:
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


def _live(entry: str) -> tuple[int, str] | None:
    """(parent pid, state) of process `entry` in /proc, or None when it is gone."""
    try:
        with open(f"/proc/{entry}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]), fields[0].decode()


def _sandbox_namespace(launcher: int) -> str | None:
    """The pid namespace of the sandbox started by bwrap process `launcher` (its child's)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (_live(entry) or (0, ""))[0] == launcher:
            with contextlib.suppress(OSError):
                return os.readlink(f"/proc/{entry}/ns/pid")
    return None


def namespace_processes(ns: str) -> list[int]:
    """Pids of live processes (not zombies) in pid namespace `ns` (for cleanup and tests)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            same = os.readlink(f"/proc/{entry}/ns/pid") == ns
        except OSError:
            continue
        state = _live(entry)
        if same and state is not None and state[1] != "Z":
            found.append(int(entry))
    return found


def session_processes(session: int) -> list[int]:
    """Pids of live processes (not zombies) in session `session` (for checking cleanup)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if int(fields[3]) == session and fields[0] != b"Z":
            found.append(int(entry))
    return found
