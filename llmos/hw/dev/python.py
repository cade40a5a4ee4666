"""The `python` device, and the sandbox launcher it shares with `shell`.

Each call runs in a new OS process tree, in a fresh private working directory (a temp dir,
deleted afterwards) holding only the files the program was granted (`ctx.options["files"]`,
relative paths copied in from `ctx.root`). The launcher:

1. starts `python -I -S -X utf8 -c BOOTSTRAP` in a new session (its own process group), behind
   `unshare --net --pid --fork --kill-child` when that works here (plus `--user
   --map-root-user` when not root), probed once per llmos process;
2. the bootstrap sets the rlimits on itself (CPU seconds, address space, process count, file
   size, open files, no core dumps; inherited by everything below), then forks: the parent is
   a tiny init that reaps and passes on the exit status, the child runs the code. In a pid
   namespace the init is pid 1, so when it exits the kernel kills every process left inside;
3. when llmos runs as root the child drops to uid/gid `PYTHON_SANDBOX_UID` (nobody) with no
   supplementary groups, so RLIMIT_NPROC is enforced (the kernel never enforces it for root)
   and ordinary file permissions apply. The interpreter's stdlib may be unreadable to that uid
   (a pyenv under /root), so common stdlib modules are imported before the drop;
4. python mode installs an audit hook (`sys.addaudithook`) before running the code: it refuses
   socket events, process creation by exec (os.system, os.exec*, subprocess, posix_spawn),
   ctypes, `open`/listing outside the working directory (reads of the stdlib and
   /usr/share/zoneinfo allowed) and writes, renames, links, chmod outside it;
5. the parent reads stdout and stderr up to `PYTHON_OUTPUT_BYTES` each, kills the whole process
   group at the cap or at the wall-clock limit, and always kills it (SIGKILL) at the end.

Exit status follows the shell convention: a child killed by signal N reports 128 + N
(CPU limit: 128 + SIGXCPU = 152, or 137 after the hard limit's SIGKILL).

What protects what (measured in this repository's tests as root in its container):
- network: the network namespace (no interfaces but a down loopback) is the boundary; the audit
  hook's socket refusal is a second layer. Without `unshare` only the audit hook applies.
- fork bombs: RLIMIT_NPROC (current processes of the sandbox uid + `PYTHON_MAX_PROCS`) makes
  fork fail; the pid namespace and the process-group kill (repeated until /proc shows no live
  member of the session) end the tree. RLIMIT_NPROC holds only because of the uid drop: the
  kernel never enforces it for uid 0.
- memory: RLIMIT_AS per process (a big allocation raises MemoryError); CPU: RLIMIT_CPU per
  process and the wall-clock kill for the tree.
- files: the uid drop (nobody cannot write system files or read /root) is the boundary; the
  audit hook additionally refuses world-readable paths such as /etc/passwd and `../`.

What it does NOT cover (be honest): an audit hook is not a security boundary against a
determined attacker (e.g. `_posixsubprocess.fork_exec`, or C extensions, bypass it); there is no
mount namespace, seccomp filter or chroot, so code running as nobody can still read
world-readable files by going around the hook, and can write world-writable places such as
/tmp; RLIMIT_NPROC counts per uid, so concurrent sandbox runs share one budget; without a pid
namespace, a grandchild that calls setsid() escapes the group kill; the temp dir is on the
host's disk (RLIMIT_FSIZE caps each file, not their number). For hostile code use a VM or a
container runtime, not this.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos import params
from llmos.hw.dev.base import CallContext, Device, DeviceResult
from llmos.hw.dev.fs import FsError, open_regular, read_fd, split_path

# Imported by the child before it drops privileges (see the module note, step 3).
PRELOAD = (
    "math",
    "cmath",
    "json",
    "re",
    "random",
    "statistics",
    "fractions",
    "decimal",
    "datetime",
    "time",
    "collections",
    "collections.abc",
    "itertools",
    "functools",
    "operator",
    "string",
    "textwrap",
    "heapq",
    "bisect",
    "array",
    "copy",
    "pprint",
    "enum",
    "dataclasses",
    "typing",
    "csv",
    "io",
    "base64",
    "hashlib",
    "hmac",
    "struct",
    "binascii",
    "zlib",
    "unicodedata",
    "difflib",
    "calendar",
    "pathlib",
    "glob",
    "fnmatch",
    "tempfile",
    "shutil",
    "traceback",
    "linecache",
    "contextlib",
    "numbers",
    "secrets",
    "html",
    "urllib.parse",
    "zoneinfo",
    "uuid",
    "locale",
    "codecs",
    "weakref",
    "abc",
    "types",
    "inspect",
    "encodings.idna",
    "socket",
    "subprocess",
    "select",
    "signal",
)

# The bootstrap: runs as `python -I -S -X utf8 -c BOOTSTRAP SPEC_JSON`; see the module note.
BOOTSTRAP = r"""
import json, os, resource, sys
spec = json.loads(sys.argv[1])
lim = spec["limits"]
for name, value in (("RLIMIT_CPU", lim["cpu_s"]), ("RLIMIT_AS", lim["memory_bytes"]),
                    ("RLIMIT_NPROC", lim["nproc"]), ("RLIMIT_FSIZE", lim["file_bytes"]),
                    ("RLIMIT_NOFILE", lim["open_files"]), ("RLIMIT_CORE", 0)):
    hard = value + 1 if name == "RLIMIT_CPU" else value
    resource.setrlimit(getattr(resource, name), (value, hard))
