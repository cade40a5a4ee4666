"""The bootstrap: the trusted code that runs first inside the sandbox, as source text.

`sandbox.run_sandboxed` ships `BOOTSTRAP` to the child as `python -I -S -X utf8 -c BOOTSTRAP
SPEC_JSON` (so it is never imported there, and it imports nothing of llmos: only the standard
library of the system Python is in the sandbox's view). The spec gives the mode, the limits,
the code's path inside (`sandboxjail.CODE_INSIDE`), the exec filter (hex) and whether to audit.

In order, it: sets the rlimits on itself (CPU seconds, address space, process count, file
size, open files, no core dumps; inherited by everything below); sets umask 077; in exec mode
(`shell`), execs the program (exit 127 when it cannot). In python mode it installs the second
seccomp filter refusing execve/execveat (`_no_exec`: exits 126 rather than run without it),
installs the audit hook unless the spec says not to (`sys.addaudithook`: sockets, process
creation, ctypes, files outside /work) as a second layer, and runs the code as `<sandbox>`
with `__name__ == "__main__"`.

Invariants: the untrusted code runs only after the rlimits and both filters are in place; a
traceback starts at the code's own frame (the bootstrap's are left out); the exit status is
the code's `SystemExit` status (masked to 8 bits), 1 for an uncaught exception; the streams
are flushed before `os._exit`.

What this module does not do: build the filters (`sandboxjail.seccomp_program`), start or
watch the child (`sandbox`), or run anything here: `BOOTSTRAP` is only text in this process.
"""

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
