"""The sandbox's walls: bubblewrap's namespaces and view, the seccomp filters, launch, probe.

`launch` starts a command inside `bwrap` as the `sandbox` module note describes (step 3): new
user, pid, network, ipc, uts and cgroup namespaces, no capabilities, no nested user namespaces,
`--die-with-parent`, `--new-session`, and a seccomp filter built here as classic BPF
(`seccomp_program`; the syscalls it refuses per machine are in `_DENY`). The view: /usr and the
/bin, /lib* links read-only, the /etc files the loader needs (`_ETC`), a private tmpfs /tmp,
/proc of its own pid namespace, a minimal /dev, the work dir read-write at `WORK_INSIDE` and
python mode's code read-only at `CODE_INSIDE`. `exec_filter` is the second filter the bootstrap
installs in python mode (execve/execveat fail with EPERM).

`unavailable` probes once per llmos process that bubblewrap (`SANDBOX_BWRAP`), the system
Python (`SANDBOX_PYTHON`) and a filter for this machine are there and that a trial run
succeeds; it says why not in one line. `isolation` lists the protections in words.

Invariants: no command is launched without the filter; a foreign architecture (and x86_64's
x32 ABI) is killed by it; the launched command's environment holds only PATH, the locale,
HOME (the work dir) and TMPDIR; the filter's memfd is closed in this process once bwrap has
it.

What this module does not do: set the rlimits or run code (`sandboxboot`), pick uids or kill
what was launched (`sandboxproc`), or read the output (`sandbox`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from llmos import params
from llmos.hw.dev.sandboxproc import SandboxUnavailable, fresh_uid, kill_session

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
            work = prepare_dir(run_dir, uid)
            proc = launch([params.SANDBOX_PYTHON, "-I", "-S", "-c", "pass"], work, None, uid)
            try:
                _, err = proc.communicate(timeout=params.PYTHON_PROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                kill_session(proc.pid)
                proc.communicate()
                return "bubblewrap did not set up the sandbox in time"
    except (OSError, SandboxUnavailable) as exc:
        return f"cannot start bubblewrap: {exc}"
    finally:
        rmtree(run_dir)
    if proc.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines() or ["no message"]
        return f"bubblewrap cannot set up the sandbox here: {lines[-1]}"
    return None


def prepare_dir(run_dir: Path, uid: int) -> Path:
    """`run_dir/work`, owned by the run's uid when llmos is root."""
    os.chmod(run_dir, 0o711)
    work = run_dir / "work"
    work.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(work, uid, uid)
    return work


def launch(cmd: list[str], work: Path, code_path: Path | None, uid: int) -> subprocess.Popen:
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


def rmtree(path: Path) -> None:
    def onerror(func: Any, p: str, exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    shutil.rmtree(path, onerror=onerror)


def exec_filter() -> bytes:
    """The filter python mode's bootstrap installs before the code runs: exec fails (EPERM)."""
    arch = _machine()
    return seccomp_program(arch, _EXEC[arch])