code = None
if spec["mode"] == "python":
    with open(spec["code"], "rb") as f:
        code = f.read()
pid = os.fork()
if pid:
    while True:  # init: reap everything, pass on the main child's status
        try:
            p, status = os.wait()
        except ChildProcessError:
            os._exit(1)
        if p == pid:
            rc = os.waitstatus_to_exitcode(status)
            os._exit(rc if rc >= 0 else 128 - rc)
work = spec["work"]
os.chdir(work)
import warnings  # os.execvpe needs it; the interpreter may be unreadable after the drop
if spec["mode"] == "python":
    import importlib
    for mod in spec["preload"]:
        try:
            importlib.import_module(mod)
        except Exception:
            pass
uid = spec["uid"]
if uid is not None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
os.umask(0o077)
if spec["mode"] == "exec":
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, os.environ)
    except OSError as exc:
        sys.stderr.write(f"{argv[0]}: {exc.strerror}\n")
        sys.stderr.flush()
        os._exit(127)
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
        _install_hook(os.path.realpath(work), tuple(spec["read_roots"]))
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

_UNSHARE_BASE = ("--net", "--pid", "--fork", "--kill-child")
_UNSHARE_USER = ("--user", "--map-root-user")


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
class RunResult:
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


@functools.cache
def unshare_prefix() -> tuple[str, ...]:
    """The `unshare ...` argv prefix that works here, or () when none does (probed once)."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    candidates: list[tuple[str, ...]] = [_UNSHARE_BASE] if os.geteuid() == 0 else []
    candidates.append(_UNSHARE_USER + _UNSHARE_BASE)
    for flags in candidates:
        try:
            probe = subprocess.run(
                [exe, *flags, "true"],
                capture_output=True,
                timeout=params.PYTHON_PROBE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return (exe, *flags)
    return ()


def sandbox_uid() -> int | None:
    """The uid sandboxed code runs as: PYTHON_SANDBOX_UID when llmos is root, else unchanged."""
    return params.PYTHON_SANDBOX_UID if os.geteuid() == 0 else None


def isolation() -> list[str]:
    """The protections that apply on this machine, in words (for reports and tests)."""
    layers = ["rlimits", "process-group kill"]
    prefix = unshare_prefix()
    if prefix:
        layers += ["network namespace", "pid namespace"]
        if "--user" in prefix:
            layers.append("user namespace")
    if sandbox_uid() is not None:
        layers.append(f"uid {sandbox_uid()}")
    return layers


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


def _read_roots() -> list[str]:
    """Paths sandboxed Python may read besides its working directory (the stdlib, tz data)."""
    roots = {os.path.realpath(p) for p in sys.path if p and "site-packages" not in p}
    roots = {r for r in roots if r.startswith(os.path.realpath(sys.base_prefix))}
    roots.update({"/usr/share/zoneinfo", "/dev/null", "/dev/urandom"})
    return sorted(roots)


def _rmtree(path: Path) -> None:
    def onerror(func: Any, p: str, exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    shutil.rmtree(path, onerror=onerror)


@contextlib.contextmanager
def workspace(ctx: CallContext) -> Any:
    """A fresh run directory: `<tmp>/work` holds copies of the granted files.

    Yields (run_dir, work_dir); deletes both afterwards. Raises FsError for a bad grant.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="llmos-sandbox-"))
    try:
        os.chmod(run_dir, 0o711)
        work = run_dir / "work"
        work.mkdir(mode=0o700)
        uid = sandbox_uid()
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
        if uid is not None:
            for dirpath, dirnames, filenames in os.walk(work):
                for name in [*dirnames, *filenames]:
                    os.lchown(os.path.join(dirpath, name), uid, uid)
            os.chown(work, uid, uid)
        yield run_dir, work
    finally:
        _rmtree(run_dir)


def run_sandboxed(
    mode: str,
    *,
    work: Path,
    limits: Limits,
    code_path: Path | None = None,
    argv: list[str] | None = None,
    audit: bool = True,
) -> RunResult:
    """Run python code (`mode="python"`, `code_path`) or a program (`mode="exec"`, `argv`).

    Blocks until the run ends or is killed; never leaves a process of the run behind in its
    process group. Raises OSError only if the interpreter itself cannot be started.
    """
    uid = sandbox_uid()
    counted = uid if uid is not None else os.getuid()
    spec = {
        "mode": mode,
        "work": str(work),
        "code": str(code_path) if code_path else None,
        "argv": argv,
        "uid": uid,
        "audit": audit,
        "preload": PRELOAD,
        "read_roots": _read_roots(),
        "limits": {
            "cpu_s": limits.cpu_s,
            "memory_bytes": limits.memory_bytes,
            "nproc": _count_processes(counted) + limits.max_procs,
            "file_bytes": limits.file_bytes,
            "open_files": limits.open_files,
        },
    }
    cmd = [*unshare_prefix(), sys.executable, "-I", "-S", "-X", "utf8", "-c", BOOTSTRAP]
    cmd.append(json.dumps(spec))
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(work),
        "TMPDIR": str(work),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=work,
        env=env,
        start_new_session=True,
        close_fds=True,
    )
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
    return RunResult(
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
    """SIGKILL the process group `session` until no process of the session is left.

    Killed processes take a moment to go (and a fork racing the kill may add one), so this
    repeats the kill while /proc still lists a live member, for at most `patience_s`.
    """
    deadline = time.monotonic() + patience_s
    while True:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(session, signal.SIGKILL)
        if not session_processes(session) or time.monotonic() > deadline:
            return
        time.sleep(0.01)


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


class PythonDevice(Device):
    name = "python"
    description = (
        "Run a Python 3 program in a sandbox and get its output. Print what you want to see. "
        "Only the standard library; no network; no files outside its own empty working "
        "directory (plus any files this program was granted); limited CPU time, memory, "
        "processes and output. Returns {stdout, stderr, exit_status, timed_out, killed_reason}."
    )
    schema: dict[str, Any] = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "code": {
                "type": "string",
                "description": "The Python source to run, e.g. 'print(sum(range(10)))'.",
                "minLength": 1,
                "maxLength": params.PYTHON_CODE_MAX_BYTES,
            }
        },
        "required": ["code"],
        "additionalProperties": False,
    }

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        code = args.get("code")
        if not isinstance(code, str) or not code.strip():
            return DeviceResult.failure("python: 'code' must be a non-empty string")
        data = code.encode("utf-8")
        if len(data) > params.PYTHON_CODE_MAX_BYTES:
            return DeviceResult.failure(
                f"python: code too long (limit {params.PYTHON_CODE_MAX_BYTES} bytes)"
            )
        limits = Limits.from_context(ctx)
        try:
            with workspace(ctx) as (run_dir, work):
                code_path = run_dir / "main.py"
                fd = os.open(code_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                result = run_sandboxed("python", work=work, limits=limits, code_path=code_path)
        except FsError as exc:
            return DeviceResult.failure(f"python: {exc}")
        except OSError as exc:
            return DeviceResult.failure(f"python: could not start the sandbox: {exc}")
        return DeviceResult.success(result.output(), truncated=result.truncated)
